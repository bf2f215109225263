"""The compiled kernels: the only module that imports numba (see the package docstring for the policy)."""

from __future__ import annotations

import math
import sys

import numba
import numpy as np

from ..elements import ITEM as _ITEM_TAG, ITEM_END as _ITEM_END_TAG, SEQ_END as _SEQ_END_TAG
from ..elements import PIXEL_DATA as _PIXEL_DATA_TAG, PREAMBLE as _PREAMBLE, UNDEFINED as _UNDEFINED_LENGTH, VR_LONG, VR_SHORT
from .voi import MODE_LINEAR, MODE_LINEAR_EXACT, MODE_LUT, MODE_SCALE, MODE_SIGMOID

from . import POLICY

#: THE decorator (the package's POLICY). A test checks every kernel below was built with it.
jit = numba.njit(**POLICY)

__all__ = [
    "jit",
    "KERNELS",
    "lut_gather",
    "lut_gather_channels",
    "lut_affine_stack",
    "lut_affine",
    "stored_presence",
    "int_minmax",
    "float_minmax",
    "voi_int",
    "voi_float",
    "walk_header",
    "read_header",
    "changed_values",
    "walk_changed",
    "box_shrink",
    "ybr_full_to_rgb",
    "resample",
    "resample_affine",
    "block_mean",
]


@jit
def lut_gather(raw, mask, flip, table, out):
    """out[i] = table[(raw[i] & mask) ^ flip]   (raw, out: 1-D; len(table) == mask + 1)."""
    for i in range(raw.shape[0]):
        out[i] = table[(raw[i] & mask) ^ flip]


#: Little-endian machine: three 8- or 16-bit channels are stored packed in 32-bit words.
_LITTLE = sys.byteorder == "little"


@jit
def lut_gather_channels(raw, mask, flip, table, out):
    """out[i, c] = table[(raw[i] & mask) ^ flip, c]   (table: (mask + 1, channels); a palette's
    red, green, blue, or a window stack's windows, each gathered in the same pass)."""
    channels = table.shape[1]
    if channels == 3:  # unrolled: 2.4x faster than the loop over channels (palette RGB, 3 windows;
        # packing the stores into 32-bit words, as lut_affine_stack does, measured no faster here)
        for i in range(raw.shape[0]):
            j = (raw[i] & mask) ^ flip
            out[i, 0] = table[j, 0]
            out[i, 1] = table[j, 1]
            out[i, 2] = table[j, 2]
        return
    for i in range(raw.shape[0]):
        j = (raw[i] & mask) ^ flip
        for c in range(channels):
            out[i, c] = table[j, c]


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
def _line(x, j0, a, b, ymax):
    """lut_affine's value of one line at x (float32 steps), as uint32."""
    v = (x - j0) * a + b
    if v < np.float32(0.0):
        v = np.float32(0.0)
    if v > ymax:
        v = ymax
    return np.uint32(np.int32(v))


