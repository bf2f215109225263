"""Plain-numpy twins of the kernels: the definition the tests hold each kernel to, bit for bit.

(``walk_header``'s twin is ``fastheader.walk_python``, ``read_header``'s ``fastheader.read_python``.)
"""

from __future__ import annotations

import numpy as np

from .voi import MODE_LUT, quantize, voi_values


def lut_gather(raw, mask, flip, table, out):
    out[...] = table[(raw & mask) ^ flip]


lut_gather_channels = lut_gather


def lut_affine(raw, mask, flip, j0, a, b, ymax, out):
    j = ((raw & mask) ^ flip).astype(np.float32)
    v = (j - np.float32(j0)) * np.float32(a) + np.float32(b)  # float32 throughout, one rounding per operation
    out[...] = np.minimum(np.maximum(v, np.float32(0.0)), np.float32(ymax)).astype(np.int32)


def lut_affine_stack(raw, mask, flip, j0, a, b, ymax, out):
    for c in range(out.shape[1]):
        column = np.empty(raw.shape[0], out.dtype)
        lut_affine(raw, mask, flip, j0[c], a[c], b[c], ymax, column)
        out[:, c] = column


def stored_presence(raw, mask, flip, present):
    present[(raw & mask) ^ flip] = True


def _signed(raw, mask, flip):
    return ((raw.astype(np.int64) & np.int64(mask)) ^ np.int64(flip)) - np.int64(flip)


def int_minmax(raw, mask, flip, out):
    v = _signed(raw, mask, flip)
    out[0], out[1] = v.min(), v.max()


def float_minmax(raw, out):
    v = raw.astype(np.float64)
    v = v[np.isfinite(v)]
    out[0], out[1] = (v.min(), v.max()) if v.size else (np.nan, np.nan)


def _apply(x, mode, p1, p2, ymax, invert, lut, lut_first):
    if mode == MODE_LUT:
        with np.errstate(invalid="ignore"):
            j = np.floor(x) - lut_first
        idx = np.where(j >= lut.shape[0] - 1, lut.shape[0] - 1, np.where(j >= 0, j, 0))
        q = lut[np.nan_to_num(idx, nan=0).astype(np.int64)].astype(np.float64)
        q = np.where(np.isnan(x), 0.0, q)
        return ymax - q if invert else q
    return quantize(voi_values(x, mode, p1, p2, ymax), ymax, invert)


