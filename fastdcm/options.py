"""THE list of fastdcm's options.

Every option a user can set is a field of one of the frozen, keyword-only dataclasses
below. ``fastdcm.render`` takes :class:`RenderOptions` fields as keyword arguments, and the
command line (``fastdcm convert``) builds its flags from the same fields, so names, defaults
and help texts cannot drift apart. Enums are ``str`` Enums and accept plain strings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class VoiPolicy(str, Enum):
    """Which VOI step to use (RENDERING.md section 2.2)."""

    AUTO = "auto"  # explicit window > VOI LUT sequence > window in file > min-max
    VOI_LUT = "voi_lut"  # the VOI LUT Sequence item at voi_index (error if absent)
    WINDOW = "window"  # the Window Center/Width at voi_index (error if absent)
    MINMAX = "minmax"  # the frame's modality-value range
    NONE = "none"  # no VOI: the full range the modality LUT can produce maps to the output


class VoiFunction(str, Enum):
    """VOI LUT Function (PS3.3 C.11.2.1.3)."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


def _meta(help_text: str, **extra: Any) -> dict[str, Any]:
    return {"help": help_text, **extra}


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How one image is rendered. Shared by ``render``, ``iter_frames``, ``inspect`` and ``convert``."""

    window: tuple[float, float] | None = field(
        default=None,
        metadata=_meta(
            "explicit VOI window as (center, width); wins over everything in the file",
            metavar="CENTER,WIDTH",
        ),
    )
    voi_function: VoiFunction | None = field(
        default=None,
        metadata=_meta("VOI LUT function for the window; default: the file's, else LINEAR"),
    )
    voi_index: int = field(
        default=0,
        metadata=_meta("which Window Center/Width pair or VOI LUT Sequence item to use (0-based)"),
    )
    voi: VoiPolicy = field(
        default=VoiPolicy.AUTO,
        metadata=_meta("VOI policy: auto, voi_lut, window, minmax or none"),
    )
    invert: bool = field(
        default=False, metadata=_meta("invert the output once more (after MONOCHROME1 handling)")
    )
    depth: int = field(default=8, metadata=_meta("output bits per sample: 8 or 16"))

    def __post_init__(self) -> None:
        # Coerce plain strings / lists at the boundary; reject nonsense early.
        object.__setattr__(self, "voi", VoiPolicy(self.voi))
        if self.voi_function is not None:
            object.__setattr__(self, "voi_function", VoiFunction(str(self.voi_function).upper()))
        if self.window is not None:
            window = self.window
            if isinstance(window, str):
                window = tuple(float(v) for v in window.split(","))
            window = tuple(float(v) for v in window)
            if len(window) != 2 or not all(math.isfinite(v) for v in window):
                raise ValueError(f"window must be two finite numbers (center, width), not {self.window!r}")
            object.__setattr__(self, "window", window)
        if self.depth not in (8, 16):
            raise ValueError(f"depth must be 8 or 16, not {self.depth!r}")
        if int(self.voi_index) != self.voi_index or self.voi_index < 0:
            raise ValueError(f"voi_index must be a non-negative integer, not {self.voi_index!r}")
        object.__setattr__(self, "voi_index", int(self.voi_index))

    @property
    def y_max(self) -> int:
        return (1 << self.depth) - 1


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass, in declaration order (used by the CLI)."""
    return list(dataclasses.fields(cls))


def split_options(cls: type, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build ``cls`` from the keyword arguments it knows; return it and the rest."""
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return cls(**mine), rest