@jit
def lut_affine_stack(raw, mask, flip, j0, a, b, ymax, out):
    """out[i, c] = lut_affine's value for line c (j0[c], a[c], b[c], float32): every window of a
    window stack from one read of each stored value, with the same float32 steps as ``lut_affine``
    (so each channel equals the single window's image bit for bit). Three channels of 8 or 16 bits
    go out as whole 32-bit words on a little-endian machine (interleaved single-byte stores do not
    vectorise: 43 us instead of 576 us for a 512x512 slice here, about one window's time)."""
    channels = out.shape[1]
    n = raw.shape[0]
    start = 0
    if channels == 3 and _LITTLE and out.itemsize <= 2:
        j00, j01, j02 = j0[0], j0[1], j0[2]
        a0, a1, a2 = a[0], a[1], a[2]
        b0, b1, b2 = b[0], b[1], b[2]
        if out.itemsize == 1:
            groups = n // 4
            words = out.reshape(n * 3)[: groups * 12].view(np.uint32)
            for g in range(groups):
                i = g * 4
                x0 = np.float32((raw[i] & mask) ^ flip)
                x1 = np.float32((raw[i + 1] & mask) ^ flip)
                x2 = np.float32((raw[i + 2] & mask) ^ flip)
                x3 = np.float32((raw[i + 3] & mask) ^ flip)
                words[g * 3] = (_line(x0, j00, a0, b0, ymax) | (_line(x0, j01, a1, b1, ymax) << 8)
                                | (_line(x0, j02, a2, b2, ymax) << 16) | (_line(x1, j00, a0, b0, ymax) << 24))
                words[g * 3 + 1] = (_line(x1, j01, a1, b1, ymax) | (_line(x1, j02, a2, b2, ymax) << 8)
                                    | (_line(x2, j00, a0, b0, ymax) << 16) | (_line(x2, j01, a1, b1, ymax) << 24))
                words[g * 3 + 2] = (_line(x2, j02, a2, b2, ymax) | (_line(x3, j00, a0, b0, ymax) << 8)
                                    | (_line(x3, j01, a1, b1, ymax) << 16) | (_line(x3, j02, a2, b2, ymax) << 24))
            start = groups * 4
        else:
            groups = n // 2
            words = out.reshape(n * 3)[: groups * 6].view(np.uint32)
            for g in range(groups):
                i = g * 2
                x0 = np.float32((raw[i] & mask) ^ flip)
                x1 = np.float32((raw[i + 1] & mask) ^ flip)
                words[g * 3] = _line(x0, j00, a0, b0, ymax) | (_line(x0, j01, a1, b1, ymax) << 16)
                words[g * 3 + 1] = _line(x0, j02, a2, b2, ymax) | (_line(x1, j00, a0, b0, ymax) << 16)
                words[g * 3 + 2] = _line(x1, j01, a1, b1, ymax) | (_line(x1, j02, a2, b2, ymax) << 16)
            start = groups * 2
    for i in range(start, n):
        x = np.float32((raw[i] & mask) ^ flip)
        for c in range(channels):
            out[i, c] = _line(x, j0[c], a[c], b[c], ymax)


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
def _voi_int_loop(raw, m, f, slope, intercept, mode, p1, p2, ymax, invert, out):
    for i in range(raw.shape[0]):
        x = np.float64(((np.int64(raw[i]) & m) ^ f) - f) * slope + intercept
        out[i] = _quantize(_voi(x, mode, p1, p2, ymax), ymax, invert)


