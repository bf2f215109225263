"""The VOI functions of RENDERING.md section 2.2 in plain numpy, and their mode codes.

This is the one definition of the formulas: plan.py builds lookup tables with it, and it
is the numpy twin that the arithmetic kernels (``_voi`` / ``_quantize``) must match bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

MODE_LINEAR = 0  # PS3.3 C.11.2.1.2.1, (center, width), width >= 1
MODE_LINEAR_EXACT = 1  # PS3.3 C.11.2.1.3.2, width > 0
MODE_SIGMOID = 2  # PS3.3 C.11.2.1.3.1, width > 0
MODE_SCALE = 3  # [low, high] -> [0, ymax] linearly (min-max and "none"); empty range -> 0
MODE_LUT = 4  # a VOI LUT already scaled to 0..ymax (arithmetic path only)

MODE_NAMES = {
    MODE_LINEAR: "LINEAR",
    MODE_LINEAR_EXACT: "LINEAR_EXACT",
    MODE_SIGMOID: "SIGMOID",
    MODE_SCALE: "SCALE",
    MODE_LUT: "LUT",
}


def voi_values(x: np.ndarray, mode: int, p1: float, p2: float, ymax: float) -> np.ndarray:
    """VOI output (float64, before rounding) for modality values ``x``."""
    x = np.asarray(x, dtype=np.float64)
    # Each line multiplies before it divides: where the exact output is a half (k + 0.5),
    # every step is exact in float64, so round half up rounds it up, as RENDERING.md says
    # (``((x - c) / w + 0.5) * ymax`` lands just below some halves).
    if mode == MODE_LINEAR:
        lower = p1 - 0.5 - (p2 - 1.0) / 2.0
        upper = p1 - 0.5 + (p2 - 1.0) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            mid = (x - (p1 - 0.5)) * ymax / (p2 - 1.0) + ymax / 2.0
        return np.where(x <= lower, 0.0, np.where(x > upper, ymax, mid))
    if mode == MODE_LINEAR_EXACT:
        mid = (x - p1) * ymax / p2 + ymax / 2.0
        return np.where(x <= p1 - p2 / 2.0, 0.0, np.where(x > p1 + p2 / 2.0, ymax, mid))
    if mode == MODE_SIGMOID:
        with np.errstate(over="ignore"):
            return ymax / (1.0 + np.exp(-4.0 * (x - p1) / p2))
    if mode == MODE_SCALE:
        if p2 > p1:
            return (x - p1) * ymax / (p2 - p1)
        return np.zeros_like(x)
    raise ValueError(f"unknown VOI mode {mode}")


def quantize(y: np.ndarray, ymax: float, invert: bool) -> np.ndarray:
    """Round half up, clamp to 0..ymax, NaN -> 0, then invert: float64 of integral values."""
    with np.errstate(invalid="ignore"):
        q = np.clip(np.floor(np.asarray(y, dtype=np.float64) + 0.5), 0.0, ymax)
    q = np.where(np.isnan(q), 0.0, q)
    return ymax - q if invert else q


def window_is_valid(mode: int, center: float, width: float) -> bool:
    """RENDERING.md 2.2: width >= 1 for LINEAR, > 0 for the others, all finite."""
    if not (math.isfinite(center) and math.isfinite(width)):
        return False
    return width >= 1.0 if mode == MODE_LINEAR else width > 0.0
