"""The only place that imports numba: the decorator policy, the kernels, their numpy twins.

Policy: every kernel is ``jit`` = ``numba.njit(cache=True, nogil=True, error_model="numpy")``
(numpy semantics for float division: a NaN pixel under a width-1 window gives NaN, never an exception). A kernel takes
arrays and scalars, writes a preallocated output, allocates nothing and reads no globals.
Numba does no bounds checks, so callers (render.py) validate every shape and index range
first; the table kernels index with ``(raw & mask) ^ flip``, which is below ``mask + 1``
by construction, and the plan makes every table exactly ``mask + 1`` long.

Two paths turn stored values into the output image in one pass:

* table path (integer data of up to 16 stored bits): the plan folds modality LUT, VOI,
  rounding and inversion into one table over all stored values; the kernel masks the bits
  above Bits Stored, sign-extends (via ``^ flip``) and gathers. When the plan has proven
  that the table equals a clamped float32 line over every index (``plan.fit_affine``: the
  common rescale + linear window, min-max), ``lut_affine`` computes that line instead of
  gathering: the same output bit for bit, in SIMD lanes, near memory speed on large frames;
* arithmetic path (float data, 32-bit integers): rescale, VOI function, rounding and
  inversion per pixel, with the same scalar formulas as the numpy twin in ``voi.py``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .voi import MODE_LINEAR, MODE_LINEAR_EXACT, MODE_LUT, MODE_SCALE, MODE_SIGMOID

#: THE decorator policy. A test checks every kernel below was built with it.
POLICY = {"cache": True, "nogil": True, "error_model": "numpy"}
jit = numba.njit(**POLICY)

__all__ = [
    "POLICY",
    "jit",
    "KERNELS",
    "lut_gather",
    "lut_gather_rgb",
    "lut_affine",
    "stored_presence",
    "int_minmax",
    "float_minmax",
    "voi_int",
    "voi_float",
    "warmup",
]


@jit
def lut_gather(raw, mask, flip, table, out):
    """out[i] = table[(raw[i] & mask) ^ flip]   (raw, out: 1-D; len(table) == mask + 1)."""
    for i in range(raw.shape[0]):
        out[i] = table[(raw[i] & mask) ^ flip]


@jit
def lut_gather_rgb(raw, mask, flip, table, out):
    """out[i, c] = table[(raw[i] & mask) ^ flip, c]   (palette: table is (mask + 1, 3))."""
    for i in range(raw.shape[0]):
        j = (raw[i] & mask) ^ flip
        out[i, 0] = table[j, 0]
        out[i, 1] = table[j, 1]
        out[i, 2] = table[j, 2]


@jit
def lut_affine(raw, mask, flip, j0, a, b, ymax, out):
    """out[i] = trunc(clamp((float32((raw[i] & mask) ^ flip) - j0) * a + b, 0, ymax)), in float32.

    ``mask`` and ``flip`` are of raw's dtype and ``j0``, ``a``, ``b``, ``ymax`` are float32
    (the plan passes them so), which keeps every lane narrow: the loop vectorises. ``j0`` (an
    integer near the window's middle) keeps the values small where rounding matters. It
    equals ``lut_gather`` with the plan's table only because the plan checked that over every index.
    """
    zero = np.float32(0.0)
    for i in range(raw.shape[0]):
        v = (np.float32((raw[i] & mask) ^ flip) - j0) * a + b
        if v < zero:
            v = zero
        if v > ymax:
            v = ymax
        out[i] = np.int32(v)


@jit
def stored_presence(raw, mask, flip, present):
    """present[(raw[i] & mask) ^ flip] = True: which stored values occur (for min-max)."""
    for i in range(raw.shape[0]):
        present[(raw[i] & mask) ^ flip] = True


@jit
def int_minmax(raw, mask, flip, out):
    """out[0], out[1] = min, max of the sign-extended stored values; raw is 1-D, unsigned."""
    lo = np.int64(1) << 62
    hi = -lo
    m = np.int64(mask)
    f = np.int64(flip)
    for i in range(raw.shape[0]):
        v = ((np.int64(raw[i]) & m) ^ f) - f
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    out[0] = lo
    out[1] = hi


@jit
def float_minmax(raw, out):
    """out[0], out[1] = min, max of the finite values (NaN when there are none)."""
    lo = np.inf
    hi = -np.inf
    for i in range(raw.shape[0]):
        v = np.float64(raw[i])
        if math.isfinite(v):
            if v < lo:
                lo = v
            if v > hi:
                hi = v
    if lo > hi:
        lo = np.nan
        hi = np.nan
    out[0] = lo
    out[1] = hi


@jit
def _voi(x, mode, p1, p2, ymax):
    """The VOI function of voi.py, one value; the numpy twin is ``voi.voi_values``."""
    if mode == MODE_LINEAR:
        lower = p1 - 0.5 - (p2 - 1.0) / 2.0
        upper = p1 - 0.5 + (p2 - 1.0) / 2.0
        if x <= lower:
            return 0.0
        if x > upper:
            return ymax
        return (x - (p1 - 0.5)) * ymax / (p2 - 1.0) + ymax / 2.0
    if mode == MODE_LINEAR_EXACT:
        if x <= p1 - p2 / 2.0:
            return 0.0
        if x > p1 + p2 / 2.0:
            return ymax
        return (x - p1) * ymax / p2 + ymax / 2.0
    if mode == MODE_SIGMOID:
        return ymax / (1.0 + math.exp(-4.0 * (x - p1) / p2))
    # MODE_SCALE: [p1, p2] -> [0, ymax]; an empty range maps to 0
    if p2 > p1:
        return (x - p1) * ymax / (p2 - p1)
    return 0.0


@jit
def _quantize(y, ymax, invert):
    """Round half up, clamp to 0..ymax, invert; NaN -> 0 (before inversion)."""
    if not (y == y):
        q = 0.0
    else:
        q = np.floor(y + 0.5)
        if q < 0.0:
            q = 0.0
        elif q > ymax:
            q = ymax
    if invert:
        q = ymax - q
    return q


@jit
def _lut_index(x, lut_first, n):
    """floor(x) - lut_first clamped to 0..n-1, computed in float so huge values cannot overflow."""
    j = np.floor(x) - lut_first
    if j >= n - 1:
        return n - 1
    if j >= 0:
        return np.int64(j)
    return 0


@jit
def voi_int(raw, mask, flip, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    """Integer data of more than 16 stored bits: rescale, VOI, round, invert per pixel.

    raw is 1-D unsigned; the stored value is ((raw & mask) ^ flip) - flip. With
    mode == MODE_LUT the modality value indexes ``lut`` (already scaled to 0..ymax) from
    ``lut_first``, clamped to its ends.
    """
    m = np.int64(mask)
    f = np.int64(flip)
    n = lut.shape[0]
    for i in range(raw.shape[0]):
        x = np.float64(((np.int64(raw[i]) & m) ^ f) - f) * slope + intercept
        if mode == MODE_LUT:
            q = np.float64(lut[_lut_index(x, lut_first, n)])
            if invert:
                q = ymax - q
            out[i] = q
        else:
            out[i] = _quantize(_voi(x, mode, p1, p2, ymax), ymax, invert)


@jit
def voi_float(raw, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    """Float data: rescale, VOI, round, invert per pixel (NaN -> 0 before inversion)."""
    n = lut.shape[0]
    for i in range(raw.shape[0]):
        x = np.float64(raw[i]) * slope + intercept
        if mode == MODE_LUT:
            if not (x == x):
                q = 0.0
            else:
                q = np.float64(lut[_lut_index(x, lut_first, n)])
            if invert:
                q = ymax - q
            out[i] = q
        else:
            out[i] = _quantize(_voi(x, mode, p1, p2, ymax), ymax, invert)


KERNELS = (lut_gather, lut_gather_rgb, lut_affine, stored_presence, int_minmax, float_minmax, voi_int, voi_float)


def warmup() -> None:
    """Compile (or load from the disk cache) the signatures the renderer uses."""
    from .twins import warmup_arrays

    for kernel, args in warmup_arrays():
        kernel(*args)
