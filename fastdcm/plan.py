"""PixelSpec + dataset + options -> RenderPlan: everything decided once per frame, before any pixel.

A plan is either a lookup table over all stored values (integer data of up to 16 stored
bits: modality LUT, VOI, rounding and inversion folded together) or the parameters of the
arithmetic path (float and 32-bit data). A table that is a clamped straight line of its
index (rescale with a LINEAR / LINEAR_EXACT window, min-max, colour scaling) also carries
the float32 line, checked against every entry (:func:`fit_affine`), so the renderer can
compute it (``kernels.lut_affine``) instead of gathering, with the same output bit for bit.
The VOI step is chosen as RENDERING.md 2.2 says, and recorded in ``RenderPlan.voi`` for the
manifest. Tables for the common rescale + window case are cached, and so are whole plans of
fast-parsed headers, so a series of slices with one window plans once.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidOptionError, InvalidPixelModuleError, describe
from .fastheader import Attributes
from .header import PixelSpec, is_multi
from .kernels.voi import (
    MODE_LINEAR,
    MODE_LINEAR_EXACT,
    MODE_LUT,
    MODE_NAMES,
    MODE_SCALE,
    MODE_SIGMOID,
    quantize,
    voi_values,
    window_is_valid,
)
from .options import RenderOptions, VoiFunction, VoiPolicy, window_label

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

_FUNCTION_MODES = {
    VoiFunction.LINEAR: MODE_LINEAR,
    VoiFunction.LINEAR_EXACT: MODE_LINEAR_EXACT,
    VoiFunction.SIGMOID: MODE_SIGMOID,
}

#: Largest stored-value table built (2**16 entries); wider integer data takes the arithmetic path.
TABLE_BITS = 16


@dataclass(frozen=True)
class Modality:
    """The modality LUT step of one frame: rescale, or a LUT over the stored values."""

    slope: float = 1.0
    intercept: float = 0.0
    lut: bool = False  # Modality LUT Sequence (applied through pydicom on the table)


@dataclass(frozen=True)
class Voi:
    """The VOI step chosen for one frame."""

    step: str  # "explicit", "voi_lut", "window", "minmax", "none"
    mode: int = MODE_SCALE
    p1: float = 0.0  # center or low
    p2: float = 0.0  # width or high
    index: int = 0  # of the VOI LUT item or window pair used

    def window(self) -> tuple[float, float] | None:
        """(center, width) of the linear mapping used: the window's own, or for min-max and
        none the range's middle and span; None for a VOI LUT."""
        if self.step in ("explicit", "window"):
            return float(self.p1), float(self.p2)
        if self.step in ("minmax", "none"):
            return (float(self.p1) + float(self.p2)) / 2, float(self.p2) - float(self.p1)
        return None

    def describe(self) -> str:
        if self.step in ("explicit", "window"):
            name = MODE_NAMES[self.mode]
            where = "" if self.step == "explicit" else f"[{self.index}]"
            return f"{self.step}{where} {name} c={self.p1:g} w={self.p2:g}"
        if self.step == "voi_lut":
            return f"voi_lut[{self.index}]"
        if self.step in ("minmax", "none"):
            return f"{self.step} {self.p1:g}..{self.p2:g}"
        return self.step


@dataclass
class RenderPlan:
    """How one frame becomes the output image."""

    kind: str  # "table" (gather), "palette" (gather to RGB), "arith", "copy"
    voi: str  # human/manifest description of the VOI step (or "color" / "palette")
    out_dtype: np.dtype
    ymax: float
    mask: int = 0
    flip: int = 0
    table: np.ndarray | None = None
    #: float32 (j0, a, b): table[j] == trunc(clamp((j - j0) * a + b, 0, ymax)) for every index j
    affine: tuple[np.float32, np.float32, np.float32] | None = None
    # arithmetic path
    slope: float = 1.0
    intercept: float = 0.0
    mode: int = MODE_SCALE
    p1: float = 0.0
    p2: float = 0.0
    invert: bool = False
    lut: np.ndarray = field(default_factory=lambda: np.zeros(1, np.uint8))
    lut_first: int = 0
    window: tuple[float, float] | None = None  # (center, width) of the VOI step, as Voi.window gives it