@jit
def voi_int(raw, mask, flip, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    """Integer data of more than 16 stored bits (and small min-max frames): rescale, VOI, round,
    invert per pixel.

    raw is 1-D unsigned; the stored value is ((raw & mask) ^ flip) - flip. With
    mode == MODE_LUT the modality value indexes ``lut`` (already scaled to 0..ymax) from
    ``lut_first``, clamped to its ends. Each VOI function has its own loop (the mode a constant
    there, so the loop vectorizes): a 128 x 128 min-max frame 43 -> 13 us against one loop that
    asks the mode per pixel.
    """
    m = np.int64(mask)
    f = np.int64(flip)
    if mode == MODE_LUT:
        n = lut.shape[0]
        for i in range(raw.shape[0]):
            x = np.float64(((np.int64(raw[i]) & m) ^ f) - f) * slope + intercept
            q = np.float64(lut[_lut_index(x, lut_first, n)])
            if invert:
                q = ymax - q
            out[i] = q
    elif mode == MODE_SCALE:
        _voi_int_loop(raw, m, f, slope, intercept, MODE_SCALE, p1, p2, ymax, invert, out)
    elif mode == MODE_LINEAR:
        _voi_int_loop(raw, m, f, slope, intercept, MODE_LINEAR, p1, p2, ymax, invert, out)
    elif mode == MODE_LINEAR_EXACT:
        _voi_int_loop(raw, m, f, slope, intercept, MODE_LINEAR_EXACT, p1, p2, ymax, invert, out)
    else:
        _voi_int_loop(raw, m, f, slope, intercept, mode, p1, p2, ymax, invert, out)


@jit
def _voi_float_loop(raw, slope, intercept, mode, p1, p2, ymax, invert, out):
    for i in range(raw.shape[0]):
        x = np.float64(raw[i]) * slope + intercept
        out[i] = _quantize(_voi(x, mode, p1, p2, ymax), ymax, invert)


@jit
def voi_float(raw, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    """Float data: rescale, VOI, round, invert per pixel (NaN -> 0 before inversion); a loop per
    VOI function as in ``voi_int``."""
    if mode == MODE_LUT:
        n = lut.shape[0]
        for i in range(raw.shape[0]):
            x = np.float64(raw[i]) * slope + intercept
            if not (x == x):
                q = 0.0
            else:
                q = np.float64(lut[_lut_index(x, lut_first, n)])
            if invert:
                q = ymax - q
            out[i] = q
    elif mode == MODE_SCALE:
        _voi_float_loop(raw, slope, intercept, MODE_SCALE, p1, p2, ymax, invert, out)
    elif mode == MODE_LINEAR:
        _voi_float_loop(raw, slope, intercept, MODE_LINEAR, p1, p2, ymax, invert, out)
    elif mode == MODE_LINEAR_EXACT:
        _voi_float_loop(raw, slope, intercept, MODE_LINEAR_EXACT, p1, p2, ymax, invert, out)
    else:
        _voi_float_loop(raw, slope, intercept, mode, p1, p2, ymax, invert, out)


# --------------------------------------------------------------------------- colour


@jit
def ybr_full_to_rgb(src, m, out):
    """YBR_FULL -> RGB (PS3.3 C.7.6.3.1.2) for (n, 3) uint8 ``src`` into (n, 3) uint8 ``out``,
    ``m`` the float32 3 x 3 matrix: channel c is floor(v + 0.5) clamped to [0, 255] with
    v = fma(Cr - 128, m[2, c], fma(Cb - 128, m[1, c], Y * m[0, c])) in float32, each fused step
    an exact product plus a sum rounded to float32 (done in float64, which holds a product of
    two float32 exactly). That is the order and rounding of pydicom's float32 ``matmul`` (BLAS,
    with FMA) on every one of the 2^24 inputs (tests/test_kernels.py)."""
    r1, r2 = np.float64(m[1, 0]), np.float64(m[2, 0])
    g1, g2 = np.float64(m[1, 1]), np.float64(m[2, 1])
    b1, b2 = np.float64(m[1, 2]), np.float64(m[2, 2])
    r0, g0, b0 = np.float64(m[0, 0]), np.float64(m[0, 1]), np.float64(m[0, 2])
    for i in range(src.shape[0]):
        y = np.float64(src[i, 0])
        cb = np.float64(np.int32(src[i, 1]) - 128)
        cr = np.float64(np.int32(src[i, 2]) - 128)
        out[i, 0] = _ybr_channel(y, cb, cr, r0, r1, r2)
        out[i, 1] = _ybr_channel(y, cb, cr, g0, g1, g2)
        out[i, 2] = _ybr_channel(y, cb, cr, b0, b1, b2)


@jit
def _ybr_channel(y, cb, cr, m0, m1, m2):
    """One channel of ``ybr_full_to_rgb`` (float64 arguments holding float32 values), as uint8."""
    v = np.float64(np.float32(y * m0))
    v = np.float64(np.float32(cb * m1 + v))
    v = np.float32(cr * m2 + v)
    v = np.floor(v + np.float32(0.5))
    return np.uint8(min(max(v, np.float32(0.0)), np.float32(255.0)))


# --------------------------------------------------------------------------- thumbnails


@jit
def box_shrink(img, k, shift, acc, sums, out):
    """``out[r, c, s]`` = the mean of the k x k block of ``img`` (rows, columns, samples) at
    (r*k, c*k), rounded half up, shifted right by ``shift`` bits (8 for 16-bit images), as uint8.
    Edge blocks average the pixels they have; ``out`` is (ceil(rows/k), ceil(columns/k), samples).
    ``acc`` (columns * samples; uint16 for 8-bit images with k <= 257, else uint32) is scratch: a
    block row's column sums, added two rows a pass in one contiguous loop (SIMD; a 512 x 512 slice
    23 -> 20 us, a 2500 x 2048 CR 158 -> 149, medians of 9 in one process). The block totals are
    then added up into ``sums`` (int64 scratch of ``out.shape[1] * samples``: the caller's, as a
    kernel allocates nothing): for k up to 8 a block at a time with its k loads written out
    (``_block_sums_small``: 512 x 512 to 86 x 86 19 -> 11 us, RGB 135 -> 50 us, 768 x 768 37 -> 22;
    best of 5 x 300 in one process), for larger k a column of the block at a time (k passes over
    the totals, each sum its own: no chain of dependent adds along the row as a running sum has;
    such a pass costs 1/k of the column sums' work, and a loop over a block's k columns was slower
    there: 1024 x 1024 55 -> 67 us).
    floor(total / n + 1/2) in float64 equals the twin's (2 total + n) // 2n: the division is
    correctly rounded, so an exact half stays one, and any other mean is farther from a half than
    an ulp. (total * (1 / n) is not: 1 / n is rounded first, and a block of 14 x 14 whose mean is
    123.5 gave 123: 18 of 3,000 random images here had such a pixel.)"""
    rows, cols, samples = img.shape
    width = cols * samples
    flat = img.reshape(rows, width)  # (once: a reshape per row inside the loop costs 3x the sums)
    ocols = out.shape[1]
    whole = cols // k  # output columns whose block is whole
    step = k * samples
    n = whole * samples
    for r in range(out.shape[0]):
        r0 = r * k
        r1 = min(r0 + k, rows)
        a = flat[r0]
        i = r0 + 1
        if (r1 - r0) % 2 == 0:  # two rows a pass: half the loads and stores of ``acc``
            b = flat[i]
            for q in range(width):
                acc[q] = acc.dtype.type(a[q]) + acc.dtype.type(b[q])
            i += 1
        else:
            for q in range(width):
                acc[q] = a[q]
        while i < r1:
            a = flat[i]
            b = flat[i + 1]
            for q in range(width):
                acc[q] += acc.dtype.type(a[q]) + acc.dtype.type(b[q])
            i += 2
        if k <= 8:
            if samples == 1:
                _block_sums_small(acc, k, whole, sums)
            else:
                for s in range(samples):
                    _block_sums_small(acc[s::samples], k, whole, sums[s::samples])
        else:
            for o in range(n):
                sums[o] = 0
            if samples == 1:  # (a unit stride: the loops below compile to much tighter code)
                for j in range(k):
                    for c in range(whole):
                        sums[c] += acc[c * k + j]
            else:
                for j in range(k):
                    for s in range(samples):
                        q = j * samples + s  # where column j of the first block is, for sample s
                        for o in range(s, n, samples):
                            sums[o] += acc[q]
                            q += step
        orow = out[r].reshape(ocols * samples)
        count = np.float64((r1 - r0) * k)
        for o in range(n):
            orow[o] = min(np.int64(sums[o] / count + 0.5) >> shift, 255)
        if whole < ocols:
            count = np.float64((r1 - r0) * (cols - whole * k))
            for s in range(samples):
                total = np.int64(0)
                for q in range(whole * step + s, width, samples):
                    total += acc[q]
                orow[n + s] = min(np.int64(total / count + 0.5) >> shift, 255)


@jit
def _block_sums_small(acc, k, whole, sums):
    """``sums[c]`` = acc[c k] + ... + acc[c k + k - 1] for c < ``whole``, k from 1 to 8, each k
    its own loop with the k loads written out (a block's sum in a register, no pass over ``sums``
    per column of the block): ``box_shrink`` of a 512 x 512 slice to 86 x 86 (k = 6) 19 -> 11 us."""
    if k == 1:
        for c in range(whole):
            sums[c] = acc[c]
    elif k == 2:
        for c in range(whole):
            b = 2 * c
            sums[c] = np.int64(acc[b]) + np.int64(acc[b + 1])
    elif k == 3:
        for c in range(whole):
            b = 3 * c
            sums[c] = np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2])
    elif k == 4:
        for c in range(whole):
            b = 4 * c
            sums[c] = np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2]) + np.int64(acc[b + 3])
    elif k == 5:
        for c in range(whole):
            b = 5 * c
            sums[c] = (np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2]) + np.int64(acc[b + 3])
                       + np.int64(acc[b + 4]))
    elif k == 6:
        for c in range(whole):
            b = 6 * c
            sums[c] = (np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2]) + np.int64(acc[b + 3])
                       + np.int64(acc[b + 4]) + np.int64(acc[b + 5]))
    elif k == 7:
        for c in range(whole):
            b = 7 * c
            sums[c] = (np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2]) + np.int64(acc[b + 3])
                       + np.int64(acc[b + 4]) + np.int64(acc[b + 5]) + np.int64(acc[b + 6]))
    else:
        for c in range(whole):
            b = 8 * c
            sums[c] = (np.int64(acc[b]) + np.int64(acc[b + 1]) + np.int64(acc[b + 2]) + np.int64(acc[b + 3])
                       + np.int64(acc[b + 4]) + np.int64(acc[b + 5]) + np.int64(acc[b + 6]) + np.int64(acc[b + 7]))


