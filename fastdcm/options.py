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

from .decoders import parse_choice
from .errors import InvalidOptionError
from .resample import MAX_REDUCE
from .resize import Fit, parse_geometry


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


#: Named windows for ``windows`` (center, width in the modality's units: Hounsfield units for CT):
#: the RSNA intracranial haemorrhage solutions' brain, subdural and bone windows and the usual
#: chest and abdomen ones (as Radiopaedia lists them).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
}

#: The most windows one image may stack.
MAX_WINDOWS = 64


def _meta(help_text: str, **extra: Any) -> dict[str, Any]:
    return {"help": help_text, **extra}


@dataclass(frozen=True, kw_only=True)
class RenderOptions:
    """How one image is rendered. Shared by ``render``, ``iter_frames``, ``inspect`` and ``convert``."""

    window: tuple[float, float] | None = field(
        default=None,
        metadata=_meta(
            "explicit VOI window as (center, width): 40,400 or 40/400; wins over everything in the file",
            metavar="CENTER,WIDTH",
        ),
    )
    windows: tuple[tuple[float, float], ...] | str | None = field(
        default=None,
        metadata=_meta(
            "a window stack: one channel per window, each CENTER/WIDTH or a preset ("
            + ", ".join(f"{k} {c:g}/{w:g}" for k, (c, w) in WINDOW_PRESETS.items())
            + "), comma-separated, e.g. brain,subdural,bone; 3 windows make an RGB image",
            metavar="LIST",
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
    reduce: int = field(
        default=0,
        metadata=_meta(
            "output 2^K times smaller on each side (0-8): JPEG 2000 / HTJ2K decoded at a reduced "
            "resolution level (several times faster than a full decode), other data averaged in "
            "2^K x 2^K blocks of stored values",
            metavar="K",
        ),
    )
    size: int | tuple[int, int] | str | None = field(
        default=None,
        metadata=_meta(
            "resize: N (the longest side becomes N, aspect kept) or WIDTHxHEIGHT (filled as --fit says); "
            "area-averaged when shrinking, bilinear when enlarging",
            metavar="N|WxH",
        ),
    )
    fit: Fit = field(
        default=Fit.PAD,
        metadata=_meta(
            "how --size WIDTHxHEIGHT is filled: pad (aspect kept, centred on black), crop (aspect kept, "
            "the centre cut out) or stretch (each axis scaled on its own); only with a WIDTHxHEIGHT size"
        ),
    )
    max_size: int | None = field(
        default=None,
        metadata=_meta("shrink images whose longest side is above N to N (aspect kept; never enlarges)", metavar="N"),
    )
    overlays: bool = field(
        default=False,
        metadata=_meta(
            "burn in the overlay planes (60xx Overlay Data: annotations, markers, ROIs) in white, "
            "over the rendered image, as a viewer shows them; not drawn by default"
        ),
    )
    decoder: str | tuple | None = field(
        default=None,
        metadata=_meta(
            "decoder to use instead of the fastest installed one, per family "
            "(jpeg, jpegls, jpeg2000, htj2k, rle) or transfer syntax UID, e.g. "
            "jpeg2000=pylibjpeg,rle=pydicom (fastdcm info --plugins lists them)",
            metavar="FAMILY=BACKEND[,...]",
        ),
    )

    def __post_init__(self) -> None:
        # Coerce plain strings / lists at the boundary; reject nonsense early.
        try:
            object.__setattr__(self, "voi", VoiPolicy(self.voi))
            if self.voi_function is not None:
                object.__setattr__(self, "voi_function", VoiFunction(str(getattr(self.voi_function, "value", self.voi_function)).upper()))
        except ValueError as exc:
            raise InvalidOptionError(str(exc)) from None
        if self.window is not None:
            object.__setattr__(self, "window", _window(self.window, self.voi_function))
        if self.windows is not None:
            object.__setattr__(self, "windows", _windows(self.windows))
            if self.window is not None:
                raise InvalidOptionError("give window or windows (a stack), not both")
            if self.voi is not VoiPolicy.AUTO:
                raise InvalidOptionError(f"windows sets the VOI of every channel: voi must stay auto, not {self.voi.value}")
            for center, width in self.windows:
                problem = window_problem(center, width, self.voi_function)
                if problem:
                    raise InvalidOptionError(f"windows: {center:g}/{width:g}: {problem}")
        if self.overlays not in (True, False):  # (numpy's bool too)
            raise InvalidOptionError(f"overlays is True or False, not {self.overlays!r}")
        object.__setattr__(self, "overlays", bool(self.overlays))
        if self.depth not in (8, 16):
            raise InvalidOptionError(f"depth must be 8 or 16, not {self.depth!r}")
        if isinstance(self.voi_index, bool) or not isinstance(self.voi_index, (int, float)) \
                or int(self.voi_index) != self.voi_index or self.voi_index < 0:
            raise InvalidOptionError(f"voi_index must be a non-negative integer, not {self.voi_index!r}")
        object.__setattr__(self, "voi_index", int(self.voi_index))
        if isinstance(self.reduce, bool) or not isinstance(self.reduce, (int, float)) \
                or int(self.reduce) != self.reduce or not 0 <= self.reduce <= MAX_REDUCE:
            raise InvalidOptionError(f"reduce must be an integer from 0 to {MAX_REDUCE}, not {self.reduce!r}")
        object.__setattr__(self, "reduce", int(self.reduce))
        try:
            object.__setattr__(self, "fit", Fit(getattr(self.fit, "value", self.fit)))
        except ValueError:
            raise InvalidOptionError(f"fit must be pad, crop or stretch, not {self.fit!r}") from None
        object.__setattr__(self, "size", parse_geometry(self.size, "size"))
        max_size = parse_geometry(self.max_size, "max_size")
        if isinstance(max_size, tuple):
            raise InvalidOptionError(f"max_size is one number of pixels (the longest side), not {self.max_size!r}")
        object.__setattr__(self, "max_size", max_size)
        if self.size is not None and self.max_size is not None:
            raise InvalidOptionError("give size or max_size, not both (max_size is size that never enlarges)")
        try:
            object.__setattr__(self, "decoder", parse_choice(self.decoder))
        except ValueError as exc:
            raise InvalidOptionError(str(exc)) from None

    @property
    def y_max(self) -> int:
        return (1 << self.depth) - 1

    @property
    def resizes(self) -> bool:
        return self.size is not None or self.max_size is not None


def _window(value: Any, function: VoiFunction | None) -> tuple[float, float]:
    """(center, width) from ``"40,400"``, ``"40/400"`` (as ``--windows`` writes each window) or a
    pair of numbers (validity for the VOI function: :func:`explicit_window_problem`)."""
    text = value if isinstance(value, str) else None
    try:
        parts = value.replace("/", ",").split(",") if isinstance(value, str) else list(value)
        window = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        window = ()
    if len(window) != 2 or not all(math.isfinite(v) for v in window):
        shown = text if text is not None else repr(value)
        raise InvalidOptionError(f"window must be two finite numbers CENTER,WIDTH or CENTER/WIDTH (e.g. 40,400), not {shown}")
    return window  # type: ignore[return-value]


def _windows(value: Any) -> tuple[tuple[float, float], ...]:
    """The stack's (center, width) pairs from ``"brain,40/80"`` or a list of names and pairs."""
    items = [v for v in value.split(",")] if isinstance(value, str) else list(value)
    windows = []
    for item in items:
        if isinstance(item, str):
            text = item.strip()
            if text.lower() in WINDOW_PRESETS:
                windows.append(WINDOW_PRESETS[text.lower()])
                continue
            parts = text.split("/")
        else:
            parts = list(item) if isinstance(item, (tuple, list)) else [item]
        try:
            pair = tuple(float(v) for v in parts)
        except (TypeError, ValueError):
            pair = ()
        if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
            raise InvalidOptionError(
                f"windows: {item!r} is neither CENTER/WIDTH (e.g. 40/80) nor a preset ({', '.join(WINDOW_PRESETS)})"
            )
        windows.append(pair)
    if not 1 <= len(windows) <= MAX_WINDOWS:
        raise InvalidOptionError(f"windows: give 1 to {MAX_WINDOWS} windows, not {len(windows)}")
    return tuple(windows)  # type: ignore[return-value]


def window_label(window: tuple[float, float]) -> str:
    """A window's name in output names: its preset's, else ``w<center>_<width>``."""
    for name, preset in WINDOW_PRESETS.items():
        if preset == tuple(window):
            return name
    return f"w{window[0]:g}_{window[1]:g}"


def window_problem(center: float, width: float, function: VoiFunction | None) -> str | None:
    """Why a window cannot be used with its function (RENDERING.md 2.2), or None."""
    function = function or VoiFunction.LINEAR
    if width <= 0:
        return f"window width must be positive, not {width:g}"
    if width < 1 and function is VoiFunction.LINEAR:
        return (
            f"window width {width:g} is below 1, which LINEAR does not allow (PS3.3 C.11.2.1.2): "
            "use --voi-function LINEAR_EXACT or SIGMOID for narrower windows"
        )
    return None


def explicit_window_problem(options: RenderOptions) -> str | None:
    """Why the explicit window cannot be used with its function (RENDERING.md 2.2: width at least
    1 for LINEAR, above 0 for the others), or None. ``render`` skips such a window with a warning,
    as the contract says; a batch refuses it before any work (it would be skipped for every file)."""
    if options.window is None:
        return None
    return window_problem(options.window[0], options.window[1], options.voi_function)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass, in declaration order (used by the CLI)."""
    return list(dataclasses.fields(cls))


def fit_problem(given: dict[str, Any]) -> str | None:
    """Why a ``fit`` the caller gave (``--fit``) would change nothing, or None: it fills a box of
    WIDTHxHEIGHT, and a size of one number (the longest side, aspect kept), ``max_size`` or no size
    leaves it unused, where a user who asked for ``--size 256 --fit pad`` expects 256 x 256 images.
    (``RenderOptions`` itself takes a fit with any size: this is for the options a user wrote.)"""
    fit = given.get("fit")
    if fit is None:
        return None
    try:
        size = parse_geometry(given.get("size"), "size")
    except InvalidOptionError:
        return None  # (RenderOptions says what is wrong with the size)
    if isinstance(size, tuple):
        return None
    fit = getattr(fit, "value", fit)
    if size is None:
        return f"fit (--fit) {fit} fills a box of --size WIDTHxHEIGHT, and no such size is given"
    return (f"fit (--fit) {fit} fills a box of --size WIDTHxHEIGHT; --size {size} keeps the aspect (the longest "
            f"side becomes {size}): for {size} x {size} images give --size {size}x{size} --fit {fit}")


def split_options(cls: type, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Build ``cls`` from the keyword arguments it knows; return it and the rest."""
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {k: v for k, v in kwargs.items() if k in names}
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return cls(**mine), rest


class OnExists(str, Enum):
    """What to do when an output file exists already (from before this run)."""

    SKIP = "skip"  # leave it; the input is recorded as skipped
    OVERWRITE = "overwrite"  # replace it atomically
    ERROR = "error"  # leave it; the input is recorded as write_error


class Frames:
    """Which frames of a multi-frame object to write (``--frames``), by frame number (1-based,
    as in output names): ``all``, ``first``, ``middle`` (frame (n + 1) // 2: the lower of two
    middles), ``last``, ``N``, ``A:B`` (A to B inclusive; either may be left out: ``:5``, ``10:``)
    or ``every:K`` (frames 1, 1 + K, 1 + 2K, ...). Numbers past an object's last frame select
    nothing of it (such an input is recorded as skipped, with the reason)."""

    __slots__ = ("text", "_kind", "_a", "_b")
    ALL: "Frames"
    FIRST: "Frames"

    def __init__(self, value: "Frames | str | int") -> None:
        if isinstance(value, Frames):
            value = value.text
        text = str(getattr(value, "value", value)).strip().lower().replace(" ", "")
        kind, a, b = text, 0, 0
        try:
            if text in ("all", "first", "middle", "last"):
                pass
            elif text.startswith("every:"):
                kind, a = "every", int(text[6:])
                if a < 1:
                    raise ValueError
            elif ":" in text:
                left, _, right = text.partition(":")
                kind, a, b = "range", int(left) if left else 1, int(right) if right else 0
                if a < 1 or (b and b < a) or right.startswith("-"):
                    raise ValueError
            else:
                kind, a = "number", int(text)
                if a < 1:
                    raise ValueError
        except ValueError:
            raise InvalidOptionError(
                f"frames must be all, first, middle, last, N, A:B or every:K (frame numbers from 1), not {value!r}"
            ) from None
        self.text, self._kind, self._a, self._b = text, kind, a, b

    @property
    def value(self) -> str:
        return self.text

    @property
    def all(self) -> bool:
        return self._kind == "all"

    def indexes(self, n: int) -> range:
        """The selected frames of an object of ``n`` frames, 0-based, in order (may be empty)."""
        kind, a, b = self._kind, self._a, self._b
        if kind == "all":
            return range(n)
        if kind == "first":
            return range(min(n, 1))
        if kind == "middle":
            return range((n - 1) // 2, (n - 1) // 2 + 1) if n else range(0)
        if kind == "last":
            return range(n - 1, n) if n else range(0)
        if kind == "number":
            return range(a - 1, a) if a <= n else range(0)
        if kind == "every":
            return range(0, n, a)
        return range(a - 1, min(b, n) if b else n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frames) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Frames({self.text!r})"


Frames.ALL = Frames("all")
Frames.FIRST = Frames("first")


class Container(str, Enum):
    """How the output images are stored (``--container``)."""

    FILES = "files"  # one file per image under OUT
    WEBDATASET = "webdataset"  # tar shards of --shard-size inputs, image + JSON per sample
    PARQUET = "parquet"  # Parquet shards, a row per image with its encoded bytes


class BurnedIn(str, Enum):
    """Images whose Burned In Annotation is YES (text, often identifying, in the pixels)."""

    KEEP = "keep"  # convert them (the metadata table has the BurnedInAnnotation column)
    SKIP = "skip"  # do not convert them: recorded as skipped, with the reason
    LIST = "list"  # convert them and name them in the summary, to be looked at


def _default_workers() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str | None) -> int | None:
    """``"4G"``, ``"512M"``, ``"1.5G"`` or a number of bytes -> bytes; ``0``/``none`` -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value) or None
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    if text in ("", "0", "NONE", "OFF"):
        return None
    unit = text[-1] if text[-1] in _UNITS else ""
    number = text[: len(text) - len(unit)]
    try:
        size = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"memory size must look like 4G, 512M or 1073741824, not {value!r}") from None
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"memory size must be positive, not {value!r}")
    return int(size)


#: The least --memory-limit taken. The limit counts what a worker allocates beyond its address space
#: at start (Python, numpy, Numba, the codecs, and whatever the parent had loaded: ~350 MB, ~530 MB
#: with pyarrow for the table): a 4096 x 3328 16-bit frame's decode, render and encode buffers with
#: --metadata --gallery took less than 128 MiB (measured); the rest is room for the codecs' own.
MIN_MEMORY_LIMIT = 512 << 20


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """How ``convert`` runs over many inputs (rendering itself is :class:`RenderOptions`)."""

    format: str = field(
        default="png",
        metadata=_meta("output format: png (fast), png-small (smallest, slow), jpeg or npy"),
    )
    quality: int = field(default=90, metadata=_meta("JPEG quality, 1-100"))
    name: str | None = field(
        default=None,
        metadata=_meta(
            "output name template with {Keyword}, {stem}, {rel}, {frame} fields, e.g. "
            "'{SeriesInstanceUID}/{InstanceNumber:04}' (identifiers need --pseudonymize or --allow-phi); default: mirror the input paths",
            metavar="TEMPLATE",
        ),
    )
    on_exists: OnExists = field(
        default=OnExists.ERROR,
        metadata=_meta("when an output exists from before this run: skip, overwrite or error"),
    )
    frames: Frames | str = field(
        default=Frames.ALL,
        metadata=_meta(
            "which frames to write, by number from 1: all, first, middle, last, N, A:B (inclusive) or every:K",
            metavar="WHICH",
        ),
    )
    container: Container = field(
        default=Container.FILES,
        metadata=_meta(
            "files (one per image), webdataset (tar shards: each image with a .json of its record, as the "
            "webdataset package reads them) or parquet (a row per image with its encoded bytes; needs pyarrow), "
            "in OUT/shards/"
        ),
    )
    shard_size: int = field(
        default=1000,
        metadata=_meta("inputs per shard with --container webdataset or parquet (a multi-frame input's frames stay together)", metavar="N"),
    )
    workers: int = field(
        default_factory=_default_workers,
        metadata=_meta("worker processes (0: run in this process, no fault isolation); default: CPUs"),
    )
    batch_size: int = field(default=16, metadata=_meta("inputs sent to a worker at a time (with --cluster: 64 unless given)"))
    cluster: Any = field(
        default=None,
        metadata=_meta(
            "run the batches on a Dask cluster: its scheduler's address, e.g. tcp://HOST:8786 (from Python also a "
            "distributed.Client); --workers and --memory-limit are then the Dask workers' own (needs distributed)",
            metavar="ADDRESS",
        ),
    )
    storage_options: Any = field(
        default=None,
        metadata=_meta(
            "options for the object store of s3:// gs:// az:// ... inputs and outputs, passed to fsspec: JSON, or "
            "@FILE holding JSON (e.g. {\"endpoint_url\": \"http://host:9000\"}); credentials are better left to the "
            "store's usual environment variables and files; never logged",
            metavar="JSON",
        ),
    )
    timeout: float = field(
        default=300.0, metadata=_meta("seconds one input may take before its worker is killed (0: none)")
    )
    memory_limit: str | None = field(
        default="auto",
        metadata=_meta(
            "memory a worker may allocate beyond its start-up (address space), e.g. 4G "
            "(auto: RAM / workers, at least 2G; none: no limit)",
            metavar="SIZE",
        ),
    )
    resume: bool = field(
        default=False,
        metadata=_meta("convert only inputs without a successful manifest record for the same size and mtime"),
    )
    manifest: str | None = field(
        default=None, metadata=_meta("manifest path (default: OUT/manifest.jsonl)", metavar="PATH")
    )
    fsync: bool = field(default=False, metadata=_meta("fsync every output file before it is renamed into place"))
    quiet: bool = field(default=False, metadata=_meta("no progress bar or progress lines"))
    metadata: str | None = field(
        default=None,
        metadata=_meta(
            "write a metadata table, one row per output image, to this .parquet or .csv file inside OUT "
            "(needs pyarrow)",
            metavar="FILE",
        ),
    )
    tags: str | None = field(
        default=None,
        metadata=_meta(
            "the DICOM attributes of the metadata table: keywords, tags (0018,0050) or paths "
            "(Sequence/Keyword), comma-separated; +TAG adds to the default set",
            metavar="LIST",
        ),
    )
    burned_in: BurnedIn = field(
        default=BurnedIn.KEEP,
        metadata=_meta("images with Burned In Annotation YES: keep, skip (not converted) or list (converted, named in the summary)"),
    )
    allow_phi: bool = field(
        default=False,
        metadata=_meta("allow identifiers (patient names and IDs, birth dates, ...) in output names and the metadata table"),
    )
    pseudonymize: str | None = field(
        default=None,
        metadata=_meta(
            "replace Patient ID and UIDs in names and the table by keyed hashes (HMAC-SHA256); the key: "
            "env (FASTDCM_PSEUDONYM_KEY), @FILE, or the text itself (16+ characters)",
            metavar="KEY",
        ),
    )
    gallery: bool = field(
        default=False,
        metadata=_meta(
            "also write OUT/gallery/index.html: thumbnails made in the same pass, grouped by study and series, "
            "with each image's window and status and the failed inputs' reasons (fastdcm gallery OUT rebuilds it)"
        ),
    )
    null: bool = field(
        default=False,
        metadata=_meta("paths in @list files and on stdin are separated by NUL bytes (find -print0)", short="-0"),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_exists", OnExists(self.on_exists))
        object.__setattr__(self, "container", Container(self.container))
        if int(self.shard_size) < 1:
            raise ValueError(f"shard_size must be at least 1, not {self.shard_size!r}")
        object.__setattr__(self, "shard_size", int(self.shard_size))
        object.__setattr__(self, "frames", Frames(self.frames))  # InvalidOptionError is a ValueError
        object.__setattr__(self, "burned_in", BurnedIn(self.burned_in))
        object.__setattr__(self, "format", str(self.format).lower())
        if not 1 <= int(self.quality) <= 100:
            raise ValueError(f"quality must be 1-100, not {self.quality!r}")
        if int(self.workers) < 0:
            raise ValueError(f"workers must be 0 or more, not {self.workers!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, not {self.batch_size!r}")
        if float(self.timeout) < 0:
            raise ValueError(f"timeout must be 0 (none) or positive, not {self.timeout!r}")
        if self.memory_limit is not None and str(self.memory_limit).lower() != "auto":
            limit = parse_size(self.memory_limit)
            if limit is not None and limit < MIN_MEMORY_LIMIT:
                raise ValueError(
                    f"memory_limit {self.memory_limit!r} is below the least taken, {MIN_MEMORY_LIMIT >> 20} MiB a "
                    "worker may allocate beyond its start-up; give e.g. 2G, or none for no limit"
                )
        for name in ("quality", "workers", "batch_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "timeout", float(self.timeout))

    def memory_limit_bytes(self) -> int | None:
        """What a worker may add to its address space, in bytes (None: no limit): its RLIMIT_AS is its
        address space at start plus this (executors/process.py)."""
        if self.memory_limit is not None and str(self.memory_limit).lower() == "auto":
            import os

            try:
                ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError, AttributeError):
                return None
            return max(2 << 30, ram // max(1, self.workers))
        return parse_size(self.memory_limit)


def option_flag(name: str) -> str:
    """The command-line flag of an option field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


#: ConvertOptions fields that decide what the outputs are (the rest say how the run goes).
_SHAPING = ("format", "quality", "name", "frames", "container")


def output_fingerprint(convert_options: ConvertOptions, render_options: RenderOptions) -> str:
    """A digest of every option that shapes an input's outputs (format, quality, naming, frames
    and every rendering option): ``--resume`` skips an input only when its converted record has
    the same fingerprint."""
    import hashlib
    import json

    shaping = {name: getattr(convert_options, name) for name in _SHAPING}
    if convert_options.format != "jpeg":
        del shaping["quality"]  # only JPEG has a quality
    if convert_options.container is Container.FILES:
        del shaping["container"]  # (fingerprints of runs from before containers stay valid)
    shaping.update({f.name: getattr(render_options, f.name) for f in dataclasses.fields(render_options)})
    if not render_options.overlays:
        del shaping["overlays"]  # (fingerprints of runs from before the option stay valid)
    text = json.dumps(shaping, sort_keys=True, default=lambda v: getattr(v, "value", str(v)))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
