"""Header -> stored-value frames: the decoder registry.

Native little-endian data of 8, 16, 32 or 64 bits is a numpy view of the file's bytes: no
copy, nothing per pixel in Python (colour by plane, Planar Configuration 1, is interleaved
into a copy: ``backends.interleave``). Encapsulated data is decoded frame by frame from its
fragments (``frames.py``) by the backends of ``backends.py``, tried in the order
``backends.PREFERENCE`` gives for the transfer syntax (fastest first; small near-lossless
JPEG-LS frames: ``backends.small_frame_first``); a frame one backend
cannot decode goes to the next, and the name of the backend that decoded it is returned.
``decoder=`` (``--decoder jpeg2000=pylibjpeg``) makes one backend the only choice for a
family of transfer syntaxes. Deflated, big endian, 1-bit and YBR native data go through
pydicom's ``pixel_array``.

A native decoder's panic (pyo3's ``PanicException`` is a ``BaseException``) or any other
failure of a backend is a :class:`DecodeError` for that frame, never a dead run.

``fastdcm.decoders`` (the attribute of the package) is the public function :func:`decoders`,
the table of ``fastdcm info --plugins``; import this module's names with
``from fastdcm.decoders import ...``.
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..errors import DecodeError, MissingDecoderError, UnsupportedTransferSyntaxError, describe
from ..resample import reduce_stored, reduced_size
from . import backends as _backends
from .backends import BACKENDS, FAMILIES, Backend, chain, family, interleave
from .frames import FileRanges, frame_bytes

if TYPE_CHECKING:
    from ..header import Header, PixelSpec

__all__ = ["decode_frame", "stored_frame", "decoders", "DecoderStatus", "parse_choice", "BACKENDS", "FAMILIES"]

log = logging.getLogger(__name__)

#: The name a frame read as a view of the file's bytes is reported with.
NATIVE = "native"


def _ts_name(ts: str) -> str:
    """A transfer syntax's name, for messages (pydicom's dictionary, imported only then)."""
    from pydicom.uid import UID

    return UID(ts).name


def parse_choice(value: Any) -> tuple[tuple[str, str], ...]:
    """``"jpeg2000=pylibjpeg,rle=pydicom"``, a mapping or pairs -> sorted ((family, backend), ...).

    A key is a family name (``jpeg``, ``jpegls``, ``jpeg2000``, ``htj2k``, ``rle``) or a
    transfer syntax UID; the backend must be one fastdcm has for every syntax of that key.
    """
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, str):
        pairs = []
        for item in value.split(","):
            key, sep, name = item.partition("=")
            if not sep or not key.strip() or not name.strip():
                raise ValueError(f"decoder choice must look like jpeg2000=pylibjpeg, not {item!r}")
            pairs.append((key.strip(), name.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [tuple(p) for p in value]
    out = {}
    for key, name in pairs:
        key, name = str(key).lower(), str(name).lower()
        syntaxes = FAMILIES.get(key) or ((key,) if family(key) else None)
        if syntaxes is None:
            raise ValueError(f"unknown decoder family {key!r}: use one of {', '.join(FAMILIES)} or a transfer syntax UID")
        known = sorted({b.name for b in BACKENDS if all(ts in b.syntaxes for ts in syntaxes)})
        if name not in known:
            raise ValueError(f"no decoder {name!r} for {key}: choose from {', '.join(known)}")
        out[key] = name
    return tuple(sorted(out.items()))


def candidates(ts: str, spec: PixelSpec, choice: tuple[tuple[str, str], ...], reduce: int = 0) -> list[Backend]:
    """The installed backends that may decode ``spec``'s frames, in the order they are tried
    (with ``reduce``, those that decode reduced resolution levels first)."""
    small = spec.rows * spec.columns < _backends.SMALL_FRAME_PIXELS
    return list(_candidates(ts, spec.bits_allocated, spec.photometric_interpretation, choice, bool(reduce), small))


@functools.lru_cache(maxsize=256)
def _candidates(
    ts: str, bits: int, pi: str, choice: tuple[tuple[str, str], ...], reduce: bool, small: bool = False
) -> tuple[Backend, ...]:
    """candidates() by what it depends on (installed packages do not change in a process)."""
    chosen = dict(choice)
    name = chosen.get(ts) or chosen.get(family(ts) or "")
    if name is not None:
        b = _backends.backend(name, ts)
        assert b is not None  # parse_choice checked it
        if not b.available:
            raise MissingDecoderError(f"the chosen decoder {name!r} for {_ts_name(ts)} is not installed: {b.install}")
        return (b,)
    tried = chain(ts)
    if not tried:
        raise UnsupportedTransferSyntaxError(f"transfer syntax {ts} ({_ts_name(ts)}) is not supported")
    usable = [b for b in tried if b.available and b.supports_pixels(bits, pi)]
    if not usable:
        missing = [b for b in tried if not b.available and b.supports_pixels(bits, pi)]
        if missing:
            raise MissingDecoderError(f"no decoder installed for {_ts_name(ts)}: {missing[0].install}")
        raise DecodeError(f"no decoder for {_ts_name(ts)} with {bits} bits allocated and {pi}")
    first = _backends.small_frame_first(ts, bits) if small else None
    if first is not None:  # stable: the measured order after it
        usable.sort(key=lambda b: b.name != first)
    if reduce and pi != "PALETTE COLOR":  # indices: resample.py
        usable.sort(key=lambda b: b.reduce is None)  # stable: the measured order otherwise
    return tuple(usable)


def decode_frame(
    header: Header, index: int, choice: tuple[tuple[str, str], ...] = (), reduce: int = 0
) -> tuple[np.ndarray, str]:
    """Frame ``index`` (0-based) as stored, and the name of what decoded it.

    Shape (rows, columns) or (rows, columns, 3); integers unsigned or signed, not yet masked;
    colour RGB. The array may be a read-only view of the file's bytes; never write into it.
    ``reduce=k`` returns it 2^k times smaller on each side (``resample.py``): decoded at a
    reduced resolution level where the codec can, else averaged after a full decode.
    """
    spec = header.spec
    done = 0
    if header.data is not None and spec.is_native_view:
        arr, name = _native_view(header.data, spec, index), NATIVE
    elif spec.is_encapsulated and header.frames is not None:
        arr, name, done = _decode_encapsulated(header, index, choice, reduce)
    else:
        arr, name = _decode_with_pydicom(header, index), "pydicom"
    if done < reduce:
        arr = reduce_stored(arr, spec, reduce)
    return arr, name


def stored_frame(header: Header, index: int) -> np.ndarray:
    """Frame ``index`` as :func:`decode_frame` returns it, with the default backends."""
    return decode_frame(header, index)[0]


def _decode_encapsulated(
    header: Header, index: int, choice: tuple[tuple[str, str], ...], reduce: int
) -> tuple[np.ndarray, str, int]:
    """(frame, backend name, the reduction the backend did: ``reduce`` or 0)."""
    spec = header.spec
    ts = spec.transfer_syntax_uid
    assert header.frames is not None and header.data is not None
    data = frame_bytes(header.data, header.frames[index])
    errors = []
    for b in candidates(ts, spec, choice, reduce):
        try:
            if reduce and b.reduce is not None and spec.photometric_interpretation != "PALETTE COLOR":
                return _checked(b.reduce(data, spec, reduce), spec, reduce), b.name, reduce
            return _checked(b.decode(data, spec), spec), b.name, 0
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:
            errors.append(f"{b.name}: {describe(exc)}")
        except BaseException as exc:  # a native library's panic (pyo3 PanicException) is not an Exception
            if type(exc).__name__ != "PanicException":
                raise
            errors.append(f"{b.name}: panic: {exc}")
        log.debug("frame %d: %s failed, trying the next decoder", index, errors[-1])
    raise DecodeError(f"frame {index} cannot be decoded ({_ts_name(ts)}): " + "; ".join(errors))


def _checked(arr: Any, spec: PixelSpec, reduce: int = 0) -> np.ndarray:
    """The decoded frame, checked against the header's promise (a lying header must not reach a kernel)."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"the decoder returned {type(arr).__name__}, not an array")
    expected = _shape(spec, reduce)
    if arr.ndim == 3 and arr.shape[2] == 1 and spec.samples_per_pixel == 1:
        arr = arr[:, :, 0]
    if arr.shape != expected:
        raise ValueError(f"decoded shape {arr.shape}, the header promises {expected}")
    if arr.dtype.kind not in "iu":  # any integer width will do: the kernels mask to Bits Stored
        raise ValueError(f"decoded {arr.dtype} samples, not integers")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _shape(spec: PixelSpec, reduce: int = 0) -> tuple[int, ...]:
    """The shape the header promises for one frame (2^reduce times smaller on each side)."""
    rows, columns = reduced_size(spec.rows, reduce), reduced_size(spec.columns, reduce)
    return (rows, columns) if spec.samples_per_pixel == 1 else (rows, columns, 3)