# ---------------------------------------------------------------------------------------
# Per-frame attribute lookup: per-frame functional groups > shared > top level.


def _frame_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and idx < len(seq):
            inner = seq[idx].get(sequence)
            if inner:
                return inner[0]
    return None


def modality_of(ds: Dataset, spec: PixelSpec, frame: int) -> Modality:
    """The modality step of frame ``frame``; for a fast-parsed header (no functional groups: the
    same for every frame and every slice that shares its values) kept on it with its plans."""
    if ds.__class__ is Attributes:
        modality = ds.plans.get(Modality)
        if modality is None:
            modality = ds.plans[Modality] = _modality_of(ds, spec, frame)
        return modality
    return _modality_of(ds, spec, frame)


def _modality_of(ds: Dataset, spec: PixelSpec, frame: int) -> Modality:
    item = _frame_item(ds, frame, "PixelValueTransformationSequence")
    src = item if item is not None and "RescaleSlope" in item else ds
    if item is None and ds.get("ModalityLUTSequence"):
        return Modality(lut=True)
    try:
        slope = _number(src.get("RescaleSlope"), 1.0)
        intercept = _number(src.get("RescaleIntercept"), 0.0)
    except (TypeError, ValueError) as exc:
        raise InvalidPixelModuleError(f"Rescale Slope/Intercept cannot be read: {describe(exc)}") from None
    if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0.0:
        raise InvalidPixelModuleError(f"Rescale Slope {slope} / Intercept {intercept} is not usable")
    return Modality(slope=slope, intercept=intercept)


def _number(value, default: float) -> float:
    """A DS value as float; absent or empty gives the default (0 is a value, not absent)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return float(value)


def _values(value) -> list:
    if value is None or value == "":
        return []
    if is_multi(value):
        return list(value)
    return [value]


def _voi_source(ds: Dataset, frame: int) -> Dataset:
    """Where this frame's window / VOI LUT attributes live."""
    item = _frame_item(ds, frame, "FrameVOILUTSequence")
    return item if item is not None else ds


#: The input being planned, for warnings (set by render.Image.render_frame).
CURRENT_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("fastdcm_source", default="<input>")


def choose_voi(ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions, quiet: bool = False) -> Voi | None:
    """The VOI step of RENDERING.md 2.2; None means min-max (needs the frame's values).
    ``quiet``: a window skipped is not said again (the second plan of a min-max frame)."""
    policy = options.voi
    if policy is VoiPolicy.NONE:
        return Voi(step="none")
    if policy is VoiPolicy.MINMAX:
        return None
    src = _voi_source(ds, frame)
    index = options.voi_index

    if policy is VoiPolicy.AUTO and options.window is not None:
        mode = _FUNCTION_MODES[options.voi_function or VoiFunction.LINEAR]
        center, width = options.window
        if window_is_valid(mode, center, width):
            return Voi(step="explicit", mode=mode, p1=center, p2=width)
        if not quiet:
            log.warning("%s: explicit window c=%g w=%g is not valid for its function: skipped", CURRENT_SOURCE.get(), center, width)

    if policy in (VoiPolicy.AUTO, VoiPolicy.VOI_LUT):
        seq = src.get("VOILUTSequence") or ds.get("VOILUTSequence")
        if seq:
            if index < len(seq):
                return Voi(step="voi_lut", mode=MODE_LUT, index=index)
            if index > 0 or policy is VoiPolicy.VOI_LUT:
                raise InvalidOptionError(f"voi_index {index} but the VOI LUT Sequence has {len(seq)} item(s)")
        elif policy is VoiPolicy.VOI_LUT:
            raise InvalidOptionError("voi=voi_lut but the file has no VOI LUT Sequence")

    if policy in (VoiPolicy.AUTO, VoiPolicy.WINDOW):
        centers = _values(src.get("WindowCenter"))
        widths = _values(src.get("WindowWidth"))
        count = min(len(centers), len(widths))
        if count:
            if index >= count:
                if index > 0 or policy is VoiPolicy.WINDOW:
                    raise InvalidOptionError(f"voi_index {index} but the file has {count} window(s)")
            else:
                name = options.voi_function or _file_function(src, quiet)
                mode = _FUNCTION_MODES[name]
                try:
                    center, width = float(centers[index]), float(widths[index])
                except (TypeError, ValueError):
                    center = width = math.nan
                if window_is_valid(mode, center, width):
                    return Voi(step="window", mode=mode, p1=center, p2=width, index=index)
                if not quiet:
                    log.warning(
                        "%s: window %d (c=%s w=%s, %s) is not valid: skipped",
                        CURRENT_SOURCE.get(), index, centers[index], widths[index], name.value
                    )
                if policy is VoiPolicy.WINDOW:
                    raise InvalidOptionError(f"window {index} (c={centers[index]} w={widths[index]}) is not valid")
        elif policy is VoiPolicy.WINDOW:
            raise InvalidOptionError("voi=window but the file has no Window Center / Window Width")
    return None  # min-max


