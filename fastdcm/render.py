"""Frame + plan -> the output image; the public ``render``, ``iter_frames`` and ``inspect``.

``open_image`` parses a header once; ``Image.render_frame`` then decodes a frame, plans it
(cached tables), and runs one fused kernel into a preallocated output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from . import kernels
from .decoders import NATIVE, candidates, decode_frame
from .errors import FastDcmError, InvalidOptionError, InvalidPixelModuleError, from_dependency
from .header import Header, PixelSpec, SourceLike, read_header, source_name
from .options import Frames, RenderOptions, fit_problem
from .overlays import burn, describe_overlays, may_have_overlays, overlay_mask
from .plan import CURRENT_SOURCE, RenderPlan, StackPlan, build_plan, build_stack, channel_options, minmax_by_range, modality_of, stored_range
from .resample import reduced_size
from .resize import apply as resize_apply, apply_line as resize_line, resize_plan

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
#: The options of a call that gives none (frozen: one instance serves every call, ~10 us saved each).
DEFAULT_OPTIONS = RenderOptions()


@dataclass
class Rendered:
    """One rendered frame and how it was made."""

    array: np.ndarray
    frame: int
    voi: str
    decoder: str  # what decoded the frame: a backend's name, "native" or "pydicom"
    window: tuple[float, float] | None = None  # (center, width) of the linear VOI used (min-max too); None: a LUT, colour
    mapping: dict[str, list[float]] | None = None  # resized: output = frame * scale + offset (resize.py); None: not resized


class Image:
    """A parsed DICOM image: its validated spec, header dataset and (for native data) bytes."""

    def __init__(self, header: Header) -> None:
        self._header = header
        self.spec: PixelSpec = header.spec
        self.path: str | None = header.path

    @property
    def dataset(self) -> Dataset:
        """pydicom's dataset of the header (for keywords in output names, ``fastdcm info``)."""
        return self._header.dataset

    @property
    def header_bytes(self) -> bytes | None:
        """The bytes of the file: its first bytes for a file read in parts (``header.READ_IN_PARTS_ABOVE``),
        None for a pydicom Dataset source."""
        return self._header.buffer

    @property
    def file_size(self) -> int | None:
        """The size of the input's bytes (for a file read in parts, more than ``header_bytes``)."""
        data = self._header.data
        return None if data is None else len(data)

    @property
    def n_frames(self) -> int:
        return self.spec.number_of_frames

    @property
    def decoder(self) -> str:
        """The backend tried first with the default options ("native": read directly)."""
        return self.decoder_for(None)

    def decoder_for(self, options: RenderOptions | None) -> str:
        """The backend that will be tried first with ``options`` ("native" for data read
        directly, "pydicom" for deflated / big endian data); typed errors when none is installed."""
        spec = self.spec
        if spec.is_native_view:
            return NATIVE
        if not spec.is_encapsulated:
            return "pydicom"
        options = options or DEFAULT_OPTIONS
        return candidates(spec.transfer_syntax_uid, spec, options.decoder, options.reduce)[0].name

    def render_frame(self, frame: int = 0, options: RenderOptions | None = None) -> Rendered:
        """Frame ``frame`` (0-based) rendered as RENDERING.md says."""
        options = options or DEFAULT_OPTIONS
        if not isinstance(frame, (int, np.integer)) or not 0 <= frame < self.n_frames:
            n = self.n_frames
            raise InvalidOptionError(
                f"frame={frame!r} is out of range: the object has {n} frame(s), "
                + ("frame=0 only" if n == 1 else f"frame=0 to {n - 1}") + " (frame is an index from 0)",
                path=self.path,
            )
        frame = int(frame)
        token = CURRENT_SOURCE.set(self.path or "<input>")
        try:
            stored, decoder = decode_frame(self._header, frame, options.decoder, options.reduce)
            resize = self._resize_plan(options)  # None: the frame keeps its size
            overlay = self._overlay_mask(frame, stored, options.reduce) if options.overlays else None  # (overlays.py)
            one_pass = None
            if options.windows is not None:
                array, plan = _render_stack(stored, self._header.attrs, self.spec, frame, options)
            elif resize is not None and overlay is None and (
                one_pass := self._windowed_and_resized(stored, frame, options, resize)
            ):
                array, plan = one_pass
            else:
                array, plan = _render_stored(stored, self._header.attrs, self.spec, frame, options)
            if overlay is not None:  # burned in at the frame's size, before any resize
                array = burn(array, overlay, options.y_max, options.reduce)
            if resize is not None and one_pass is None:
                array = resize_apply(array, resize, options.y_max)
        except FastDcmError as exc:
            raise exc.with_path(self.path)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError, OverflowError) as exc:
            # pydicom converts elements when they are first read: a damaged one fails here
            typed = from_dependency(exc, InvalidPixelModuleError, "an element cannot be read")
            if typed is None:
                raise
            raise typed.with_path(self.path) from None
        finally:
            CURRENT_SOURCE.reset(token)
        mapping = resize.mapping(self.spec.rows, self.spec.columns) if resize is not None else None
        return Rendered(array=array, frame=frame, voi=plan.voi, decoder=decoder, window=plan.window, mapping=mapping)

    def _overlay_mask(self, frame: int, stored: np.ndarray, reduce: int) -> np.ndarray | None:
        """The overlay planes covering ``frame`` as one mask at the image's size, or None
        (``stored``: the frame as decoded, for planes embedded in it; at full size when ``reduce``)."""
        if not may_have_overlays(self._header.buffer, self.spec.pixel_offset):
            return None
        full = (lambda: stored) if not reduce else (lambda: decode_frame(self._header, frame)[0])
        return overlay_mask(self.dataset, frame, self.spec.rows, self.spec.columns, full, self.spec.bits_stored)

    def _resize_plan(self, options: RenderOptions) -> Any:
        """The resize of ``options`` for this image's frames (after ``reduce``), or None."""
        if not options.resizes:
            return None
        rows, cols = reduced_size(self.spec.rows, options.reduce), reduced_size(self.spec.columns, options.reduce)
        return resize_plan(rows, cols, options.size, options.fit, options.max_size)

    def _windowed_and_resized(self, stored: np.ndarray, frame: int, options: RenderOptions, resize: Any) -> tuple | None:
        """(image, plan) in one pass where the frame is grey and its plan a proven line
        (``resize.apply_line``); None: window, then resize."""
        levels = (reduced_size(self.spec.rows, options.reduce), reduced_size(self.spec.columns, options.reduce))
        if stored.shape != levels or stored.dtype.kind not in "iu" or resize.identity or resize.block is not None:
            # (the kernel does no bounds checks: the taps were made for exactly that size; block
            # means after the VOI kernel are faster than the one pass: resize.py)
            return None
        plan = build_plan(self._header.attrs, self.spec, frame, options)
        if plan is None or plan.kind != "table" or plan.affine is None:
            return None
        raw = _as_unsigned(stored).reshape(stored.shape)
        narrow = raw.dtype.type
        return resize_line(raw, narrow(plan.mask), narrow(plan.flip), plan.affine, resize, options.y_max, plan.out_dtype), plan