# --------------------------------------------------------------------------- resizing


@jit
def _resample_row(acc, tx, wx, ymax, vbuf, orow):
    """The horizontal pass of ``resample``: ``orow[q] = sum_k wx[k, q] * acc[tx[k, q]]``, rounded
    half up and clamped (the taps of a whole output row at a time: gathers that vectorise)."""
    m = tx.shape[1]
    for q in range(m):
        vbuf[q] = np.float32(0.0)
    for k in range(tx.shape[0]):
        taps = tx[k]
        weights = wx[k]
        for q in range(m):
            vbuf[q] += weights[q] * acc[taps[q]]
    for q in range(m):
        v = vbuf[q] + np.float32(0.5)
        if v > ymax:
            v = ymax
        orow[q] = np.int32(v)


@jit
def resample(img, ys, yn, wy, tx, wx, ymax, acc, vbuf, out):
    """Separable resampling of ``img`` (rows, columns, samples; uint8 or uint16) into ``out``.

    Output row r is first ``sum_j wy[r, j] * img[ys[r] + j]`` for j < yn[r], added in float32,
    in order, into ``acc`` (one input row's worth of scratch: no float copy of the frame); then
    each of its values q (column and sample, flat) is ``sum_k wx[k, q] * acc[tx[k, q]]`` over
    every k (taps past a column's own count have weight 0, which adds nothing), into ``vbuf``,
    rounded half up and clamped to ``ymax``. The taps run over all outputs of a row at a time
    (gathers the loop vectorises), not output by output. The weights (``resize.py``) are the area
    each input pixel covers of the output pixel when shrinking (OpenCV's INTER_AREA) and
    bilinear ones when enlarging. The twin adds the same float32 terms in the same order."""
    rows, cols, samples = img.shape
    width = cols * samples
    flat = img.reshape(rows, width)  # (once, not per row: see box_shrink)
    m = tx.shape[1]
    for r in range(out.shape[0]):
        y0 = ys[r]
        w = wy[r, 0]
        for q in range(width):
            acc[q] = w * np.float32(flat[y0, q])
        for j in range(1, yn[r]):
            w = wy[r, j]
            y = y0 + j
            for q in range(width):
                acc[q] += w * np.float32(flat[y, q])
        _resample_row(acc, tx, wx, ymax, vbuf, out[r].reshape(m))


