"""Resizing the rendered image for training (``--size``, ``--fit``, ``--max-size``).

The geometry
------------
- ``size=N``: the longest side becomes N, the aspect ratio kept (shrinks or enlarges);
- ``max_size=N``: the same, but only for images whose longest side is above N (only shrinks);
- ``size=(W, H)`` (``--size WxH``) with ``fit``:

  - ``pad`` (the default): scaled to fit inside W x H, aspect kept, centred on a canvas of
    value 0 (black after the VOI and MONOCHROME1 inversion; for colour, black); an odd pixel
    left over goes to the right or bottom;
  - ``crop``: scaled to cover W x H, aspect kept, the centre W x H kept (an odd pixel cut off at
    the right or bottom);
  - ``stretch``: scaled to exactly W x H, each axis on its own.

Scaled sizes are rounded to the nearest pixel (at least 1). Every output records the mapping back
to its frame: ``output = frame * scale + offset`` per axis (rows, columns), with ``scale`` the
output pixels per frame pixel and ``offset`` the padding (positive) or cropping (negative), so
labels drawn on the frame (boxes, points) can be carried over.

The filter
----------
Shrinking averages areas: each output pixel is the mean of the frame pixels it covers, partly
covered ones weighted by the part covered (OpenCV's ``INTER_AREA``; for a whole factor, the
plain block mean of Pillow's ``reduce``): antialiased, no pixel skipped. Enlarging is bilinear
with pixel centres aligned (OpenCV's ``INTER_LINEAR``, Pillow's ``BILINEAR``). Each axis is
resampled on its own, in one compiled pass (``kernels.resample``) over the uint8/uint16 image
right after the VOI kernel, with one input row of float32 scratch: no float copy of the frame.
Where the VOI is a proven line (CT's rescale + linear window: ``plan.affine``) on a grey frame,
the window is applied as each input row is read into the sums (``kernels.resample_affine``, the
same numbers), which measured faster than the two passes (84 against 95 us for a 512x512 slice
to 256): the full-size image is never written. Whole power-of-two factors in both axes (512 ->
256, 4096 x 3328 -> 1024 x 832; at most 256 pixels a block) take block means instead
(``kernels.block_mean``): the same numbers, since those weights make the float32 sums exact, 2-3x
faster than either (a CT slice 512 -> 256, window + resize: 129 -> 69 us), so the VOI kernel
writes the full-size image first there.
The tests hold it to OpenCV within 1 on every test file.

The resize works on the rendered image, after the VOI, whatever the transfer syntax: a JPEG 2000
file and its uncompressed twin give the same picture. (Decoding JPEG 2000 at a reduced resolution
level instead, ``reduce``, averages stored values before the window: at the edge of bone in a
brain window that differs from averaging the windowed image by up to 251 grey levels, measured
on 693_J2KR.dcm. ``--reduce K`` stays the explicit choice of that speed; with ``--size`` too,
the reduced frame is then resized.)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from .errors import InvalidOptionError

__all__ = ["Fit", "parse_geometry", "ResizePlan", "resize_plan", "apply", "apply_line"]


class Fit(str, Enum):
    """How an image goes into a W x H box (``--fit``)."""

    PAD = "pad"
    CROP = "crop"
    STRETCH = "stretch"


#: The largest side accepted for a target (a typo such as 51200 should not allocate gigabytes).
MAX_SIDE = 65535

_GEOMETRY = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


def parse_geometry(value: Any, what: str = "size") -> int | tuple[int, int] | None:
    """``512`` / ``"512"`` -> 512 (the longest side); ``"512x384"`` / ``(512, 384)`` -> (width,
    height); None stays None. InvalidOptionError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidOptionError(f"{what} must be a number of pixels or WIDTHxHEIGHT, not {value!r}")
    if isinstance(value, (int, np.integer)):
        sides: tuple[int, ...] = (int(value),)
    elif isinstance(value, str):
        m = _GEOMETRY.match(value)
        if not m:
            raise InvalidOptionError(f"{what} must look like 512 or 512x384 (WIDTHxHEIGHT), not {value!r}")
        sides = tuple(int(g) for g in m.groups() if g is not None)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        sides = (int(value[0]), int(value[1]))
    else:
        raise InvalidOptionError(f"{what} must be a number of pixels or WIDTHxHEIGHT, not {value!r}")
    if not all(1 <= s <= MAX_SIDE for s in sides):
        raise InvalidOptionError(f"{what}: every side must be from 1 to {MAX_SIDE} pixels, not {value!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


@dataclass(frozen=True, eq=False)
class _Axis:
    """One axis' taps: output i = sum_j weights[i, j] * input[starts[i] + j], j < counts[i]."""

    starts: np.ndarray  # int32
    counts: np.ndarray  # int32
    weights: np.ndarray  # float32, (outputs, max count)

    def window(self, first: int, n: int) -> "_Axis":
        """Outputs first .. first + n - 1 only (the crop)."""
        return _Axis(self.starts[first:first + n], self.counts[first:first + n], self.weights[first:first + n])

    @functools.lru_cache(maxsize=4)
    def flat_taps(self, samples: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        """(taps, weights), each (max count, outputs * samples): for every tap k, the index into a
        row of ``samples`` interleaved samples and its weight (0 past an output's own count)."""
        k = np.arange(self.weights.shape[1])
        live = k[None, :] < self.counts[:, None]
        columns = np.minimum(self.starts[:, None] + k[None, :], n_in - 1)  # (outputs, taps)
        taps = columns[:, None, :] * samples + np.arange(samples)[None, :, None]  # (outputs, samples, taps)
        weights = np.broadcast_to(np.where(live, self.weights, np.float32(0.0))[:, None, :], taps.shape)
        flat = lambda a, dtype: np.ascontiguousarray(a.reshape(-1, a.shape[2]).T, dtype=dtype)  # noqa: E731
        return flat(taps, np.int32), flat(weights, np.float32)


@functools.lru_cache(maxsize=64)
def _axis(n_in: int, n_out: int) -> _Axis:
    """Area weights when shrinking (each input pixel by the part of the output pixel it covers,
    in exact integer arithmetic: pixel i spans [i * n_out, (i + 1) * n_out) and output r spans
    [r * n_in, (r + 1) * n_in) in units of 1 / (n_in * n_out)); bilinear ones when enlarging."""
    r = np.arange(n_out, dtype=np.int64)
    if n_out <= n_in:
        starts = (r * n_in) // n_out
        ends = -((-(r + 1) * n_in) // n_out)
        counts = ends - starts
        taps = starts[:, None] + np.arange(int(counts.max()))[None, :]
        lo = np.maximum(taps * n_out, (r * n_in)[:, None])
        hi = np.minimum((taps + 1) * n_out, ((r + 1) * n_in)[:, None])
        weights = np.clip(hi - lo, 0, None) / n_in
    else:
        src = (r + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(src).astype(np.int64)
        frac = src - i0
        low = i0 < 0
        high = i0 >= n_in - 1
        i0 = np.clip(i0, 0, n_in - 1)
        frac = np.where(low | high, 0.0, frac)
        starts = i0
        counts = np.where(frac > 0, 2, 1)
        weights = np.stack([1.0 - frac, frac], axis=1)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    for a in (starts, counts, weights):
        a.flags.writeable = False
    return _Axis(starts.astype(np.int32), counts.astype(np.int32), weights)


@dataclass(frozen=True, eq=False)
class ResizePlan:
    """How one frame size becomes the output: the image is resampled to ``scaled`` (rows,
    columns), of which the part ``[crop[0]:, crop[1]:]`` of ``(height, width)`` is kept (crop),
    or put at ``pad`` (top, left) on a zero canvas of (height, width)."""

    height: int
    width: int
    scaled: tuple[int, int]
    pad: tuple[int, int]
    crop: tuple[int, int]
    rows: _Axis
    cols: _Axis
    identity: bool  # the frame is already that size: nothing to do
    block: tuple[int, int] | None = None  # (ky, kx): whole power-of-two factors, block means (kernels.block_mean)

    def mapping(self, frame_rows: int, frame_cols: int) -> dict[str, list[float]]:
        """``output = frame * scale + offset`` per axis (rows, columns), for a frame of that size
        (the full-size frame: a codec's reduced level is still the same picture)."""
        scale = [self.scaled[0] / frame_rows, self.scaled[1] / frame_cols]
        offset = [self.pad[0] - self.crop[0], self.pad[1] - self.crop[1]]
        return {"scale": [round(s, 9) for s in scale], "offset": offset}


def _target(rows: int, cols: int, size: Any, fit: Fit, max_size: int | None) -> tuple[int, int, int, int] | None:
    """(height, width, scaled rows, scaled columns), or None: the frame is left as it is."""
    if max_size is not None:
        if max(rows, cols) <= max_size:
            return None
        size, fit = max_size, Fit.PAD
    if size is None:
        return None
    if isinstance(size, int):
        s = size / max(rows, cols)
        sr, sc = max(1, round(rows * s)), max(1, round(cols * s))
        if rows >= cols:
            sr = size
        if cols >= rows:
            sc = size
        return sr, sc, sr, sc
    width, height = size
    if fit is Fit.STRETCH:
        return height, width, height, width
    s = (min if fit is Fit.PAD else max)(width / cols, height / rows)
    sr, sc = max(1, round(rows * s)), max(1, round(cols * s))
    if fit is Fit.PAD:
        sr, sc = min(sr, height), min(sc, width)
    else:
        sr, sc = max(sr, height), max(sc, width)
    return height, width, sr, sc


@functools.lru_cache(maxsize=64)
def resize_plan(rows: int, cols: int, size: Any, fit: Fit, max_size: int | None) -> ResizePlan | None:
    """The plan for a frame of rows x columns, or None when no resizing is asked for (or
    ``max_size`` is not exceeded)."""
    target = _target(rows, cols, size, Fit(fit), max_size)
    if target is None:
        return None
    height, width, sr, sc = target
    src_rows, src_cols = rows, cols
    pad = ((height - sr) // 2, (width - sc) // 2) if sr <= height and sc <= width else (0, 0)
    crop = ((sr - height) // 2, (sc - width) // 2) if sr >= height and sc >= width else (0, 0)
    ry, rx = _axis(src_rows, sr), _axis(src_cols, sc)
    if crop != (0, 0):
        ry, rx = ry.window(crop[0], height), rx.window(crop[1], width)
    identity = (sr, sc) == (src_rows, src_cols) and (height, width) == (sr, sc)
    block = None
    ky, kx = src_rows // sr, src_cols // sc
    if (not identity and crop == (0, 0) and (ky * sr, kx * sc) == (src_rows, src_cols)
            and _power_of_two(ky) and _power_of_two(kx) and ky * kx <= MAX_BLOCK):
        block = (ky, kx)
    return ResizePlan(height, width, (sr, sc), pad, crop, ry, rx, identity, block)


#: The largest block (ky * kx) of the block-mean path: up to it the float32 sums of ``resample`` with
#: weights 1/ky, 1/kx are exact for 16-bit samples (65535 * 256 < 2^24), so both give the same numbers.
MAX_BLOCK = 256


def _power_of_two(k: int) -> bool:
    return k >= 1 and k & (k - 1) == 0


def apply(image: np.ndarray, plan: ResizePlan, ymax: int) -> np.ndarray:
    """``image`` (rows, columns[, 3]; uint8 or uint16, the rendered frame) resized by ``plan``."""
    from . import kernels

    if plan.identity:
        return image
    src = np.ascontiguousarray(image)
    grey = src.ndim == 2
    img3 = src.reshape(src.shape[0], src.shape[1], 1 if grey else src.shape[2])
    ry, rx = plan.rows, plan.cols
    samples = img3.shape[2]
    if plan.block is not None:  # whole power-of-two factors: block means, the same numbers
        ky, kx = plan.block
        out = np.empty((ry.starts.shape[0], rx.starts.shape[0], samples), src.dtype)
        acc = np.empty(img3.shape[1] * samples, np.uint32)
        kernels.impl().block_mean(img3, ky, kx, (ky * kx).bit_length() - 1, acc, out)
        out = _placed(out, plan)
        return out[:, :, 0] if grey else out
    tx, wx = rx.flat_taps(samples, img3.shape[1])
    out = np.empty((ry.starts.shape[0], rx.starts.shape[0], samples), src.dtype)
    acc = np.empty(img3.shape[1] * samples, np.float32)
    vbuf = np.empty(tx.shape[1], np.float32)
    kernels.impl().resample(img3, ry.starts, ry.counts, ry.weights, tx, wx, np.float32(ymax), acc, vbuf, out)
    out = _placed(out, plan)
    return out[:, :, 0] if grey else out


def apply_line(raw: np.ndarray, mask: Any, flip: Any, line: tuple, plan: ResizePlan, ymax: int, dtype: Any) -> np.ndarray:
    """The frame of stored values ``raw`` (rows, columns; unsigned) windowed by a plan's proven
    line (``plan.affine``: j0, a, b) and resized in one pass (``kernels.resample_affine``): the
    same image as the window, then :func:`apply`, without the full-size image in between."""
    from . import kernels

    ry, rx = plan.rows, plan.cols
    tx, wx = rx.flat_taps(1, raw.shape[1])
    out = np.empty((ry.starts.shape[0], rx.starts.shape[0], 1), dtype)
    acc = np.empty(raw.shape[1], np.float32)
    vbuf = np.empty(tx.shape[1], np.float32)
    j0, a, b = line
    kernels.impl().resample_affine(raw, mask, flip, j0, a, b, np.float32(ymax), ry.starts, ry.counts, ry.weights,
                                   tx, wx, acc, vbuf, out)
    return _placed(out, plan)[:, :, 0]


def _placed(out: np.ndarray, plan: ResizePlan) -> np.ndarray:
    """The resampled image on its canvas (pad: centred on zeros)."""
    if plan.pad == (0, 0) and out.shape[:2] == (plan.height, plan.width):
        return out
    canvas = np.zeros((plan.height, plan.width, out.shape[2]), out.dtype)
    top, left = plan.pad
    canvas[top:top + out.shape[0], left:left + out.shape[1]] = out
    return canvas
