"""The gallery's thumbnails: made in the worker from each rendered image, one sheet per batch.

A thumbnail is the rendered image shrunk by block means (the ``box_shrink`` kernel) until its
longest side is at most :data:`TILE` pixels: the picture the output file holds, small, with no
second decode (about 14 us for a 512 x 512 slice here, best of 5 x 300 runs). The thumbnails of
a batch's converted inputs are laid out in rows on one JPEG sheet (each tile as wide as it is, in
whole JPEG blocks, at most :data:`COLUMNS` of :data:`TILE` pixels a row: :class:`Sheet`), written
(atomically, through the output root) when the batch ends and before its results are sent, so a
result that names a sheet names a file that is there; the page shows each image as its rectangle of
the sheet. One file per batch instead of one per image: writing a small file (about 0.24 ms here)
costs about as much as rendering a CT slice; a sheet's JPEG encode costs about 10 us per tile.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from .executors import worker_label

__all__ = ["TILE", "COLUMNS", "SHEETS", "thumbnail", "Sheet", "read_thumbnail"]

#: The longest side of a thumbnail, in pixels (the page frames each in a TILE x TILE square).
TILE = 96
#: Tiles per row of a sheet, at most (a tile's place is its own width, in whole JPEG blocks).
COLUMNS = 8
#: A sheet's width, at most.
WIDTH = COLUMNS * TILE
#: Where the sheets go, under the output folder.
SHEETS = "gallery/sheets"
#: JPEG quality of the sheets.
QUALITY = 80


def thumbnail(array: np.ndarray) -> np.ndarray:
    """``array`` (rows, columns[, samples]; uint8 or uint16) as uint8 (rows', columns', samples)
    with its longest side at most :data:`TILE`."""
    img = array if array.ndim == 3 else array[:, :, None]
    if img.dtype == np.uint16:
        shift = 8
    elif img.dtype == np.uint8:
        shift = 0
    else:
        raise ValueError(f"a thumbnail is made of uint8 or uint16 pixels, not {img.dtype}")
    img = np.ascontiguousarray(img)
    rows, cols = img.shape[:2]
    k = max(1, -(-max(rows, cols) // TILE))
    out = np.empty((-(-rows // k), -(-cols // k), img.shape[2]), np.uint8)
    # column sums of k rows: 16 bits hold k 8-bit values up to k = 257 (SIMD lanes twice as wide)
    acc = np.empty(cols * img.shape[2], np.uint16 if shift == 0 and k <= 257 else np.uint32)
    sums = np.empty(out.shape[1] * img.shape[2], np.int64)  # a block row's totals
    kernels.impl().box_shrink(img, k, shift, acc, sums, out)
    return out


class Sheet:
    """The thumbnails of one batch, placed as they are accepted; :meth:`encode` makes the JPEG.

    Tiles go left to right in rows at most :data:`WIDTH` wide, each taking its own width and the
    row its tallest tile's height, both rounded up to whole 8-pixel JPEG blocks (a block never
    holds two images): sixteen 86 x 86 thumbnails of CT slices make a 704 x 176 sheet where a grid
    of 96-pixel cells made 768 x 192 (16 % fewer pixels to code)."""

    def __init__(self) -> None:
        self.tiles: list[np.ndarray] = []
        self.boxes: list[list[int]] = []
        self.windows = False  # a tile is a window stack's: the sheet is coded as RGB (encode)
        self._x = self._y = self._row = 0  # where the next tile goes; the height of its row so far

    def __len__(self) -> int:
        return len(self.tiles)

    def add(self, tiles: list[np.ndarray], windows: bool = False) -> list[list[int]]:
        """Place ``tiles`` (``windows``: of a window stack, each channel a window); return each
        one's rectangle on the sheet: [x, y, width, height]."""
        self.windows = self.windows or windows
        boxes = []
        for tile in tiles:
            height, width = int(tile.shape[0]), int(tile.shape[1])
            if self._x and self._x + _blocks(width) > WIDTH:  # a new row
                self._x, self._y, self._row = 0, self._y + self._row, 0
            box = [self._x, self._y, width, height]
            self._x += _blocks(width)
            self._row = max(self._row, _blocks(height))
            self.tiles.append(tile)
            self.boxes.append(box)
            boxes.append(box)
        return boxes

    def mosaic(self) -> np.ndarray:
        """The sheet's pixels: (rows, columns, 1 or 3 samples) uint8, each tile at its box, zeros between."""
        samples = 3 if any(t.shape[2] == 3 for t in self.tiles) else 1
        width = max(x + _blocks(w) for x, _, w, _ in self.boxes)
        mosaic = np.zeros((self._y + self._row, width, samples), np.uint8)
        for tile, (x, y, w, h) in zip(self.tiles, self.boxes):
            mosaic[y : y + h, x : x + w] = tile  # a gray tile fills every channel
        return mosaic

    def encode(self) -> bytes:
        from ..encoders import get_encoder, stack_options

        mosaic = self.mosaic()
        samples = mosaic.shape[2]
        jpeg = get_encoder("jpeg")
        if samples == 1:
            return jpeg.encode(mosaic[:, :, 0], quality=QUALITY)
        # a stack's channels coded as they are (encoders/jpeg.py): with YCbCr 4:2:0 a thumbnail of
        # CT_small's brain/subdural/bone stack was off by 10 / 5 / 17 levels on average, now 3 / 3 / 2
        options = stack_options(jpeg, 3) if self.windows else {}
        return jpeg.encode(mosaic, quality=QUALITY, **options)

    def clear(self) -> None:
        self.tiles.clear()
        self.boxes.clear()
        self.windows = False
        self._x = self._y = self._row = 0


def _blocks(pixels: int) -> int:
    """``pixels`` rounded up to whole 8-pixel JPEG blocks."""
    return -(-pixels // 8) * 8


def sheet_prefix(run_start_ns: int) -> str:
    """What the names of one run's sheets start with."""
    return f"{run_start_ns:x}-"


def sheet_name(run_start_ns: int, seq: int, tag: str = "") -> str:
    """A sheet's name: unique per run (its start), worker (pid, and ``tag`` on a cluster) and batch (``seq``)."""
    return f"{SHEETS}/{sheet_prefix(run_start_ns)}{worker_label(tag)}-{seq}.jpg"


def read_thumbnail(data: bytes, name: str) -> np.ndarray:
    """The thumbnail of an output file already written (``fastdcm gallery`` on a run made
    without ``--gallery``): PNG or JPEG bytes (a JPEG is decoded at a reduced scale), or ``.npy``.
    Raises ValueError (or OSError from Pillow) for bytes that are not such an image."""
    import io

    if name.endswith(".npy"):
        return thumbnail(np.load(io.BytesIO(data), allow_pickle=False))
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (TILE, TILE))  # libjpeg's DCT scaling: 1/2 .. 1/8 of the size, decoded
        if im.mode not in ("L", "RGB", "I;16"):
            im = im.convert("I;16" if im.mode.startswith("I") else "RGB")
        array = np.asarray(im)
    if array.dtype != np.uint8:
        array = array.astype(np.uint16)
    return thumbnail(array)