@jit
def resample_affine(raw, mask, flip, j0, a, b, ymax, ys, yn, wy, tx, wx, acc, vbuf, out):
    """``lut_affine`` fused into ``resample``: the stored values ``raw`` (rows, columns; unsigned)
    windowed by the plan's proven line as each input row is read into the vertical sums, so the
    full-size image is never written: the same numbers as ``lut_affine`` then ``resample`` (the
    integer output of the line, then the same float32 sums), measured 84 us against 95 us for
    a 512x512 CT slice to 256 here. Only for grey frames whose plan is a line (CT's rescale +
    linear window, min-max); other plans take the two steps."""
    rows, cols = raw.shape
    m = tx.shape[1]
    zero = np.float32(0.0)
    for r in range(out.shape[0]):
        y0 = ys[r]
        w = wy[r, 0]
        for q in range(cols):
            v = (np.float32((raw[y0, q] & mask) ^ flip) - j0) * a + b
            if v < zero:
                v = zero
            if v > ymax:
                v = ymax
            acc[q] = w * np.float32(np.int32(v))
        for j in range(1, yn[r]):
            w = wy[r, j]
            y = y0 + j
            for q in range(cols):
                v = (np.float32((raw[y, q] & mask) ^ flip) - j0) * a + b
                if v < zero:
                    v = zero
                if v > ymax:
                    v = ymax
                acc[q] += w * np.float32(np.int32(v))
        _resample_row(acc, tx, wx, ymax, vbuf, out[r].reshape(m))