def open_image(src: SourceLike) -> Image:
    """Parse ``src`` (path, bytes, binary file object or pydicom Dataset) into an :class:`Image`."""
    return Image(read_header(src))


def _as_unsigned(stored: np.ndarray) -> np.ndarray:
    """The stored integers as a C-contiguous, flat, unsigned array of the same width."""
    flat = np.ascontiguousarray(stored).reshape(-1)
    if flat.dtype.kind == "i":
        flat = flat.view(_UNSIGNED[flat.dtype.itemsize])
    elif flat.dtype.kind == "b":
        flat = flat.view(np.uint8)
    return flat


def _render_stored(
    stored: np.ndarray, ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions
) -> tuple[np.ndarray, RenderPlan]:
    shape = stored.shape
    k = kernels.impl()
    plan = build_plan(ds, spec, frame, options)
    raw = None
    if plan is None:  # min-max: one extra pass to find the frame's values
        raw = None if stored.dtype.kind == "f" else _as_unsigned(stored)
        plan = _plan_with_range(stored, ds, spec, frame, options, raw, k)
    if plan.kind == "copy":
        return np.ascontiguousarray(stored, dtype=plan.out_dtype), plan
    if plan.kind == "arith" and stored.dtype.kind == "f":
        raw = np.ascontiguousarray(stored).reshape(-1)
        out = np.empty(raw.shape[0], dtype=plan.out_dtype)
        k.voi_float(
            raw, plan.slope, plan.intercept, plan.mode, plan.p1, plan.p2, plan.ymax, plan.invert,
            plan.lut.astype(plan.out_dtype, copy=False), plan.lut_first, out,
        )
        return out.reshape(shape), plan
    if raw is None:
        raw = _as_unsigned(stored)
    if plan.kind == "arith":
        out = np.empty(raw.shape[0], dtype=plan.out_dtype)
        k.voi_int(
            raw, plan.mask, plan.flip, plan.slope, plan.intercept, plan.mode, plan.p1, plan.p2,
            plan.ymax, plan.invert, plan.lut.astype(plan.out_dtype, copy=False), plan.lut_first, out,
        )
        return out.reshape(shape), plan
    assert plan.table is not None and plan.table.shape[0] == plan.mask + 1
    if plan.kind == "palette":
        out = np.empty((raw.shape[0], 3), dtype=plan.out_dtype)
        k.lut_gather_channels(raw, plan.mask, plan.flip, plan.table, out)
        return out.reshape(shape + (3,)), plan
    out = np.empty(raw.shape[0], dtype=plan.out_dtype)
    if plan.affine is not None:  # the table is this line at every index (plan.fit_affine)
        narrow = raw.dtype.type
        j0, a, b = plan.affine
        k.lut_affine(raw, narrow(plan.mask), narrow(plan.flip), j0, a, b, np.float32(plan.ymax), out)
    else:
        k.lut_gather(raw, plan.mask, plan.flip, plan.table, out)
    return out.reshape(shape), plan


