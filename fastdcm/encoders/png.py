"""PNG: a fast default ("png") and Pillow's smallest output ("png-small").

"png" writes the PNG framing itself (signature, IHDR, IDAT, IEND; PNG spec sections
5 and 11) around ISA-L's deflate at level 1 (python-isal), after the Up filter (type 2)
computed with one numpy subtraction.

Measured on 50 windowed 512x512 slices of the benchmark CT archive and 100 renders of the
mixed archive (whole deflate call, this 2-core EPYC): ISA-L level 1 0.32 ms per CT slice,
files 1.15x (median) and at most 1.23x Pillow's compress_level=6 size; zlib-ng level 2
(the first choice) 1.18 ms, at most 1.20x; zlib-ng level 1 1.4 ms, up to 1.66x on CT.
Pillow at level 6 takes about 11 ms. The price of ISA-L's speed is content with exact
long-range repeats (a CT slice tiled 4x4, some secondary captures), where its files reach
1.4-1.9x Pillow's: "png-small" is there for users who want the smallest files.
Its bytes are not promised to repeat across machines or processes (the pixels always do): a CI run
wrote the same CT slice as two different valid deflate streams in a Dask worker and in the test's
process. The cause was not found: on the development VM ISA-L gave one stream whatever was varied
(input alignment, heap and stack garbage, threads); ISA-L has an implementation per instruction set.
Other candidates at their best settings: imagecodecs' libpng 4.5-14x Pillow's speed,
OpenCV 1.5-6.3x, Pillow at level 1 1.4-5.4x (see benchmarks/bench_encoders.py).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from fastdcm.encoders._base import Encoder, require
from fastdcm.errors import EncodeError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_IDAT_CRC = zlib.crc32(b"IDAT")
_MAX_CHUNK = 2**31 - 1  # a chunk's length field is at most 2**31 - 1 (PNG spec 5.3)
_FILTER_UP = 2
_DEFLATE_LEVEL = 1  # ISA-L level 1: see the module docstring for the measurements


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _ihdr(array: np.ndarray) -> bytes:
    bit_depth = 8 * array.dtype.itemsize
    color_type = 0 if array.ndim == 2 else 2  # greyscale or truecolour
    height, width = array.shape[:2]
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))


def filter_up(array: np.ndarray) -> np.ndarray:
    """The filtered scanlines (PNG spec 9.2): each row is its filter byte (2, Up) followed
    by the row's bytes minus the bytes of the row above, modulo 256; the first row is kept
    as it is (the row above it counts as zeros). 16-bit samples are big-endian.
    """
    if array.dtype.itemsize == 2:  # PNG stores 16-bit samples most significant byte first
        array = array.astype(">u2", order="C").view(np.uint8)
    rows = array.reshape(array.shape[0], -1)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = _FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


class FastPngEncoder(Encoder):
    """PNG, lossless, 8 or 16 bits, greyscale or RGB: Up filter + ISA-L deflate level 1."""

    name = "png"
    extension = ".png"
    requires = (("isal.isal_zlib", "isal"),)

    def _encode(self, array: np.ndarray, quality: int) -> bytes:
        isal_zlib = require("isal.isal_zlib", "isal", self.name)
        data = isal_zlib.compress(filter_up(array), _DEFLATE_LEVEL)
        parts = [_SIGNATURE, _ihdr(array)]
        view = memoryview(data)
        for start in range(0, len(data), _MAX_CHUNK):
            piece = view[start : start + _MAX_CHUNK]
            parts += (
                struct.pack(">I", len(piece)) + b"IDAT",
                piece,
                struct.pack(">I", isal_zlib.crc32(piece, _IDAT_CRC)),  # ISA-L: 200 kB in 3.5 us, zlib 47
            )
        parts.append(_IEND)
        return b"".join(parts)


class SmallPngEncoder(Encoder):
    """PNG through Pillow at its best compression (level 9, optimize): slow, smallest files.

    Pillow cannot write 16-bit RGB; such images raise EncodeError (use "png").
    """

    name = "png-small"
    extension = ".png"
    requires = (("PIL.Image", "pillow"),)

    def check(self, array: np.ndarray) -> None:
        super().check(array)
        if array.ndim == 3 and array.dtype.itemsize == 2:
            raise EncodeError(
                "png-small: Pillow cannot write 16-bit RGB PNG; use the 'png' encoder for it"
            )

    def _encode(self, array: np.ndarray, quality: int) -> bytes:
        image_mod = require("PIL.Image", "pillow", self.name)
        buffer = io.BytesIO()
        image_mod.fromarray(array).save(buffer, "PNG", compress_level=9, optimize=True)
        return buffer.getvalue()