def voi_int(raw, mask, flip, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    x = _signed(raw, mask, flip).astype(np.float64) * slope + intercept
    out[...] = _apply(x, mode, p1, p2, ymax, invert, lut, lut_first)


def voi_float(raw, slope, intercept, mode, p1, p2, ymax, invert, lut, lut_first, out):
    x = raw.astype(np.float64) * slope + intercept
    out[...] = _apply(x, mode, p1, p2, ymax, invert, lut, lut_first)


def ybr_full_to_rgb(src, m, out):
    y = src[:, 0].astype(np.float64)
    cb = src[:, 1].astype(np.float64) - 128
    cr = src[:, 2].astype(np.float64) - 128
    m = m.astype(np.float64)
    for c in range(3):
        v = (y * m[0, c]).astype(np.float32)
        v = (cb * m[1, c] + v.astype(np.float64)).astype(np.float32)  # an exact product plus one rounding: fma
        v = (cr * m[2, c] + v.astype(np.float64)).astype(np.float32)
        out[:, c] = np.clip(np.floor(v + np.float32(0.5)), 0, 255).astype(np.uint8)


def box_shrink(img, k, shift, acc, sums, out):
    rows, cols = img.shape[:2]
    starts_r = np.arange(0, rows, k)
    starts_c = np.arange(0, cols, k)
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.int64), starts_r, axis=0), starts_c, axis=1)
    counts = np.multiply.outer(np.minimum(k, rows - starts_r), np.minimum(k, cols - starts_c))[:, :, None]
    out[...] = np.minimum(((2 * sums + counts) // (2 * counts)) >> shift, 255).astype(np.uint8)


def resample(img, ys, yn, wy, tx, wx, ymax, acc, vbuf, out):
    rows, cols, samples = img.shape
    flat = img.reshape(rows, cols * samples)
    m = tx.shape[1]
    for r in range(out.shape[0]):
        a = wy[r, 0] * flat[ys[r]].astype(np.float32)
        for j in range(1, yn[r]):
            a = a + wy[r, j] * flat[ys[r] + j].astype(np.float32)
        v = np.zeros(m, np.float32)
        for k in range(tx.shape[0]):
            v = v + wx[k] * a[tx[k]]
        out[r] = np.minimum(v + np.float32(0.5), np.float32(ymax)).astype(np.int32).reshape(out.shape[1:])


def block_mean(img, ky, kx, shift, acc, out):
    rows, cols, samples = out.shape[0] * ky, out.shape[1] * kx, img.shape[2]
    sums = img[:rows, :cols].astype(np.int64).reshape(out.shape[0], ky, out.shape[1], kx, samples).sum(axis=(1, 3))
    out[...] = ((sums + ((1 << shift) >> 1)) >> shift).astype(out.dtype)


def resample_affine(raw, mask, flip, j0, a, b, ymax, ys, yn, wy, tx, wx, acc, vbuf, out):
    windowed = np.empty(raw.size, out.dtype)
    lut_affine(raw.reshape(-1), mask, flip, j0, a, b, ymax, windowed)
    resample(windowed.reshape(raw.shape[0], raw.shape[1], 1), ys, yn, wy, tx, wx, ymax, acc, vbuf, out)


def changed_values(buf, found, last, seen, changed):
    """``jitted.changed_values``, in plain Python."""
    n, width, k = buf.shape[0], last.shape[1], 0
    for w in range(found.shape[0]):
        s = int(found[w, 0])
        size = int(found[w, 1]) if s >= 0 else -1
        code = int(found[w, 2]) if s >= 0 else 0
        fits = 0 <= size <= width and s + size <= n if s >= 0 else True
        value = bytes(buf[s : s + size]) if s >= 0 and fits else b""
        if not (fits and seen[w, 0] == size and seen[w, 1] == code and value == last[w, : max(size, 0)].tobytes()):
            changed[k] = w
            k += 1
            seen[w, 0], seen[w, 1] = (size if fits else -2), code
            last[w, : len(value)] = np.frombuffer(value, np.uint8)
    return k


def _read_only(n: int, dtype) -> np.ndarray:
    """``n`` zeros of ``dtype`` as a read-only view of bytes, as frames and headers read from a file are."""
    return np.frombuffer(bytes(n * np.dtype(dtype).itemsize), dtype)


def warmup_arrays(full: bool):
    """(kernel, args) pairs covering the signatures the renderer compiles; ``full=False``: only the
    core a native 8- or 16-bit frame needs (the header walks, its window's line, its min-max), what
    nearly every file of an archive uses, so that a run's start-up does not load ~50 signatures
    (~0.15 s more) of which it uses a few; the rest load where they are first used."""
    from .jitted import (
        float_minmax as k_float_minmax,
        int_minmax as k_int_minmax,
        lut_affine as k_lut_affine,
        lut_gather as k_lut_gather,
        lut_gather_channels as k_lut_gather_channels,
        lut_affine_stack as k_lut_affine_stack,
        stored_presence as k_stored_presence,
        voi_float as k_voi_float,
        voi_int as k_voi_int,
        walk_header as k_walk_header,
        walk_changed as k_walk_changed,
        read_header as k_read_header,
        box_shrink as k_box_shrink,
        ybr_full_to_rgb as k_ybr_full_to_rgb,
        resample as k_resample,
        resample_affine as k_resample_affine,
        block_mean as k_block_mean,
    )

    i64 = np.zeros(1, np.int64)
    calls = [
        # (the header and the constants it is matched against are views of bytes: read-only, as fastheader passes them)
        (k_read_header, (_read_only(16, np.uint8), np.zeros(1 << 16, np.uint8), _read_only(4, np.uint8), _read_only(1, np.uint8), i64, i64,
                         np.zeros((1, 3), np.int64), np.zeros(4, np.int64), np.zeros(4, np.int64), np.zeros(8, np.uint8), 16)),
        (k_walk_header, (_read_only(16, np.uint8), 0, True, np.zeros(1 << 16, np.uint8), i64, i64,
                         np.zeros((1, 3), np.int64), np.zeros(4, np.int64), 16)),
        # (the name guard's and the metadata table's values: every run but --allow-phi ones)
        (k_walk_changed, (_read_only(16, np.uint8), 0, True, np.zeros(1 << 16, np.uint8), i64, i64,
                          np.zeros((1, 3), np.int64), np.zeros(4, np.int64), 16, np.zeros((1, 4), np.uint8),
                          np.zeros((1, 2), np.int64), np.zeros(1, np.int64))),
    ]
    # Frames read straight from the file's bytes are read-only arrays, a signature of their own: the
    # commonest (an 8- or 16-bit native frame through its window's line, to 8 bits, or its min-max)
    # are in the core, not loaded by every worker on its first file (~3 ms each).
    for raw_dtype in (np.uint8, np.uint16):
        f32 = np.float32(1.0)
        calls.append((k_lut_affine, (_read_only(4, raw_dtype), raw_dtype(255), raw_dtype(0), f32, f32, f32, f32, np.zeros(4, np.uint8))))
    calls.append((k_int_minmax, (_read_only(4, np.uint16), 65535, 0, np.zeros(2, np.int64))))
    if not full:
        return calls
    for raw_dtype in (np.uint8, np.uint16, np.uint32):
        raw = np.zeros(4, raw_dtype)
        for out_dtype in (np.uint8, np.uint16):
            calls.append((k_lut_gather, (raw, 255, 0, np.zeros(256, out_dtype), np.zeros(4, out_dtype))))
            calls.append(
                (k_lut_gather_channels, (raw, 255, 0, np.zeros((256, 3), out_dtype), np.zeros((4, 3), out_dtype)))
            )
            f32 = np.float32(1.0)
            calls.append((k_lut_affine, (raw, raw_dtype(255), raw_dtype(0), f32, f32, f32, f32, np.zeros(4, out_dtype))))
            f32s = np.ones(3, np.float32)
            calls.append((k_lut_affine_stack, (raw, raw_dtype(255), raw_dtype(0), f32s, f32s, f32s, f32, np.zeros((4, 3), out_dtype))))
        calls.append((k_stored_presence, (raw, 255, 0, np.zeros(256, np.bool_))))
        calls.append((k_int_minmax, (raw, 255, 0, np.zeros(2, np.int64))))
    for raw_dtype in (np.float32, np.float64):
        calls.append((k_float_minmax, (np.zeros(4, raw_dtype), np.zeros(2, np.float64))))
    for out_dtype in (np.uint8, np.uint16):
        lut = np.zeros(2, out_dtype)
        calls.append(
            (k_voi_int, (np.zeros(4, np.uint32), 255, 0, 1.0, 0.0, 0, 40.0, 400.0, 255.0, False, lut, 0, np.zeros(4, out_dtype)))
        )
        for raw_dtype in (np.float32, np.float64):
            calls.append(
                (k_voi_float, (np.zeros(4, raw_dtype), 1.0, 0.0, 0, 40.0, 400.0, 255.0, False, lut, 0, np.zeros(4, out_dtype)))
            )
    for raw_dtype, shift in ((np.uint8, 0), (np.uint16, 8)):
        for acc_dtype in (np.uint16, np.uint32) if raw_dtype is np.uint8 else (np.uint32,):
            calls.append((k_box_shrink, (np.zeros((2, 2, 1), raw_dtype), 2, shift, np.zeros(2, acc_dtype), np.zeros(1, np.int64), np.zeros((1, 1, 1), np.uint8))))
    calls.append((k_ybr_full_to_rgb, (np.zeros((1, 3), np.uint8), np.zeros((3, 3), np.float32), np.zeros((1, 3), np.uint8))))
    i32, f32s = np.zeros(1, np.int32), np.ones((1, 1), np.float32)
    for img_dtype in (np.uint8, np.uint16):
        for samples in (1, 3):
            calls.append((k_resample, (np.zeros((1, 1, samples), img_dtype), i32, i32 + 1, f32s,
                                       np.zeros((1, samples), np.int32), np.ones((1, samples), np.float32), np.float32(255.0),
                                       np.zeros(samples, np.float32), np.zeros(samples, np.float32), np.zeros((1, 1, samples), img_dtype))))
    for img_dtype in (np.uint8, np.uint16):
        for samples in (1, 3):
            calls.append((k_block_mean, (np.zeros((2, 2, samples), img_dtype), 2, 2, 2, np.zeros(2 * samples, np.uint32),
                                         np.zeros((1, 1, samples), img_dtype))))
    for raw_dtype in (np.uint8, np.uint16, np.uint32):
        for out_dtype in (np.uint8, np.uint16):
            f32 = np.float32(1.0)
            calls.append((k_resample_affine, (np.zeros((1, 1), raw_dtype), raw_dtype(255), raw_dtype(0), f32, f32, f32, f32,
                                              i32, i32 + 1, f32s, np.zeros((1, 1), np.int32), np.ones((1, 1), np.float32),
                                              np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros((1, 1, 1), out_dtype))))
    return calls