@jit
def block_mean(img, ky, kx, shift, acc, out):
    """``out[r, c, s]`` = the mean of the ky x kx block of ``img`` (rows, columns, samples; uint8
    or uint16) at (r*ky, c*kx), rounded half up: (block sum + half of ky*kx) >> ``shift``, for ky and
    kx powers of two (shift = log2(ky*kx)) and whole blocks (rows = out rows * ky, columns = out
    columns * kx). For such factors with ky*kx <= 256 this is exactly what ``resample`` gives (its
    weights 1/ky and 1/kx are powers of two, so its float32 sums are exact: resize.py takes this path
    then). ``acc`` (uint32, columns * samples) is scratch: a block row's column sums, two rows a pass,
    then its columns added in pairs in place, halving the row, down to the last pass, which rounds.
    512 x 512 to 256 x 256: 31 against 93 us grey, 84 against 280 us RGB (k = 4: 27 / 75 against 56 /
    157 us; medians here)."""
    rows, cols, samples = img.shape
    width = cols * samples
    flat = img.reshape(rows, width)  # (once: see box_shrink)
    ocols = out.shape[1]
    half = np.uint32((1 << shift) >> 1)
    for r in range(out.shape[0]):
        y = r * ky
        a = flat[y]
        if ky >= 2:
            b = flat[y + 1]
            for q in range(width):
                acc[q] = np.uint32(a[q]) + np.uint32(b[q])
        else:
            for q in range(width):
                acc[q] = a[q]
        for j in range(2, ky):
            a = flat[y + j]
            for q in range(width):
                acc[q] += a[q]
        m = cols  # columns of sums left in acc
        while m > 2 * ocols:
            m //= 2
            if samples == 1:  # (unit strides and RGB spelled out: the loops compile much tighter)
                for c in range(m):
                    acc[c] = acc[2 * c] + acc[2 * c + 1]
            elif samples == 3:
                for c in range(m):
                    i, o = 6 * c, 3 * c
                    acc[o] = acc[i] + acc[i + 3]
                    acc[o + 1] = acc[i + 1] + acc[i + 4]
                    acc[o + 2] = acc[i + 2] + acc[i + 5]
            else:
                for c in range(m):
                    for s in range(samples):
                        acc[c * samples + s] = acc[2 * c * samples + s] + acc[(2 * c + 1) * samples + s]
        orow = out[r].reshape(ocols * samples)
        if m == ocols:  # kx == 1
            for q in range(ocols * samples):
                orow[q] = (acc[q] + half) >> shift
        elif samples == 1:
            for c in range(ocols):
                orow[c] = (acc[2 * c] + acc[2 * c + 1] + half) >> shift
        elif samples == 3:
            for c in range(ocols):
                i, o = 6 * c, 3 * c
                orow[o] = (acc[i] + acc[i + 3] + half) >> shift
                orow[o + 1] = (acc[i + 1] + acc[i + 4] + half) >> shift
                orow[o + 2] = (acc[i + 2] + acc[i + 5] + half) >> shift
        else:
            for c in range(ocols):
                for s in range(samples):
                    orow[c * samples + s] = (acc[2 * c * samples + s] + acc[(2 * c + 1) * samples + s] + half) >> shift


# --------------------------------------------------------------------------- header walk

# walk_header's ``vr_class`` table is elements.VR_CLASS (one set of VR rules for every reader).

_IN_SEQUENCE, _IN_ITEM = 1, 2
_VR_SQ, _VR_UN = 0x5153, 0x4E55  # b"SQ", b"UN" as little-endian uint16


@jit
def _u16(buf, pos):
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)


@jit
def _u32(buf, pos):
    return _u16(buf, pos) | (_u16(buf, pos + 2) << 16)