def _render_stack(
    stored: np.ndarray, ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions
) -> tuple[np.ndarray, StackPlan]:
    """(rows, columns, windows): one channel per window of ``options.windows`` (plan.StackPlan)."""
    stack = build_stack(ds, spec, frame, options)
    shape = stored.shape + (len(stack.plans),)
    if stack.kind == "channels":
        channels = [_render_stored(stored, ds, spec, frame, o)[0] for o in channel_options(options)]
        return np.stack(channels, axis=-1), stack
    k = kernels.impl()
    raw = _as_unsigned(stored)
    out = np.empty((raw.shape[0], shape[-1]), dtype=stack.out_dtype)
    if stack.kind == "affine":
        narrow = raw.dtype.type
        j0, a, b = stack.lines
        k.lut_affine_stack(raw, narrow(stack.mask), narrow(stack.flip), j0, a, b, np.float32(stack.ymax), out)
    else:
        k.lut_gather_channels(raw, stack.mask, stack.flip, stack.table, out)
    return out.reshape(shape), stack


def _plan_with_range(
    stored: np.ndarray, ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions,
    raw: np.ndarray | None = None, k: Any = None,
) -> RenderPlan:
    """The plan of a min-max window, from the frame's values: ``stored``; for integers ``raw`` is
    ``_as_unsigned(stored)`` (the caller's, made once for the kernel after this one, or made here)."""
    k = k or kernels.impl()
    if stored.dtype.kind == "f":
        rng = np.empty(2, np.float64)
        k.float_minmax(np.ascontiguousarray(stored).reshape(-1), rng)
        plan = build_plan(ds, spec, frame, options, value_range=(float(rng[0]), float(rng[1])))
    else:
        raw = _as_unsigned(stored) if raw is None else raw
        mask, flip, _ = stored_range(spec)
        if minmax_by_range(ds, spec, frame, stored.size):
            lo, hi = _stored_extremes(raw, mask, flip, k)
            plan = build_plan(ds, spec, frame, options, value_range=(float(lo), float(hi)))
        elif not modality_of(ds, spec, frame).lut:
            plan = build_plan(ds, spec, frame, options, extremes=_stored_extremes(raw, mask, flip, k))
        else:  # a LUT's values need not keep the stored values' order: which stored values occur
            present = np.zeros(mask + 1, np.bool_)
            k.stored_presence(raw, mask, flip, present)
            plan = build_plan(ds, spec, frame, options, present=present)
    assert plan is not None
    return plan


#: Frames of fewer values have their extremes found by the kernel (numpy's min + max cost more
#: there: 16,384 values 3.0 against 1.9 us; 65,536 values 4.8 against 6.9 us).
_NUMPY_EXTREMES_FROM = 32768


def _stored_extremes(raw: np.ndarray, mask: int, flip: int, k: Any) -> tuple[int, int]:
    """The least and greatest sign-extended stored value of ``raw`` (1-D, unsigned), as the
    ``int_minmax`` kernel finds them. numpy's reductions (SIMD: a 1024 x 256 16-bit frame, 19
    against 58 us) answer when masking changes nothing: unsigned values none above ``mask``, or
    signed values that fill their dtype, on frames of at least :data:`_NUMPY_EXTREMES_FROM` values
    (below, the kernel's one call is cheaper than numpy's two: 450 values 0.3 against 2.2 us)."""
    large = raw.shape[0] >= _NUMPY_EXTREMES_FROM
    if large and flip == 0:
        hi = int(raw.max())
        if hi <= mask:
            return int(raw.min()), hi
    elif large and mask == np.iinfo(raw.dtype).max:
        signed = raw.view(raw.dtype.str.replace("u", "i"))
        return int(signed.min()), int(signed.max())
    rng = np.empty(2, np.int64)
    k.int_minmax(raw, mask, flip, rng)
    return int(rng[0]), int(rng[1])


# ---------------------------------------------------------------------------------------
# Public API


#: RenderOptions made from keyword options, by the keywords' (name, type, value): a loader that calls
#: ``render(path, window=(40, 400))`` per item builds and checks them once (4-11 us a call otherwise).
#: Only hashable values are kept (a dict or a list is checked every call); cleared when full.
_KWARGS_OPTIONS: dict[tuple, RenderOptions] = {}
_KWARGS_OPTIONS_MAX = 256


