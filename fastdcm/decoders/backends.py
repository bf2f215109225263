"""The decoding backends: one small record each, as pydicom's pixel plugins declare theirs.

A backend decodes one frame's codestream (bytes or a memoryview of the file) to the stored
values: shape (rows, columns) for one sample, (rows, columns, 3) RGB for three. Colour is
converted once, whichever backend decodes: a backend that applies the JPEG / JPEG 2000 colour
transform itself reports RGB, the others hand YBR_FULL data to :func:`ybr_to_rgb` (pydicom's
conversion, bit for bit, compiled).
Each backend imports its package on first use, so a missing package costs nothing until asked for.
"""

from __future__ import annotations

import functools
import importlib
import io
import importlib.util
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import kernels
from ..fastheader import (
    HTJ2K,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from ..header import PixelSpec

JPEG = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
JPEG_LS = (JPEGLSLossless, JPEGLSNearLossless)
J2K = (JPEG2000Lossless, JPEG2000)
HT = (HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
RLE = (RLELossless,)

#: Short names for groups of transfer syntaxes, for ``--decoder jpeg2000=pylibjpeg``.
FAMILIES: dict[str, tuple[str, ...]] = {
    "jpeg": JPEG,
    "jpegls": JPEG_LS,
    "jpeg2000": J2K,
    "htj2k": HT,
    "rle": RLE,
}
YBR = ("YBR_FULL", "YBR_FULL_422")
_RGB_IDS = ([82, 71, 66], [114, 103, 98])  # component ids 'RGB' / 'rgb'


@dataclass(frozen=True)
class Backend:
    """One way of decoding some transfer syntaxes."""

    name: str
    syntaxes: tuple[str, ...]
    modules: tuple[str, ...]  # import names that must be present
    install: str  # the pip command that brings them
    decode: Callable[[Any, PixelSpec], np.ndarray]
    max_bits: int = 16  # the widest Bits Allocated it decodes
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
    note: str = ""
    #: Decodes at a reduced resolution level, (data, spec, k) -> 2^k times smaller; None: cannot.
    reduce: Callable[[Any, PixelSpec, int], np.ndarray] | None = None

    @property
    def available(self) -> bool:
        return _installed(self.modules)

    def supports(self, spec: PixelSpec) -> bool:
        return self.supports_pixels(spec.bits_allocated, spec.photometric_interpretation)

    def supports_pixels(self, bits_allocated: int, photometric: str) -> bool:
        return bits_allocated <= self.max_bits and photometric in self.photometric


@functools.lru_cache(maxsize=None)
def _installed(modules: tuple[str, ...]) -> bool:
    """Whether every module can be imported (looked up once per process, not imported)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _module(name: str) -> Any:
    """The backend's module (imported on first use; then from ``sys.modules``, ~1 us less a frame)."""
    module = sys.modules.get(name)
    return module if module is not None else importlib.import_module(name)


def interleave(planes: np.ndarray) -> np.ndarray:
    """Colour planes (samples, rows, columns) as one C-contiguous (rows, columns, samples) array.

    A plane at a time into a strided destination: numpy copies a transposed view
    (``ascontiguousarray(planes.transpose(1, 2, 0))``) element by element with the source's
    plane stride innermost, 6-7x slower (a 640 x 480 RGB frame: 1.9-3.1 ms against 0.32-0.41 ms here)."""
    out = np.empty(planes.shape[1:] + planes.shape[:1], planes.dtype)
    for c in range(planes.shape[0]):
        out[..., c] = planes[c]
    return out


def _shaped(arr: np.ndarray, spec: PixelSpec) -> np.ndarray:
    """A decoded frame as (rows, columns[, 3]); colour planes last."""
    if spec.samples_per_pixel == 3 and arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[2] != 3:
        arr = interleave(arr)
    return arr


#: pydicom's YBR_FULL -> RGB matrix (``pydicom.pixels.processing``), float32 as there.
_YBR_TO_RGB = np.asarray(
    [[1.000, 1.000, 1.000], [0.000, -0.114 * 1.772 / 0.587, 1.772], [1.402, -0.299 * 1.402 / 0.587, 0.000]],
    dtype=np.float32,
)


def ybr_to_rgb(arr: np.ndarray) -> np.ndarray:
    """YBR_FULL -> RGB as PS3.3 C.7.6.3.1.2 defines it, bit for bit as pydicom converts it
    (``kernels.ybr_full_to_rgb``: one pass, no float copy of the frame)."""
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        from pydicom.pixels import convert_color_space  # (its error for what it cannot convert)

        return convert_color_space(np.ascontiguousarray(arr), "YBR_FULL", "RGB")
    src = np.ascontiguousarray(arr)
    out = np.empty(src.shape, np.uint8)
    kernels.impl().ybr_full_to_rgb(src.reshape(-1, 3), _YBR_TO_RGB, out.reshape(-1, 3))
    return out


def jpeg_is_ybr(data: Any, spec: PixelSpec) -> bool:
    """Whether a 3-component JPEG holds YCbCr, decided as pydicom decides it: component ids
    'R','G','B' mean RGB, a JFIF marker means YCbCr, else the Photometric Interpretation says."""
    ids, app = jpeg_markers(data)
    if ids in _RGB_IDS:
        return False
    if any(v.startswith(b"JFIF") for v in app.values()):
        return True
    return spec.photometric_interpretation in YBR


#: Start of frame markers (JPEG's SOF0-15 but DHT, JPG and DAC; JPEG-LS's SOF55) and APP0-15.
_SOF = frozenset(bytes((0xFF, m)) for m in (*range(0xC0, 0xD0), 0xF7) if m not in (0xC4, 0xC8, 0xCC))
_APP = frozenset(bytes((0xFF, m)) for m in range(0xE0, 0xF0))


def jpeg_markers(data: Any) -> tuple[list[int] | None, dict[bytes, bytes]]:
    """(the component ids of the frame header, the last APPn segment's payload by marker) of a JPEG
    or JPEG-LS codestream, read as pydicom's ``_get_jpg_parameters`` reads them (a test holds the two to
    each other on every test file, whole and cut): segment by segment from the SOI to the first
    SOF (for JPEG-LS, on to its SOS); a stream it cannot read that far gives (None, {}). Not pydicom's
    own function: that one is private, and importing pydicom costs a worker ~0.17 s on its first
    colour JPEG."""
    src = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    try:
        if bytes(src[0:2]) != b"\xff\xd8":
            return None, {}
        offset, app = 2, {}
        while (marker := bytes(src[offset : offset + 2])) not in _SOF:
            length = _BE16.unpack(src[offset + 2 : offset + 4])[0]
            if marker in _APP:
                app[marker] = bytes(src[offset + 4 : offset + 2 + length])
            offset += length + 2
        _SOF_HEAD.unpack(src[offset + 4 : offset + 9])  # precision, rows, columns (as pydicom reads them)
        ids = [src[offset + 10 + 3 * i] for i in range(src[offset + 9])]
        if marker == b"\xff\xf7":  # JPEG-LS: pydicom goes on to the scan header's NEAR and ILV
            offset += 10 + 3 * len(ids)
            while bytes(src[offset : offset + 2]) != b"\xff\xda":
                offset += _BE16.unpack(src[offset + 2 : offset + 4])[0] + 2
            offset += 5 + src[offset + 4] * 2
            if offset + 1 >= len(src):  # (NEAR and ILV: a stream cut before them reads as nothing, as there)
                return None, {}
    except (IndexError, struct.error):
        return None, {}
    return ids, app


_SOF_HEAD = struct.Struct(">BHH")
_BE16 = struct.Struct(">H")


def _colour(arr: np.ndarray, spec: PixelSpec) -> np.ndarray:
    """Convert a backend's untransformed YBR output to RGB."""
    if spec.samples_per_pixel == 3 and spec.photometric_interpretation in YBR:
        return ybr_to_rgb(arr)
    return arr


# --------------------------------------------------------------------------- imagecodecs


def _ic_jpeg(data: Any, spec: PixelSpec) -> np.ndarray:
    ic = _module("imagecodecs")
    if spec.samples_per_pixel == 3:
        if jpeg_is_ybr(data, spec):
            return ic.jpeg8_decode(data, colorspace="YCbCr", outcolorspace="RGB")
        return ic.jpeg8_decode(data, colorspace="RGB", outcolorspace="RGB")
    return ic.jpeg8_decode(data)


def _ic_jpegls(data: Any, spec: PixelSpec) -> np.ndarray:
    return _colour(_shaped(_module("imagecodecs").jpegls_decode(data), spec), spec)


#: The variable that sets how many threads one frame's decode may use (OpenJPEG's own).
THREADS_ENV = "FASTDCM_DECODE_THREADS"
#: A JPEG 2000 codestream of at least this many bytes is decoded with :func:`decode_threads` threads;
#: below it starting them costs more than they save. Measured one thread against two on this 2-core
#: VM, OpenJPEG 2.5 through imagecodecs: 30 kB (GDCMJ2K_TextGBR, 400x400 RGB) 10.3 -> 44.9 ms, 57 kB
#: (US1_J2KI) 19.2 -> 19.0 ms, 105-152 kB 1.3-1.6x faster, 830 kB (1760x1760) 160 -> 94 ms, 4.3 MB
#: (1955x1841) 0.68-0.76 -> 0.35-0.39 s.
THREADED_J2K_BYTES = 64 << 10
#: At most this many threads by default (OpenJPEG's gain flattens; a process is rarely alone).
MAX_DEFAULT_THREADS = 8


def decode_threads() -> int:
    """The threads one frame's decode may use: ``FASTDCM_DECODE_THREADS`` when it is a whole
    number >= 1, else the CPUs this process may run on (at most :data:`MAX_DEFAULT_THREADS`). The
    process pool gives each worker its share (executors/process.py), a Dask worker 1."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) >= 1:
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_DEFAULT_THREADS))


def _ic_jpeg2k(data: Any, spec: PixelSpec) -> np.ndarray:
    # OpenJPEG applies the codestream's colour transform: YBR_ICT / YBR_RCT come back RGB.
    threads = decode_threads() if len(data) >= THREADED_J2K_BYTES else 1
    return _colour(_shaped(_module("imagecodecs").jpeg2k_decode(data, numthreads=threads), spec), spec)


def _ic_htj2k(data: Any, spec: PixelSpec) -> np.ndarray:
    return _colour(_shaped(_module("imagecodecs").htj2k_decode(data), spec), spec)


def _ic_rle(data: Any, spec: PixelSpec) -> np.ndarray:
    dtype = np.dtype(f"u{spec.bits_allocated // 8}")
    raw = _module("imagecodecs").dicomrle_decode(data, dtype)
    return _colour(_rle_array(raw, dtype, spec), spec)


def _rle_array(raw: Any, dtype: np.dtype, spec: PixelSpec) -> np.ndarray:
    """RLE segments decode to planes (PS3.5 G.2): (samples, rows, columns) -> (rows, columns[, 3])."""
    count = spec.rows * spec.columns * spec.samples_per_pixel
    flat = np.frombuffer(raw, dtype=dtype)
    if flat.size < count:
        raise ValueError(f"the RLE data decodes to {flat.size} values, the header needs {count}")
    flat = flat[:count]
    if spec.samples_per_pixel == 1:
        return flat.reshape(spec.rows, spec.columns)
    return interleave(flat.reshape(3, spec.rows, spec.columns))


# --------------------------------------------------------------------------- pydicom's plugins' libraries


def _libjpeg_jpeg(data: Any, spec: PixelSpec) -> np.ndarray:
    arr = _module("libjpeg").decode(bytes(data))  # no colour transform: the components as coded
    if spec.samples_per_pixel == 3 and jpeg_is_ybr(data, spec):
        return ybr_to_rgb(arr)
    return arr


def _libjpeg_jpegls(data: Any, spec: PixelSpec) -> np.ndarray:
    return _colour(_module("libjpeg").decode(bytes(data)), spec)


def _openjpeg(data: Any, spec: PixelSpec) -> np.ndarray:
    return _colour(_shaped(_module("openjpeg").decode(bytes(data)), spec), spec)


def _pyjpegls(data: Any, spec: PixelSpec) -> np.ndarray:
    arr = _module("jpeg_ls").decode(np.frombuffer(data, np.uint8))
    return _colour(_shaped(arr, spec), spec)


def _pylibjpeg_rle(data: Any, spec: PixelSpec) -> np.ndarray:
    raw = _module("rle").decode_pixel_data(
        bytes(data), version=2, rows=spec.rows, columns=spec.columns,
        samples_per_pixel=spec.samples_per_pixel, bits_allocated=spec.bits_allocated, byteorder="<",
    )
    return _colour(_rle_array(raw, np.dtype(f"<u{spec.bits_allocated // 8}"), spec), spec)


def _pydicom_rle(data: Any, spec: PixelSpec) -> np.ndarray:
    from pydicom.pixels.decoders.rle import _rle_decode_frame

    # The segments are most significant first in the stream; the bytes come back little endian.
    raw = _rle_decode_frame(bytes(data), spec.rows, spec.columns, spec.samples_per_pixel, spec.bits_allocated)
    return _colour(_rle_array(raw, np.dtype(f"<u{spec.bits_allocated // 8}"), spec), spec)


# --------------------------------------------------------------------------- Pillow (OpenJPEG)


def _pillow_j2k(data: Any, spec: PixelSpec, level: int = 0) -> np.ndarray:
    """JPEG 2000 / HTJ2K through Pillow's OpenJPEG, at resolution level ``level`` (0: full size).

    Pillow scales samples to the mode's width (``(value + 2^(p-1) if signed) << (8 or 16 - p)``
    for precision p); that is undone here from the codestream's SIZ marker, so the result is the
    stored values as every other backend returns them."""
    from PIL import Image as PILImage
    from pydicom.pixels.utils import get_j2k_parameters

    head = bytes(data[:4096])
    start = head.find(b"\xff\x4f\xff\x51")  # SOC + SIZ: the codestream (inside a JP2 file's boxes, too)
    params = get_j2k_parameters(head[start:]) if start >= 0 else {}
    precision, signed = params.get("precision"), params.get("is_signed")
    if not precision or precision > 16:
        raise ValueError(f"Pillow decodes JPEG 2000 of up to 16 bits, not precision {precision!r}")
    with PILImage.open(io.BytesIO(data)) as im:
        if level:
            im.reduce = level  # OpenJPEG's cp_reduce: decode stops `level` resolution levels early
        im.load()
        arr = np.asarray(im)
    width = 8 if arr.dtype.itemsize == 1 else 16
    if im.mode not in ("L", "I;16", "RGB") or (arr.ndim == 3 and signed):
        raise ValueError(f"Pillow gave mode {im.mode} for a {precision}-bit {'signed ' if signed else ''}codestream")
    if precision > width:
        raise ValueError(f"Pillow gave {width}-bit samples for a {precision}-bit codestream")
    if width > precision:
        arr = arr >> (width - precision)
    if signed:
        arr = (arr.astype(np.int32) - (1 << (precision - 1))).astype(np.int8 if width == 8 else np.int16)
    return _colour(_shaped(arr, spec), spec)


_IC = "pip install imagecodecs"

#: Every backend fastdcm knows, in no order; the preference per transfer syntax is PREFERENCE.
BACKENDS: tuple[Backend, ...] = (
    Backend("imagecodecs", JPEG, ("imagecodecs",), _IC, _ic_jpeg, note="libjpeg-turbo 3: 8/12-bit lossy, 2-16 bit lossless"),
    Backend("imagecodecs", JPEG_LS, ("imagecodecs",), _IC, _ic_jpegls, note="CharLS"),
    Backend("imagecodecs", J2K + HT, ("imagecodecs",), _IC, _ic_jpeg2k, max_bits=32, note="OpenJPEG"),
    Backend("imagecodecs-openjph", HT, ("imagecodecs",), _IC, _ic_htj2k, max_bits=32, note="OpenJPH"),
    Backend("imagecodecs", RLE, ("imagecodecs",), _IC, _ic_rle, max_bits=32, note="DICOM RLE"),
    Backend("pylibjpeg", JPEG, ("libjpeg",), "pip install pylibjpeg pylibjpeg-libjpeg", _libjpeg_jpeg, note="libjpeg 9 (Richter)"),
    Backend("pylibjpeg", JPEG_LS, ("libjpeg",), "pip install pylibjpeg pylibjpeg-libjpeg", _libjpeg_jpegls, note="libjpeg 9 (Richter)"),
    Backend("pylibjpeg", J2K + HT, ("openjpeg",), "pip install pylibjpeg pylibjpeg-openjpeg", _openjpeg, max_bits=32, note="OpenJPEG"),
    Backend("pylibjpeg", RLE, ("rle",), "pip install pylibjpeg pylibjpeg-rle", _pylibjpeg_rle, max_bits=32, note="Rust"),
    Backend(
        "pyjpegls", JPEG_LS, ("jpeg_ls",), "pip install pyjpegls", _pyjpegls,
        note="CharLS; first for near-lossless frames of more than 8 bits under 128 x 128 pixels",
    ),
    Backend("pydicom", RLE, ("pydicom",), "", _pydicom_rle, max_bits=32, note="pure Python (numpy)"),
    Backend(
        "pillow", J2K + HT, ("PIL",), "pip install pillow", _pillow_j2k, reduce=_pillow_j2k,
        note="OpenJPEG; decodes reduced resolution levels (reduce=k)",
    ),
)

#: The order backends are tried in, per family: fastest first, as measured by
#: benchmarks/bench_decode.py (imagecodecs decodes JPEG 3-8x, JPEG-LS and RLE 5x faster than
#: pydicom's default plugins, JPEG 2000 at the same speed). HTJ2K: OpenJPH decodes 2.1-2.4x faster
#: than OpenJPEG (512x512 CT 1.1 vs 2.4 ms, 2048x2048 12-bit 19 vs 44 ms) but wraps saturated samples
#: of lossy 8-bit streams (255 -> 0 in 2,800 samples of US1's RGB image; OpenJPEG: within 4), so
#: OpenJPEG stays first (tests/test_decoders.py holds it). With ``reduce=k`` the backends that
#: decode reduced resolution levels (Pillow's OpenJPEG) go first (decoders.candidates).
PREFERENCE: dict[str, tuple[str, ...]] = {
    "jpeg": ("imagecodecs", "pylibjpeg"),
    "jpegls": ("imagecodecs", "pyjpegls", "pylibjpeg"),
    "jpeg2000": ("imagecodecs", "pylibjpeg", "pillow"),
    "htj2k": ("imagecodecs", "imagecodecs-openjph", "pylibjpeg", "pillow"),
    "rle": ("imagecodecs", "pylibjpeg", "pydicom"),
}


#: Near-lossless JPEG-LS frames of more than 8 bits allocated and fewer pixels than this go to pyjpegls
#: first: imagecodecs' CharLS takes 50-90 us longer to set up such a decode (near-lossless of 10-16
#: bits only; measured on this 2-core VM, NEAR 1 and 3: 64 x 64 287-317 against 231-267 us, 128 x 128
#: 0.87-0.97x, from 192 x 192 the same, 512 x 512 imagecodecs 5 % faster; lossless and 8-bit streams
#: have no such cost). The order stays PREFERENCE's for every other frame.
SMALL_FRAME_PIXELS = 128 * 128


def small_frame_first(ts: str, bits_allocated: int) -> str | None:
    """The backend tried first for a frame of fewer than :data:`SMALL_FRAME_PIXELS` pixels, where
    that is not PREFERENCE's first (None: the same order as any frame)."""
    return "pyjpegls" if ts == JPEGLSNearLossless and bits_allocated > 8 else None


def family(ts: str) -> str | None:
    for name, syntaxes in FAMILIES.items():
        if ts in syntaxes:
            return name
    return None


def backend(name: str, ts: str) -> Backend | None:
    """The backend called ``name`` for transfer syntax ``ts``, or None."""
    for b in BACKENDS:
        if b.name == name and ts in b.syntaxes:
            return b
    return None


def chain(ts: str) -> list[Backend]:
    """The backends for ``ts`` in the order they are tried (installed or not)."""
    fam = family(ts)
    if fam is None:
        return []
    return [b for b in (backend(n, ts) for n in PREFERENCE[fam]) if b is not None]