@jit
def walk_header(buf, pos, explicit, vr_class, wanted, unusual, found, stack, total):
    """Walk the dataset's top-level elements from ``pos`` to the pixel data element.

    ``buf`` is the file (uint8), or its first bytes when the file (``total`` bytes) is read in
    parts: every element before the pixel data must lie in ``buf``, native pixel data in ``total``;
    ``explicit`` its VR encoding (little endian either way).
    For each tag ``wanted[k]`` met at the top level, its value's start, length and VR code
    (``buf[p] | buf[p + 1] << 8``, 0 for implicit VR) go to ``found[k, 0:3]`` (the last one
    wins; a tag not met leaves ``-1, 0, 0``); sequences of undefined length are skipped item by item,
    at most ``stack.shape[0] - 1`` levels deep. Returns (start, length) of the pixel data
    value (length 0xFFFFFFFF: encapsulated, its items start at ``start``), or (-1, 0) when
    the header has something this walk leaves to pydicom: a tag of ``unusual`` at the top
    level, an unknown VR or non-zero reserved bytes there, undefined length on a top-level
    element that is not SQ or UN, a value running past the end, no pixel data, or short
    pixel data.
    """
    n = buf.shape[0]
    for k in range(found.shape[0]):
        found[k, 0] = -1
        found[k, 1] = 0
        found[k, 2] = 0
    depth = 0  # 0: the top level; else stack[depth] says what is being read at that level
    max_depth = stack.shape[0] - 1
    while True:
        if depth == 0 or stack[depth] == _IN_ITEM:  # elements
            if pos + 8 > n:
                return -1, 0
            tag = (_u16(buf, pos) << 16) | _u16(buf, pos + 2)
            if depth > 0 and tag == _ITEM_END_TAG:
                pos += 8
                depth -= 1
                continue
            vr = 0
            if explicit:
                vr = _u16(buf, pos + 4)
                kind = vr_class[vr]
                if kind == VR_LONG:
                    if pos + 12 > n:
                        return -1, 0
                    if depth == 0 and _u16(buf, pos + 6) != 0:
                        return -1, 0  # the two reserved bytes
                    length = _u32(buf, pos + 8)
                    start = pos + 12
                elif kind == VR_SHORT or depth > 0:
                    length = _u16(buf, pos + 6)
                    start = pos + 8
                else:
                    return -1, 0  # implicit VR inside an explicit file
            else:
                length = _u32(buf, pos + 4)
                start = pos + 8
            if depth == 0:
                if tag == _PIXEL_DATA_TAG:
                    if length == _UNDEFINED_LENGTH:
                        return start, length  # encapsulated: the caller walks its items
                    if start + length > total:
                        return -1, 0
                    return start, length
                for k in range(unusual.shape[0]):
                    if unusual[k] == tag:
                        return -1, 0
            if length == _UNDEFINED_LENGTH:
                if depth == 0 and explicit and vr != _VR_SQ and vr != _VR_UN:
                    return -1, 0
                if depth >= max_depth:
                    return -1, 0
                depth += 1
                stack[depth] = _IN_SEQUENCE
                pos = start
                continue
            end = start + length
            if depth == 0:
                if end > n:
                    return -1, 0
                for k in range(wanted.shape[0]):
                    if wanted[k] == tag:
                        found[k, 0] = start
                        found[k, 1] = length
                        found[k, 2] = vr
            pos = end
        else:  # a sequence of undefined length: items, then its delimiter
            if pos + 8 > n:
                return -1, 0
            tag = (_u16(buf, pos) << 16) | _u16(buf, pos + 2)
            length = _u32(buf, pos + 4)
            pos += 8
            if tag == _SEQ_END_TAG:
                depth -= 1
                continue
            if tag != _ITEM_TAG:
                return -1, 0
            if length != _UNDEFINED_LENGTH:
                pos += length
                continue
            if depth >= max_depth:
                return -1, 0
            depth += 1
            stack[depth] = _IN_ITEM