def _options(kwargs: dict[str, Any]) -> RenderOptions:
    options = kwargs.pop("options", None)
    if options is not None and kwargs:
        raise TypeError("give either options=RenderOptions(...) or keyword options, not both")
    if not kwargs:
        return options or DEFAULT_OPTIONS
    key: tuple | None = tuple((name, type(value), value) for name, value in kwargs.items())
    try:
        cached = _KWARGS_OPTIONS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable value
        cached = key = None
    if cached is not None:
        return cached
    try:
        made = RenderOptions(**kwargs)
    except TypeError as exc:
        raise TypeError(f"unknown render option: {exc}") from None
    problem = fit_problem(kwargs)
    if problem:
        raise InvalidOptionError(problem)
    if key is not None:
        if len(_KWARGS_OPTIONS) >= _KWARGS_OPTIONS_MAX:
            _KWARGS_OPTIONS.clear()
        _KWARGS_OPTIONS[key] = made
    return made


def render(src: SourceLike, *, frame: int = 0, **options: Any) -> np.ndarray:
    """Render one frame of ``src`` to a C-contiguous uint8 (or uint16 with depth=16) array.

    ``src`` is a path, bytes, a binary file object or a pydicom Dataset. Keyword options are
    the fields of :class:`fastdcm.options.RenderOptions` (window, voi_function, voi_index,
    voi, invert, depth, reduce, size, fit, max_size, decoder). Shape (Rows, Columns) for grayscale,
    (Rows, Columns, 3) for colour; with ``reduce=k``, ceil(Rows / 2^k) x ceil(Columns / 2^k); with
    ``size=512`` the longest side 512, with ``size=(width, height)`` that size (``fastdcm.resize``).
    """
    opts = _options(options)
    return open_image(src).render_frame(frame, opts).array


def iter_frames(src: SourceLike, *, frames: Any = "all", **options: Any) -> Iterator[np.ndarray]:
    """The frames of ``src`` that ``frames`` selects (all, first, middle, last, N, A:B or every:K,
    numbered from 1 as ``--frames`` takes them; :class:`fastdcm.options.Frames`), rendered, in
    order; the header is parsed once."""
    opts = _options(options)
    selection = Frames(frames)
    image = open_image(src)
    for i in selection.indexes(image.n_frames):
        yield image.render_frame(i, opts).array


@dataclass
class Inspection:
    """What ``fastdcm.inspect`` tells about one object."""

    source: str
    spec: PixelSpec
    decoder: str
    voi: str  # the VOI step used for frame 0
    overlays: list[str] = field(default_factory=list)  # the overlay planes with data (overlays.describe_overlays)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "decoder": self.decoder, "voi": self.voi, "overlays": self.overlays,
                **self.spec.to_dict()}

    def __str__(self) -> str:
        s = self.spec
        lines = [
            f"source:          {self.source}",
            f"transfer syntax: {s.transfer_syntax_uid} ({s.transfer_syntax_name})",
            f"decoder:         {'native (read directly)' if self.decoder == NATIVE else self.decoder}",
            f"image:           {s.columns} wide x {s.rows} high, {s.samples_per_pixel} sample(s) per pixel, "
            f"{s.number_of_frames} frame(s) (numbered from 1), {s.photometric_interpretation}",
            f"bits:            allocated {s.bits_allocated}, stored {s.bits_stored}, high bit {s.high_bit}, "
            f"{'signed' if s.is_signed else 'unsigned'}{', float' if s.is_float else ''}",
            f"VOI (frame 1):   {self.voi}",
        ]
        if self.overlays:
            lines.append(f"overlays:        {len(self.overlays)} plane(s), drawn with --overlays: " + "; ".join(self.overlays))
        return "\n".join(lines)


def inspect(src: SourceLike, **options: Any) -> Inspection:
    """The pixel module, transfer syntax, frames, decoder and the VOI step that will be used.

    Frame 0 is rendered when the VOI step depends on its values (min-max).
    """
    opts = _options(options)
    image = open_image(src)
    plan = build_plan(image._header.attrs, image.spec, 0, opts)
    voi = plan.voi if plan is not None else image.render_frame(0, opts).voi
    try:
        decoder = image.decoder_for(opts)
    except FastDcmError as exc:
        decoder = f"none ({exc.reason})"
    overlays = (describe_overlays(image.dataset, image.spec.bits_stored)
                if may_have_overlays(image.header_bytes, image.spec.pixel_offset) else [])
    return Inspection(source=image.path or source_name(src), spec=image.spec, decoder=decoder, voi=voi, overlays=overlays)
