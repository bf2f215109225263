"""Shrinking stored-value frames by whole powers of two (``reduce=k``).

JPEG 2000 and HTJ2K frames are reduced by the codec itself (it stops the inverse wavelet
transform k levels early: far cheaper than a full decode). Everything else, and whatever
levels a codestream does not have, is reduced here: each 2^k x 2^k block of stored values
becomes its mean, rounded half up, so every transfer syntax gives an image of the same size,
``ceil(rows / 2^k) x ceil(columns / 2^k)`` (edge blocks average the pixels they have).
Averaging happens on the values the bits stand for (masked to Bits Stored and sign-extended),
before the modality LUT and the window, as the codec's reduction does. Palette indices cannot be
averaged: a palette image keeps the top-left pixel of each block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .header import PixelSpec

#: The largest reduction offered: 2^8 = 256 times smaller on each side.
MAX_REDUCE = 8


def reduced_size(n: int, k: int) -> int:
    """Rows or columns after ``k`` halvings (what a JPEG 2000 decoder gives at level k)."""
    return -(-n // (1 << k))


def reduce_stored(stored: np.ndarray, spec: PixelSpec, k: int) -> np.ndarray:
    """``stored`` (rows, columns[, samples]) shrunk 2^k times on each side."""
    if k <= 0:
        return stored
    f = 1 << k
    if spec.photometric_interpretation == "PALETTE COLOR":
        return np.ascontiguousarray(stored[::f, ::f])
    starts_r = np.arange(0, stored.shape[0], f)
    starts_c = np.arange(0, stored.shape[1], f)
    if stored.dtype.kind == "f":
        values = stored.astype(np.float64)
    else:
        values = stored.astype(np.int64)
        mask = (1 << spec.bits_stored) - 1
        values &= mask
        if spec.is_signed:
            flip = 1 << (spec.bits_stored - 1)
            values ^= flip
            values -= flip
    sums = np.add.reduceat(np.add.reduceat(values, starts_r, axis=0), starts_c, axis=1)
    rows = np.minimum(f, stored.shape[0] - starts_r)
    cols = np.minimum(f, stored.shape[1] - starts_c)
    counts = np.multiply.outer(rows, cols)
    if stored.ndim == 3:
        counts = counts[:, :, None]
    if stored.dtype.kind == "f":
        return (sums / counts).astype(stored.dtype)
    means = (2 * sums + counts) // (2 * counts)  # round half up, exact in integers
    if spec.is_signed:
        return means.astype(np.dtype(f"i{stored.dtype.itemsize}"))
    return means.astype(np.dtype(f"u{stored.dtype.itemsize}"))
