"""Header -> stored-value frames.

Native little-endian data of 8, 16, 32 or 64 bits is a numpy view of the file's bytes: no
copy, nothing per pixel in Python. Everything else (encapsulated, deflated, big endian,
1-bit, YBR) goes through pydicom's decoders, with the plugin chosen explicitly per transfer
syntax from :data:`PREFERRED_PLUGINS` rather than by whatever happens to be installed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .errors import DecodeError, MissingDecoderError, UnsupportedTransferSyntaxError
from .header import Header, PixelSpec

log = logging.getLogger(__name__)

#: Decoding plugin per transfer syntax, in order of preference (fastest first).
PREFERRED_PLUGINS: dict[UID, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("pylibjpeg", "pillow"),
    JPEGExtended12Bit: ("pylibjpeg", "pillow"),
    JPEGLossless: ("pylibjpeg",),
    JPEGLosslessSV1: ("pylibjpeg",),
    JPEGLSLossless: ("pyjpegls", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "pylibjpeg"),
    JPEG2000Lossless: ("pylibjpeg", "pillow"),
    JPEG2000: ("pylibjpeg", "pillow"),
    HTJ2KLossless: ("pylibjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg",),
    HTJ2K: ("pylibjpeg",),
    RLELossless: ("pylibjpeg", "pydicom"),
}

#: The pip command that brings each plugin.
PLUGIN_PACKAGES: dict[tuple[UID, str], str] = {}
for _ts in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1):
    PLUGIN_PACKAGES[_ts, "pylibjpeg"] = "pip install pylibjpeg pylibjpeg-libjpeg"
for _ts in (JPEGLSLossless, JPEGLSNearLossless):
    PLUGIN_PACKAGES[_ts, "pyjpegls"] = "pip install pyjpegls"
for _ts in (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K):
    PLUGIN_PACKAGES[_ts, "pylibjpeg"] = "pip install pylibjpeg pylibjpeg-openjpeg"
PLUGIN_PACKAGES[RLELossless, "pylibjpeg"] = "pip install pylibjpeg pylibjpeg-rle"

NATIVE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class DecoderStatus:
    transfer_syntax: str
    name: str
    plugin: str | None  # the plugin fastdcm will use, None when none is installed
    install: str  # the pip command for the preferred plugin ("" when built in)


def choose_plugin(ts: UID) -> str:
    """The decoding plugin for ``ts`` ('' for native data); typed errors when there is none."""
    if ts in NATIVE:
        return ""
    try:
        decoder = get_decoder(ts)
    except (NotImplementedError, ValueError):
        raise UnsupportedTransferSyntaxError(f"transfer syntax {ts} ({ts.name}) is not supported") from None
    available = decoder.available_plugins
    for plugin in PREFERRED_PLUGINS.get(ts, ()):
        if plugin in available:
            return plugin
    if available:  # a transfer syntax we have no preference for: pydicom's first, named
        return sorted(available)[0]
    preferred = PREFERRED_PLUGINS.get(ts, ("pylibjpeg",))[0]
    install = PLUGIN_PACKAGES.get((ts, preferred), "see pydicom's documentation")
    raise MissingDecoderError(f"no decoder installed for {ts.name}: {install}")


def decoders() -> list[DecoderStatus]:
    """Which decoder fastdcm uses for each compressed transfer syntax, or how to install one."""
    out = []
    for ts, prefs in PREFERRED_PLUGINS.items():
        try:
            plugin: str | None = choose_plugin(ts)
        except UnsupportedTransferSyntaxError:
            plugin = None
        out.append(DecoderStatus(str(ts), ts.name, plugin, PLUGIN_PACKAGES.get((ts, prefs[0]), "")))
    return out


_NATIVE_DTYPES = {
    (False, 8): "<u1",
    (False, 16): "<u2",
    (False, 32): "<u4",
    (True, 32): "<f4",
    (True, 64): "<f8",
}


def stored_frame(header: Header, index: int) -> np.ndarray:
    """Frame ``index`` (0-based) as stored: shape (rows, columns) or (rows, columns, 3).

    Integers come back unsigned or signed (pydicom), not yet masked; colour comes back RGB.
    The array may be a read-only view of the file's bytes; never write into it.
    """
    spec = header.spec
    if header.buffer is not None and spec.is_native_view:
        return _native_view(header.buffer, spec, index)
    return _decode_with_pydicom(header, index)


def _native_view(buffer: bytes, spec: PixelSpec, index: int) -> np.ndarray:
    dtype = np.dtype(_NATIVE_DTYPES[spec.is_float, spec.bits_allocated])
    count = spec.rows * spec.columns * spec.samples_per_pixel
    offset = spec.pixel_offset + index * count * dtype.itemsize
    flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    if spec.samples_per_pixel == 1:
        return flat.reshape(spec.rows, spec.columns)
    if spec.planar_configuration == 1:
        return flat.reshape(3, spec.rows, spec.columns).transpose(1, 2, 0)
    return flat.reshape(spec.rows, spec.columns, 3)


def _decode_with_pydicom(header: Header, index: int) -> np.ndarray:
    spec = header.spec
    ts = UID(spec.transfer_syntax_uid)
    plugin = choose_plugin(ts)
    ds = header.dataset
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError("the pixel data is not available to the decoder")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A dataset without file meta (no preamble): tell pydicom what the header parser found,
        # on a shallow copy so the caller's dataset is left as it was.
        ds = copy.copy(ds)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index, decoding_plugin=plugin, as_rgb=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        what = f"{ts.name} with plugin {plugin!r}" if plugin else ts.name
        raise DecodeError(f"frame {index} cannot be decoded ({what}): {type(exc).__name__}: {exc}") from None
    if not arr.dtype.isnative:  # big endian data: the kernels read native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    expected = (spec.rows, spec.columns) if spec.samples_per_pixel == 1 else (spec.rows, spec.columns, 3)
    if arr.shape != expected:
        raise DecodeError(f"the decoder returned shape {arr.shape}, the header promises {expected}")
    return arr
