"""The encoder contract: one small base class, shared input checks, optional imports.

An encoder turns a rendered image array into the bytes of one file. It writes nothing
(atomic writing is the worker's job) and never changes its input.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from fastdcm.errors import EncodeError, InvalidOptionError, MissingDependencyError

_UINT8 = np.dtype(np.uint8)
_UINT16 = np.dtype(np.uint16)


def require(module: str, pip_name: str, encoder: str) -> ModuleType:
    """Return `module`, importing it on first use; name the pip command if it is missing."""
    mod = sys.modules.get(module)
    if mod is not None:
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {encoder!r} encoder needs the {pip_name!r} package: pip install {pip_name}"
        ) from exc


class Encoder:
    """Encode a C-contiguous (H, W) grayscale or (H, W, 3) RGB array into file bytes.

    Subclasses set the class attributes and implement :meth:`_encode`; :meth:`encode`
    checks the input first, so ``_encode`` only ever sees a valid array.
    """

    name: ClassVar[str]
    extension: ClassVar[str]
    #: (module to import, pip requirement) for every package the encoder needs.
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: sample types accepted, as numpy dtypes
    dtypes: ClassVar[tuple[np.dtype, ...]] = (_UINT8, _UINT16)
    #: largest height or width the format can hold
    max_side: ClassVar[int] = 2**31 - 1

    def is_available(self) -> bool:
        """True if every package this encoder needs can be imported."""
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        """None if available, else why not (with the ``pip install`` command)."""
        try:
            self.load()
        except MissingDependencyError as exc:
            return exc.reason
        return None

    def load(self) -> None:
        """Import the packages this encoder needs; MissingDependencyError if one is missing."""
        for module, pip_name in self.requires:
            require(module, pip_name, self.name)

    #: keyword options ``encode`` passes on to ``_encode`` (JPEG: ``subsampling``)
    options: tuple[str, ...] = ()

    def encode(self, array: np.ndarray, *, quality: int = 90, **opts: Any) -> bytes:
        """Return the encoded file's bytes. ``quality`` is used by lossy formats only."""
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            raise InvalidOptionError(
                f"the {self.name!r} encoder takes no option(s) {', '.join(unknown)}"
            )
        self.check(array)
        return self._encode(array, quality, **opts)

    def check(self, array: Any) -> None:
        """Raise EncodeError unless `array` is an image this encoder can write."""
        if not isinstance(array, np.ndarray):
            raise EncodeError(f"{self.name}: expected a numpy array, got {type(array).__name__}")
        if array.dtype not in self.dtypes:
            allowed = " or ".join(str(d) for d in self.dtypes)
            raise EncodeError(f"{self.name}: samples must be {allowed}, got {array.dtype}")
        shape = array.shape
        if not (array.ndim == 2 or (array.ndim == 3 and self.channels_ok(shape[2]))):
            raise EncodeError(
                f"{self.name}: expected shape (rows, columns) or (rows, columns, 3), got {shape}"
            )
        if shape[0] == 0 or shape[1] == 0:
            raise EncodeError(f"{self.name}: the image is empty, shape {shape}")
        if shape[0] > self.max_side or shape[1] > self.max_side:
            raise EncodeError(
                f"{self.name}: {shape[0]} x {shape[1]} exceeds the format's limit of "
                f"{self.max_side} per side"
            )

    def channels_ok(self, channels: int) -> bool:
        """Whether a (rows, columns, channels) image can be written (image formats: RGB only)."""
        return channels == 3

    def _encode(self, array: np.ndarray, quality: int) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