def _file_function(src: Dataset, quiet: bool = False) -> VoiFunction:
    raw = str(src.get("VOILUTFunction", "") or "").strip().upper()
    try:
        return VoiFunction(raw) if raw else VoiFunction.LINEAR
    except ValueError:
        if not quiet:
            log.warning("%s: unknown VOI LUT Function %r: LINEAR used", CURRENT_SOURCE.get(), raw)
        return VoiFunction.LINEAR


def inverts(ds: Dataset, spec: PixelSpec, options: RenderOptions) -> bool:
    """MONOCHROME1 or Presentation LUT Shape INVERSE invert once; the caller's flag once more."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    base = spec.photometric_interpretation == "MONOCHROME1" or shape == "INVERSE"
    return base != bool(options.invert)


# ---------------------------------------------------------------------------------------
# Plans


def stored_range(spec: PixelSpec) -> tuple[int, int, int]:
    """(mask, flip, first stored value) for the table path: index = (raw & mask) ^ flip."""
    bits = spec.bits_stored
    mask = (1 << bits) - 1
    if spec.is_signed:
        return mask, 1 << (bits - 1), -(1 << (bits - 1))
    return mask, 0, 0


def _out(options: RenderOptions) -> tuple[np.dtype, float]:
    return (np.dtype(np.uint8) if options.depth == 8 else np.dtype(np.uint16)), float(options.y_max)


def _stored_values(spec: PixelSpec) -> np.ndarray:
    mask, _, first = stored_range(spec)
    dtype = np.int32 if spec.is_signed else np.uint32
    return np.arange(first, first + mask + 1, dtype=np.int64).astype(dtype)


def _modality_table(ds: Dataset, spec: PixelSpec, modality: Modality) -> np.ndarray:
    """Modality values (float64) for every stored value, in table order."""
    stored = _stored_values(spec)
    if modality.lut:
        from pydicom.pixels.processing import apply_modality_lut

        try:
            return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
        except Exception as exc:
            raise InvalidPixelModuleError(f"Modality LUT Sequence cannot be applied: {describe(exc)}") from None
    return stored.astype(np.float64) * modality.slope + modality.intercept


def _voi_lut(ds: Dataset, frame: int, voi: Voi, modality_values: np.ndarray, ymax: float) -> np.ndarray:
    """A VOI LUT Sequence item applied through pydicom, scaled from its bit depth to 0..ymax."""
    from pydicom.dataset import Dataset
    from pydicom.pixels.processing import apply_voi

    src = _voi_source(ds, frame)
    holder = src if src.get("VOILUTSequence") else ds
    if not hasattr(holder, "file_meta") and hasattr(ds, "file_meta"):
        view = Dataset()
        view.VOILUTSequence = holder.VOILUTSequence
        view.file_meta = ds.file_meta
        holder = view
    item = holder.VOILUTSequence[voi.index]
    try:
        bits = int(item.LUTDescriptor[2])
        # pydicom indexes the LUT with integers: modality values are rounded half up first.
        arg = np.floor(modality_values + 0.5)
        lo, hi = np.iinfo(np.int64).min // 2, np.iinfo(np.int64).max // 2
        out = apply_voi(np.clip(arg, lo, hi).astype(np.int64), holder, voi.index)
    except Exception as exc:
        raise InvalidPixelModuleError(f"VOI LUT Sequence item {voi.index} cannot be applied: {describe(exc)}") from None
    return np.asarray(out, dtype=np.float64) * (ymax / float((1 << bits) - 1))


def voi_line(mode: int, p1: float, p2: float, slope: float, x0: float, ymax: float) -> tuple[float, float] | None:
    """(A, B) such that the VOI output, before its clamps and rounding, is ``A * j + B`` for
    the modality value ``x = j * slope + x0``; None when the function is not a line (SIGMOID,
    a LINEAR window of width 1, which is a step)."""
    if mode == MODE_LINEAR and p2 > 1.0:
        return slope * ymax / (p2 - 1.0), (x0 - (p1 - 0.5)) * ymax / (p2 - 1.0) + ymax / 2.0
    if mode == MODE_LINEAR_EXACT:
        return slope * ymax / p2, (x0 - p1) * ymax / p2 + ymax / 2.0
    if mode == MODE_SCALE:
        if p2 > p1:
            return slope * ymax / (p2 - p1), (x0 - p1) * ymax / (p2 - p1)
        return 0.0, 0.0
    return None


@functools.lru_cache(maxsize=4)
def _indexes(n: int) -> np.ndarray:
    out = np.arange(n, dtype=np.uint32)
    out.flags.writeable = False
    return out


#: a per-frame table gets its line proven only for frames of at least this many pixels per entry
_FIT_PIXELS_PER_ENTRY = 16

#: nudges of the line's offset tried, in units of one float32 step at the line's largest value
_NUDGES = (0, -1, 1, -2, 2, -3, 3)


def fit_affine(
    table: np.ndarray, line: tuple[float, float] | None, ymax: float, invert: bool
) -> tuple[np.float32, np.float32, np.float32] | None:
    """float32 (j0, a, b) with ``table[j] == trunc(clamp((j - j0) * a + b, 0, ymax))`` for every
    index j, as ``kernels.lut_affine`` computes it, or None.

    ``line`` is the table's VOI output ``A * j + B`` before rounding half up (``voi_line``).
    ``j0`` is the index nearest the middle of the output range, where float32 is finest. The
    float32 line can round differently at exact halves, so a few offsets one float32 step
    apart are tried; every candidate is checked over the whole table with the kernel's numpy
    twin, so a plan only ever carries a line that reproduces its table exactly.
    """
    from .kernels import twins

    if line is None or table.ndim != 1:
        return None
    slope, offset = line
    if invert:  # ymax - floor(y + 0.5) == floor((ymax - y) + 0.5) but at exact halves
        slope, offset = -slope, ymax - offset
    offset += 0.5
    n = table.shape[0]
    if not (math.isfinite(slope) and math.isfinite(offset)):
        return None
    j0 = float(np.clip(np.round((ymax / 2.0 + 0.5 - offset) / slope), 0, n - 1)) if slope else 0.0
    offset += slope * j0
    biggest = max(abs(slope) * max(j0, n - 1 - j0), abs(offset), ymax)
    if biggest > 2.0**24:
        return None
    a, c = np.float32(slope), np.float32(j0)
    step = float(np.spacing(np.float32(max(abs(offset), ymax))))
    index, got = _indexes(n), np.empty_like(table)
    for k in _NUDGES:
        b = np.float32(offset + k * step)
        twins.lut_affine(index, n - 1, 0, c, a, b, ymax, got)
        if np.array_equal(got, table):
            return c, a, b
    return None


@functools.lru_cache(maxsize=512)
def _rescale_window_table(
    bits: int, signed: bool, slope: float, intercept: float, mode: int, p1: float, p2: float,
    ymax: float, invert: bool, out_dtype: str,
) -> tuple[np.ndarray, tuple[np.float32, np.float32, np.float32] | None]:
    first = -(1 << (bits - 1)) if signed else 0
    stored = np.arange(first, first + (1 << bits), dtype=np.float64)
    table = quantize(voi_values(stored * slope + intercept, mode, p1, p2, ymax), ymax, invert).astype(out_dtype)
    table.flags.writeable = False
    line = voi_line(mode, p1, p2, slope, first * slope + intercept, ymax)
    return table, fit_affine(table, line, ymax, invert)


def _table_from_modality(modality_values: np.ndarray, voi: Voi, ymax: float, invert: bool, out_dtype) -> np.ndarray:
    y = voi_values(modality_values, voi.mode, voi.p1, voi.p2, ymax)
    return quantize(y, ymax, invert).astype(out_dtype)


#: A min-max frame with fewer pixels than this many per stored value is rendered the arithmetic
#: way (its min and max in one pass, then the formula per pixel) instead of through a table over
#: every stored value: a 64x64 frame of 16 bits would otherwise build a 65,536-entry table.
MINMAX_TABLE_PIXELS_PER_ENTRY = 4


def minmax_by_range(ds: Dataset, spec: PixelSpec, frame: int, pixels: int) -> bool:
    """Whether min-max on this frame goes by its value range (arithmetic) rather than a table.
    The two give the same bits (the same float64 formulas; tests/test_kernels.py holds them)."""
    if spec.is_float or spec.bits_stored > TABLE_BITS:
        return True
    if pixels >= MINMAX_TABLE_PIXELS_PER_ENTRY << spec.bits_stored:
        return False
    return not modality_of(ds, spec, frame).lut


def build_plan(
    ds: Dataset,
    spec: PixelSpec,
    frame: int,
    options: RenderOptions,
    *,
    present: np.ndarray | None = None,
    value_range: tuple[float, float] | None = None,
    extremes: tuple[int, int] | None = None,
) -> RenderPlan | None:
    """The plan for frame ``frame``; None when min-max needs the frame's values first.

    For the table path, pass ``present`` (a bool per stored value, from the
    ``stored_presence`` kernel) or, without a Modality LUT, ``extremes`` (the frame's least and
    greatest stored value: a rescale keeps their order, so the modality values' min and max are
    theirs); for the arithmetic path, ``value_range`` (the frame's stored min and max).
    """
    # A fast-parsed header (fastheader.Attributes: no sequences, no functional groups) plans the
    # same for every frame and every slice that shares its values: the plan is kept on them.
    # So does a min-max frame's plan by its value range (small frames: the arithmetic path).
    if present is None and isinstance(ds, Attributes):
        key = options if value_range is None and extremes is None else (options, value_range, extremes)
        plan = ds.plans.get(key)
        if plan is None:
            plan = _build_plan(ds, spec, frame, options, present, value_range, extremes)
            if len(ds.plans) >= 64:
                ds.plans.clear()
            ds.plans[key] = _NEEDS_VALUES if plan is None else plan
        return None if plan is _NEEDS_VALUES else plan
    return _build_plan(ds, spec, frame, options, present, value_range, extremes)


#: Kept in Attributes.plans for options whose plan needs each frame's values (min-max).
_NEEDS_VALUES: Any = object()


def _build_plan(
    ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions,
    present: np.ndarray | None, value_range: tuple[float, float] | None,
    extremes: tuple[int, int] | None = None,
) -> RenderPlan | None:
    out_dtype, ymax = _out(options)
    if spec.is_palette:
        return _palette_plan(ds, spec, out_dtype, ymax)
    if not spec.is_grayscale:
        return _color_plan(spec, out_dtype, ymax)

    modality = modality_of(ds, spec, frame)
    # with the frame's values (min-max's second plan) what the first plan skipped is not said again
    voi = choose_voi(ds, spec, frame, options, quiet=present is not None or value_range is not None or extremes is not None)
    invert = inverts(ds, spec, options)
    # value_range: min-max found by the caller on a frame too small for a table (minmax_by_range)
    table_path = not spec.is_float and spec.bits_stored <= TABLE_BITS and value_range is None

    if table_path:
        mask, flip, _ = stored_range(spec)
        if voi is not None and voi.step in ("explicit", "window") and not modality.lut:
            table, affine = _rescale_window_table(
                spec.bits_stored, spec.is_signed, modality.slope, modality.intercept,
                voi.mode, voi.p1, voi.p2, ymax, invert, out_dtype.str,
            )
            return RenderPlan("table", voi.describe(), out_dtype, ymax, mask, flip, table, affine, window=voi.window())
        if voi is None and present is None and (extremes is None or modality.lut):
            return None  # min-max: the caller finds the frame's values first
        mvals = _modality_table(ds, spec, modality)
        if voi is None and present is None:  # a rescale is monotonic: its extremes are the stored extremes'
            first = stored_range(spec)[2]
            a, b = float(mvals[extremes[0] - first]), float(mvals[extremes[1] - first])
            lo, hi = min(a, b), max(a, b)
            voi = Voi(step="minmax", mode=MODE_SCALE, p1=lo, p2=hi)
        elif voi is None:
            if not present.any():  # cannot happen for a non-empty frame
                present = np.ones_like(present)
            lo, hi = float(mvals[present].min()), float(mvals[present].max())
            voi = Voi(step="minmax", mode=MODE_SCALE, p1=lo, p2=hi)
        elif voi.step == "none":
            voi = Voi(step="none", mode=MODE_SCALE, p1=float(mvals.min()), p2=float(mvals.max()))
        affine = None
        if voi.step == "voi_lut":
            y = _voi_lut(ds, frame, voi, mvals, ymax)
            table = quantize(y, ymax, invert).astype(out_dtype)
        else:
            table = _table_from_modality(mvals, voi, ymax, invert, out_dtype)
            # This table is built per frame: proving the line (~3.5 ns per entry) pays only
            # when the frame has many more pixels than the table has entries (~0.2 ns saved each).
            pixels = spec.rows * spec.columns * spec.samples_per_pixel
            if not modality.lut and pixels >= _FIT_PIXELS_PER_ENTRY * table.shape[0]:
                x0 = stored_range(spec)[2] * modality.slope + modality.intercept
                line = voi_line(voi.mode, voi.p1, voi.p2, modality.slope, x0, ymax)
                affine = fit_affine(table, line, ymax, invert)
        return RenderPlan("table", voi.describe(), out_dtype, ymax, mask, flip, table, affine, window=voi.window())

    # Arithmetic path: float data or more than 16 stored bits.
    if modality.lut:
        raise InvalidPixelModuleError(
            f"a Modality LUT Sequence on {spec.bits_stored}-bit or float data is not supported"
        )
    mask, flip, _ = stored_range(spec) if not spec.is_float else (0, 0, 0)
    plan = RenderPlan(
        "arith", "", out_dtype, ymax, mask, flip, None,
        slope=modality.slope, intercept=modality.intercept, invert=invert,
    )
    if voi is None or voi.step == "none":
        if spec.is_float or voi is None:
            if value_range is None:
                return None
            a, b = (v * modality.slope + modality.intercept for v in value_range)
            step = "minmax" if voi is None else "none"
        else:
            lo, hi = -flip, mask - flip
            a, b = lo * modality.slope + modality.intercept, hi * modality.slope + modality.intercept
            step = "none"
        if not (math.isfinite(a) and math.isfinite(b)):
            a = b = 0.0
        voi = Voi(step=step, mode=MODE_SCALE, p1=min(a, b), p2=max(a, b))
    if voi.step == "voi_lut":
        src = _voi_source(ds, frame)
        holder = src if src.get("VOILUTSequence") else ds
        item = holder.VOILUTSequence[voi.index]
        n = int(item.LUTDescriptor[0]) or 65536
        first = int(item.LUTDescriptor[1])
        inputs = np.arange(first, first + n, dtype=np.float64)
        plan.lut = quantize(_voi_lut(ds, frame, voi, inputs, ymax), ymax, False).astype(out_dtype)
        plan.lut_first = first
    plan.mode, plan.p1, plan.p2, plan.voi = voi.mode, voi.p1, voi.p2, voi.describe()
    plan.window = voi.window()
    return plan


def _color_plan(spec: PixelSpec, out_dtype: np.dtype, ymax: float) -> RenderPlan:
    """RGB (after any YBR conversion): scale samples of Bits Stored to 0..ymax."""
    bits = spec.bits_stored
    if bits == 8 and ymax == 255.0:
        return RenderPlan("copy", "color", out_dtype, ymax)
    if bits <= TABLE_BITS:
        mask = (1 << bits) - 1
        values = np.arange(mask + 1, dtype=np.float64) * (ymax / mask)
        table = quantize(values, ymax, False).astype(out_dtype)
        affine = fit_affine(table, (ymax / mask, 0.0), ymax, False)
        return RenderPlan("table", "color", out_dtype, ymax, mask, 0, table, affine)
    mask = (1 << bits) - 1
    return RenderPlan("arith", "color", out_dtype, ymax, mask, 0, None, mode=MODE_SCALE, p1=0.0, p2=float(mask))


_PALETTE_KEYWORDS = tuple(
    f"{c}PaletteColorLookupTable{part}" for part in ("Descriptor", "Data") for c in ("Red", "Green", "Blue")
) + tuple(f"Segmented{c}PaletteColorLookupTableData" for c in ("Red", "Green", "Blue"))
#: Palette plans by the palette's raw values: the images of one device share them, and expanding
#: a palette over every stored value costs ~0.4 ms (a 16-bit palette; 23 us for 8-bit stored values).
_PALETTE_PLANS: dict[tuple, RenderPlan] = {}


def _palette_plan(ds: Dataset, spec: PixelSpec, out_dtype: np.dtype, ymax: float) -> RenderPlan:
    """PALETTE COLOR: the palette over every stored value (pydicom expands segmented LUTs)."""
    raw = []
    for keyword in ("PixelPresentation", *_PALETTE_KEYWORDS):
        value = ds.get(keyword)
        raw.append(value if value is None or isinstance(value, (bytes, int)) else tuple(value))
    key = (spec.bits_stored, spec.is_signed, out_dtype.str, ymax, *raw)
    try:
        plan = _PALETTE_PLANS.get(key)
    except TypeError:  # an unhashable value (a damaged element): no caching
        key, plan = None, None
    if plan is None:
        plan = _expand_palette(ds, spec, out_dtype, ymax)
        if key is not None and sum(len(v) for v in raw if isinstance(v, bytes)) <= 1 << 20:
            if len(_PALETTE_PLANS) >= 16:
                _PALETTE_PLANS.clear()
            _PALETTE_PLANS[key] = plan
    return plan


def _expand_palette(ds: Dataset, spec: PixelSpec, out_dtype: np.dtype, ymax: float) -> RenderPlan:
    mask, flip, _ = stored_range(spec)
    rgb = palette_lut(ds, spec) if _little_endian(ds) else None
    try:
        if rgb is None:  # segmented LUTs and what palette_lut leaves: pydicom (also to say what is wrong)
            from pydicom.pixels.processing import apply_color_lut

            rgb = apply_color_lut(_stored_values(spec), _palette_dataset(ds) if isinstance(ds, Attributes) else ds)
        bits = int(ds.get("RedPaletteColorLookupTableDescriptor")[2])
    except Exception as exc:
        raise InvalidPixelModuleError(f"palette colour lookup table cannot be read: {describe(exc)}") from None
    # LUT entries are 8 or 16 bits (PS3.3 C.7.6.3.1.5); their data uint8 or uint16 to match.
    scale = ymax / float((1 << (8 if bits == 8 else 16)) - 1)
    table = quantize(rgb.astype(np.float64) * scale, ymax, False).astype(out_dtype)
    return RenderPlan("palette", "palette", out_dtype, ymax, mask, flip, np.ascontiguousarray(table))


def palette_lut(ds: Any, spec: PixelSpec) -> np.ndarray | None:
    """The red, green and blue palette LUTs over every stored value (``_stored_values`` order):
    (values, 3), uint8 or uint16 as the LUT data's entries are, for the common palette (three
    LUTs of 8- or 16-bit entries, as data; ``ds``'s values little endian); None for pydicom's
    ``apply_color_lut`` (segmented LUTs, a supplemental palette, anything malformed: it says what).
    The same table as pydicom's, read here because importing pydicom cost each worker ~0.2 s on
    its first palette image, with one difference, PS3.3 C.7.6.3.1.5's rule: a stored value past
    the last entry maps to the last entry (pydicom's index is held in the LUT's own 8 or 16 bits,
    and wraps: 300 through 256 8-bit entries gave entry 44)."""
    if ds.get("PixelPresentation") in ("MIXED", "COLOR"):
        return None
    descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
    data = [ds.get(f"{c}PaletteColorLookupTableData") for c in ("Red", "Green", "Blue")]
    if descriptor is None or len(descriptor) != 3 or not all(isinstance(d, bytes) for d in data):
        return None
    entries, first, bits = (int(v) for v in descriptor)
    entries = entries or 1 << 16  # (0: 65536 entries)
    size = len(data[0])
    if bits not in (8, 16) or any(len(d) != size for d in data) or size not in (entries, 2 * entries):
        return None
    dtype = np.dtype(np.uint8 if size == entries else "<u2")
    index = np.clip(_stored_values(spec).astype(np.int64) - first, 0, entries - 1)
    out = np.empty((len(index), 3), dtype.newbyteorder("="))
    for c, lut in enumerate(data):
        out[:, c] = np.frombuffer(lut, dtype)[index]
    return out


def _palette_dataset(attrs: Attributes) -> Dataset:
    """The palette elements of a fast-parsed header as a pydicom Dataset, for ``apply_color_lut``
    (the fast path reads little-endian files only, which a segmented LUT's reading needs to know)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    for keyword in ("PixelPresentation", *_PALETTE_KEYWORDS):
        if keyword in attrs:
            setattr(ds, keyword, attrs[keyword])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _little_endian(ds: Any) -> bool:
    """Whether ``ds``'s values are little endian: the fast header reads such files only; a
    pydicom dataset says so (a big-endian file's OW values are its bytes as they are)."""
    if isinstance(ds, Attributes):
        return True
    encoding = getattr(ds, "original_encoding", None)
    return bool(encoding and encoding[1])


# ---------------------------------------------------------------------------------------
# Window stacks: one channel per window, from one read of the stored values.


@dataclass
class StackPlan:
    """How one frame becomes a window stack (``options.windows``): channel c is the image the
    single window c gives (``plans[c]``), computed for every channel in one pass over the stored
    values: ``lut_affine_stack`` when every channel's table is a proven line, else
    ``lut_gather_channels`` over the tables side by side; float and 32-bit data (the arithmetic
    path) take one pass per channel."""

    kind: str  # "affine", "table" or "channels"
    voi: str
    out_dtype: np.dtype
    plans: list[RenderPlan]
    table: np.ndarray | None = None  # (mask + 1, channels)
    lines: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # float32 j0, a, b per channel
    window: None = None  # (a stack has no single window)

    @property
    def mask(self) -> int:
        return self.plans[0].mask

    @property
    def flip(self) -> int:
        return self.plans[0].flip

    @property
    def ymax(self) -> float:
        return self.plans[0].ymax


@functools.lru_cache(maxsize=32)
def channel_options(options: RenderOptions) -> tuple[RenderOptions, ...]:
    """The single-window options of each channel of ``options.windows``."""
    assert options.windows is not None
    return tuple(dataclasses.replace(options, windows=None, window=w) for w in options.windows)


def stack_refused(spec: PixelSpec) -> str | None:
    """Why a window stack cannot be made of this image (colour or palette), or None."""
    if spec.is_palette or not spec.is_grayscale:
        return f"a window stack needs a grayscale image; this one is {spec.photometric_interpretation}"
    return None


#: What a window stack's VOI text (records' ``voi``) starts with: its channels are windows, not colours.
STACK_VOI = "windows "


def build_stack(ds: Dataset, spec: PixelSpec, frame: int, options: RenderOptions) -> StackPlan:
    """The stack plan for frame ``frame`` (kept on a fast-parsed header like single plans)."""
    refused = stack_refused(spec)
    if refused:
        raise InvalidOptionError(refused)
    key = ("stack", options)
    cached = ds.plans.get(key) if isinstance(ds, Attributes) else None
    if cached is not None:
        return cached
    plans = [build_plan(ds, spec, frame, o) for o in channel_options(options)]
    assert all(p is not None for p in plans)  # explicit windows never need the frame's values
    voi = STACK_VOI + "+".join(window_label(w) for w in options.windows)  # (no comma: outputs join VOIs with one)
    stack = StackPlan("channels", voi, plans[0].out_dtype, plans)  # type: ignore[arg-type]
    if all(p.kind == "table" for p in plans):
        if all(p.affine is not None for p in plans):
            stack.kind = "affine"
            stack.lines = tuple(np.array([p.affine[i] for p in plans], np.float32) for i in range(3))  # type: ignore[assignment]
        else:
            stack.kind = "table"
            stack.table = np.ascontiguousarray(np.stack([p.table for p in plans], axis=1))
    if isinstance(ds, Attributes):
        if len(ds.plans) >= 64:
            ds.plans.clear()
        ds.plans[key] = stack
    return stack