_NATIVE_DTYPES = {
    (False, 8): "<u1",
    (False, 16): "<u2",
    (False, 32): "<u4",
    (True, 32): "<f4",
    (True, 64): "<f8",
}


def _native_view(buffer: bytes | FileRanges, spec: PixelSpec, index: int) -> np.ndarray:
    dtype = np.dtype(_NATIVE_DTYPES[spec.is_float, spec.bits_allocated])
    count = spec.rows * spec.columns * spec.samples_per_pixel
    offset = spec.pixel_offset + index * count * dtype.itemsize
    if isinstance(buffer, FileRanges):  # a file read in parts: this frame's bytes only
        flat = np.frombuffer(buffer[offset : offset + count * dtype.itemsize], dtype=dtype)
    else:
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    if spec.samples_per_pixel == 1:
        return flat.reshape(spec.rows, spec.columns)
    if spec.planar_configuration == 1:  # (a copy: the kernels read pixels in order)
        return interleave(flat.reshape(3, spec.rows, spec.columns))
    return flat.reshape(spec.rows, spec.columns, 3)


def _decode_with_pydicom(header: Header, index: int) -> np.ndarray:
    """Deflated, big endian, 1-bit and YBR native data: pydicom's native decoder."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import pixel_array
    from pydicom.uid import UID

    spec = header.spec
    ts = UID(spec.transfer_syntax_uid)
    if not ts.is_transfer_syntax:  # (pydicom read the header as explicit VR little endian; not the pixels)
        raise UnsupportedTransferSyntaxError(f"transfer syntax {ts} is not a DICOM transfer syntax: the pixel data cannot be read")
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
            arr = pixel_array(ds, index=index, as_rgb=True)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise DecodeError(f"frame {index} cannot be decoded ({ts.name}): {describe(exc)}") from None
    if not arr.dtype.isnative:  # big endian data: the kernels read native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.shape != _shape(spec):
        raise DecodeError(f"the decoder returned shape {arr.shape}, the header promises {_shape(spec)}")
    return arr


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class DecoderStatus:
    """One row of ``fastdcm info --plugins``: a backend for one transfer syntax."""

    transfer_syntax: str
    name: str  # the transfer syntax's name
    backend: str
    rank: int  # 1: tried first
    available: bool
    install: str  # the pip command that brings it ("" when built in)
    note: str

    @property
    def plugin(self) -> str | None:
        """The backend, when installed (the first available one is what fastdcm uses)."""
        return self.backend if self.available else None


def decoders() -> list[DecoderStatus]:
    """Every backend for every compressed transfer syntax, in the order fastdcm tries them,
    whether it is installed, and the pip command that brings it."""
    out = []
    for syntaxes in FAMILIES.values():
        for ts in syntaxes:
            for rank, b in enumerate(chain(ts), 1):
                out.append(DecoderStatus(str(ts), _ts_name(ts), b.name, rank, b.available, b.install, b.note))
    return out