@jit
def read_header(buf, vr_class, magic, implicit_ts, wanted, unusual, found, stack, meta, key, total):
    """A whole little-endian file's header in one call: its file meta, then :func:`walk_header` on
    its dataset, then the values of ``wanted`` packed into ``key`` (``buf`` and ``total``: as
    walk_header takes them).

    The file meta (group 0002 after the preamble and ``magic``, ``elements.MAGIC``; explicit VR) is read as ``elements.file_meta``
    reads it: ``meta[0:4]`` = the position after it, the transfer syntax value's start and length,
    and 1 when the dataset is walked as explicit VR. It is implicit VR when the transfer syntax (its
    trailing NULs and spaces removed) is ``implicit_ts``, else explicit, unless the first element's
    VR bytes say the opposite (pydicom's rule, ``fastheader._explicit``).

    Returns (pixel start, pixel length, key length): (-2, 0, 0) when there is no preamble, no
    transfer syntax, or a meta element that does not fit; else walk_header's answer with, when it
    found the pixel data, the length of ``key`` used (-1 when the values do not fit in it). Per
    tag of ``wanted``, ``key`` holds its value length as 4 little-endian bytes (0xFFFFFFFF when
    absent), its VR code as 2, then its value: equal keys, equal values.
    """
    n = buf.shape[0]
    meta[0] = -1
    meta[1] = -1
    meta[2] = 0
    meta[3] = 0
    pos = _PREAMBLE + magic.shape[0]
    if n < pos + 12:
        return -2, 0, 0
    for i in range(magic.shape[0]):
        if buf[_PREAMBLE + i] != magic[i]:
            return -2, 0, 0
    while pos + 8 <= n:
        if _u16(buf, pos) != 2:
            break
        elem = _u16(buf, pos + 2)
        if vr_class[_u16(buf, pos + 4)] == VR_LONG:
            if pos + 12 > n:
                return -2, 0, 0
            length = _u32(buf, pos + 8)
            start = pos + 12
        else:
            length = _u16(buf, pos + 6)
            start = pos + 8
        if length == _UNDEFINED_LENGTH or start + length > n:
            return -2, 0, 0
        if elem == 0x0010:
            meta[1] = start
            meta[2] = length
        pos = start + length
    meta[0] = pos
    ts_start = meta[1]
    if ts_start < 0:
        return -2, 0, 0
    m = meta[2]
    while m > 0 and (buf[ts_start + m - 1] == 0 or buf[ts_start + m - 1] == 32):
        m -= 1
    explicit = True
    if m == implicit_ts.shape[0]:
        explicit = False
        for i in range(m):
            if buf[ts_start + i] != implicit_ts[i]:
                explicit = True
                break
    if pos + 6 <= n and (vr_class[_u16(buf, pos + 4)] != 0) != explicit:
        explicit = not explicit
    meta[3] = 1 if explicit else 0
    start, length = walk_header(buf, pos, explicit, vr_class, wanted, unusual, found, stack, total)
    if start < 0:
        return start, length, 0
    cap = key.shape[0]
    k = 0
    for w in range(found.shape[0]):
        s = found[w, 0]
        size = found[w, 1] if s >= 0 else 0
        if k + 6 + size > cap:
            return start, length, -1
        stored = size if s >= 0 else 0xFFFFFFFF
        for i in range(4):
            key[k + i] = (stored >> (8 * i)) & 0xFF
        key[k + 4] = found[w, 2] & 0xFF
        key[k + 5] = (found[w, 2] >> 8) & 0xFF
        k += 6
        for i in range(size):
            key[k + i] = buf[s + i]
        k += size
    return start, length, k


@jit
def changed_values(buf, found, last, seen, changed):
    """Which of the values ``found`` locates (walk_header's rows) differ from the call before.

    Per row, ``last`` holds the value bytes of the last call (rows of up to ``last.shape[1]``
    bytes) and ``seen`` its (length, VR code): -1 for an absent value, -2 for one that did not fit
    (never equal); a caller starts ``seen`` at -3. A row that differs (or did not fit, or lies past
    the end of ``buf``) has its index written to ``changed`` and its bytes, length and code kept;
    returns the count written. Rows left out are the last call's bytes, VR code and length, so the
    last call's values stand for them."""
    n = buf.shape[0]
    width = last.shape[1]
    k = 0
    for w in range(found.shape[0]):
        s = found[w, 0]
        if s >= 0:
            size = found[w, 1]
            code = found[w, 2]
            fits = 0 <= size and size <= width and s + size <= n
        else:  # absent
            size = -1
            code = 0
            fits = True
        same = fits and seen[w, 0] == size and seen[w, 1] == code
        if same:
            for i in range(size):
                if buf[s + i] != last[w, i]:
                    same = False
                    break
        if not same:
            changed[k] = w
            k += 1
            seen[w, 0] = size if fits else -2
            seen[w, 1] = code
            if fits:
                for i in range(size):
                    last[w, i] = buf[s + i]
    return k


@jit
def walk_changed(buf, pos, explicit, vr_class, wanted, unusual, found, stack, total, last, seen, changed):
    """:func:`walk_header`, then :func:`changed_values` on the rows it found, in one call:
    (pixel start, pixel length, count of changed rows); the count is 0 when the walk declined
    (start < 0: ``last`` and ``seen`` are left as they were)."""
    start, length = walk_header(buf, pos, explicit, vr_class, wanted, unusual, found, stack, total)
    if start < 0:
        return start, length, 0
    return start, length, changed_values(buf, found, last, seen, changed)


KERNELS = (
    lut_gather, lut_gather_channels, lut_affine, lut_affine_stack, stored_presence, int_minmax, float_minmax, voi_int, voi_float, walk_header, read_header,
    changed_values, walk_changed, box_shrink, ybr_full_to_rgb, resample, resample_affine, block_mean,
)
