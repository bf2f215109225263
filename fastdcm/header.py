"""Source -> PixelSpec: read a DICOM header with pydicom and validate the pixel module.

This is the only module that parses DICOM. The header is read once, stopping before the
pixel data; we then locate the pixel data element ourselves: native (uncompressed)
little-endian frames are numpy views of the file's bytes (no copy, no Python objects per
pixel), encapsulated frames are byte ranges of the file found from its fragment table
(decoders/frames.py) and decoded from there. Deflated and big endian data keep pydicom's
full dataset and go through pydicom's decoders (see decoders/).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Union

from . import elements, fastheader
from .decoders.frames import FileRanges, frame_table
from .errors import (
    FastDcmError,
    InvalidPixelModuleError,
    NoImageError,
    NotDicomError,
    TruncatedPixelDataError,
    describe,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

log = logging.getLogger(__name__)

SourceLike = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, "Dataset"]

PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
PALETTE = "PALETTE COLOR"
NATIVE_LE = (fastheader.EXPLICIT_LE, fastheader.IMPLICIT_LE)

#: Upper bound on the bytes one decoded frame may claim (FASTDCM_MAX_FRAME_BYTES).
MAX_FRAME_BYTES = int(os.environ.get("FASTDCM_MAX_FRAME_BYTES", str(1 << 30)))
#: Upper bound on the number of frames (FASTDCM_MAX_FRAMES).
MAX_FRAMES = int(os.environ.get("FASTDCM_MAX_FRAMES", "100000"))
#: Inputs larger than this are refused before reading (FASTDCM_MAX_FILE_BYTES).
MAX_FILE_BYTES = int(os.environ.get("FASTDCM_MAX_FILE_BYTES", str(8 << 30)))
#: Files larger than this are read in parts (FASTDCM_READ_IN_PARTS_ABOVE): the header from their
#: first :data:`HEAD_BYTES`, then only the bytes of the frame asked for (``frames.FileRanges``), when
#: the header lies in those bytes and the pixel data is little endian, native or encapsulated (else
#: the whole file is read). ``render`` of frame 1 of a 105 MB 200-frame CT: 50.7 -> 0.34 ms (and 99 MiB
#: less peak memory); of a 6 MB 120-frame JPEG cine (color3d_jpeg_baseline.dcm): 2.15 -> 1.61 ms
#: (benchmarks/frames.py); single-frame files of 2 to 7 MB the same or faster.
READ_IN_PARTS_ABOVE = int(os.environ.get("FASTDCM_READ_IN_PARTS_ABOVE", str(1 << 20)))
HEAD_BYTES = 1 << 18


@dataclass(frozen=True)
class PixelSpec:
    """The validated pixel module of one object, plus where its pixel data lies.

    Small and picklable: this is what crosses process boundaries, never the dataset.
    """

    transfer_syntax_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    pixel_keyword: str  # PixelData, FloatPixelData or DoubleFloatPixelData
    is_encapsulated: bool
    sop_class_uid: str = ""
    modality: str = ""
    # Native little-endian data: where the pixel bytes start and how many there are;
    # encapsulated data: where its first item (the Basic Offset Table) starts, length -1.
    pixel_offset: int = -1
    pixel_length: int = -1

    @property
    def is_float(self) -> bool:
        return self.pixel_keyword != "PixelData"

    @property
    def is_grayscale(self) -> bool:
        return self.photometric_interpretation in GRAYSCALE

    @property
    def is_palette(self) -> bool:
        return self.photometric_interpretation == PALETTE

    @property
    def is_signed(self) -> bool:
        return self.pixel_representation == 1

    @property
    def is_native_view(self) -> bool:
        """True when frames can be numpy views of the file's bytes (see decoders/)."""
        return self.pixel_offset >= 0 and not self.is_encapsulated

    @property
    def transfer_syntax_name(self) -> str:
        from pydicom.uid import UID

        return UID(self.transfer_syntax_uid).name

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transfer_syntax_name": self.transfer_syntax_name}


class Header:
    """A parsed header: the validated spec, the attributes the pipeline reads, and the bytes
    of the file (frames of native data are views into them, encapsulated frames byte ranges:
    ``frames`` holds each frame's (start, length) ranges, from decoders/frames.py). ``data`` is
    where the pixel data is read from: ``buffer``, or for a file read in parts
    (:data:`READ_IN_PARTS_ABOVE`) a ``FileRanges`` of it, ``buffer`` then being its first bytes.

    ``attrs`` is pydicom's dataset, or for files the fast parser read (fastheader.py) a
    small mapping with the same keywords; ``dataset`` is always pydicom's, parsed on first
    use when the fast parser was enough for rendering.
    """

    __slots__ = ("spec", "attrs", "buffer", "data", "path", "frames", "_dataset")

    def __init__(
        self, spec: PixelSpec, attrs: Any, buffer: bytes | None, path: str | None, data: FileRanges | None = None
    ) -> None:
        self.spec = spec
        self.attrs = attrs
        self.buffer = buffer
        self.data = buffer if data is None else data
        self.path = path
        self.frames: list[list[tuple[int, int]]] | None = None
        self._dataset = attrs if is_dataset(attrs) else None
        if spec.is_encapsulated and self.data is not None and spec.pixel_offset >= 0:
            # offset 0: the buffer is a Dataset's PixelData value, which has no sequence delimiter
            if data is None:
                self.frames = self._frame_table()
            else:  # a file read in parts: the item headers' reads share one descriptor
                with data.opened():
                    self.frames = self._frame_table()

    def _frame_table(self) -> list[list[tuple[int, int]]]:
        spec = self.spec
        return frame_table(
            self.data, spec.pixel_offset, spec.number_of_frames, _extended_offsets(self.attrs),
            delimited=spec.pixel_offset > 0,
        )

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            assert self.buffer is not None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import pydicom

                    self._dataset = pydicom.dcmread(io.BytesIO(self.buffer), stop_before_pixels=True)
            except Exception as exc:  # the pixel path read it; pydicom cannot (a damaged meta element)
                raise NotDicomError(f"pydicom cannot read the header: {describe(exc)}", path=self.path) from None
        return self._dataset


def source_name(src: Any) -> str:
    """A name for messages: the path, or a short description of an in-memory source."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if is_dataset(src):
        return str(getattr(src, "filename", None) or "<Dataset>")
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    return str(getattr(src, "name", None) or f"<{type(src).__name__}>")


def _read_all(fd: int, size: int) -> bytes:
    """The file's bytes: ``size`` of them in one read when it gives them all, else (a read cut
    short, as over 2 GiB or on some network file systems; a file whose size says 0) on to the end."""
    data = os.read(fd, size) if size else b""
    if len(data) == size and size:
        return data
    parts = [data]
    while chunk := os.read(fd, max(size - len(data), 1 << 20)):
        parts.append(chunk)
    return b"".join(parts)


def read_bytes(src: SourceLike) -> tuple[bytes, str | None]:
    """The whole input as bytes, with its path when it has one."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        return _read_path(path, in_parts=False)[0], path
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), None
    if hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("a file object given to fastdcm must be opened in binary mode")
        return bytes(data), getattr(src, "name", None) if isinstance(getattr(src, "name", None), str) else None
    raise TypeError(
        f"cannot read a DICOM object from {type(src).__name__}: "
        "give a path, bytes, a binary file object or a pydicom Dataset"
    )


def _read_path(path: str, in_parts: bool) -> tuple[bytes, os.stat_result | None]:
    """(the file's bytes, None); with ``in_parts``, for a file above :data:`READ_IN_PARTS_ABOVE`,
    (its first :data:`HEAD_BYTES`, its stat)."""
    try:
        # os.open / os.read, not open(): a file object costs ~8 us a file more (a 644-byte file: 16 -> 8 us)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size > MAX_FILE_BYTES:
                raise InvalidPixelModuleError(
                    f"file is {size} bytes, over the limit of {MAX_FILE_BYTES} (FASTDCM_MAX_FILE_BYTES)",
                    path=path,
                )
            head = None
            if in_parts and size > READ_IN_PARTS_ABOVE and hasattr(os, "pread"):
                head = os.pread(fd, HEAD_BYTES, 0)
            if size > _PEEK_ABOVE:  # a large file that is no dataset is told from its head
                try:
                    _refuse_zero_dataset(head[: 1 << 16] if head is not None else os.pread(fd, 1 << 16, 0))
                except NotDicomError as exc:
                    raise exc.with_path(path) from None
            if head is not None:
                return head, st
            return _read_all(fd, size), None
        finally:
            os.close(fd)
    except IsADirectoryError:
        raise NotDicomError("is a directory, not a file", path=path) from None
    except FileNotFoundError:
        raise NotDicomError("no such file", path=path) from None
    except PermissionError as exc:
        raise NotDicomError(f"cannot be read: {exc.strerror}", path=path) from None


def _header_in_parts(head: bytes, path: str, st: os.stat_result) -> Header | None:
    """The header of a large file from its first bytes, its pixel data left in the file (read
    by ``frames.FileRanges``); None when the whole file must be read (the header runs past
    ``head``, or the pixel data is of a kind only the whole-buffer paths read)."""
    fast = fastheader.parse(head, total=st.st_size)
    if fast is None:
        return None
    ts, attrs, offset, length = fast
    pi = str(attrs.get("PhotometricInterpretation", ""))
    encapsulated = length < 0
    if attrs.get("BitsAllocated") not in (8, 16, 32) or (not encapsulated and pi.startswith("YBR")) or "Rows" not in attrs:
        return None
    data = FileRanges(path, st.st_size, st.st_mtime_ns)
    if not encapsulated and fastheader.second_pixel_element(data[offset + length : offset + length + 4], 0):
        return None  # two pixel data elements: the whole-buffer path reports it
    module = attrs.module
    if module is None:
        module = attrs.module = _validate(attrs, ts, "PixelData", encapsulated, -1, -1)
    return Header(spec=_placed(module, offset, length), attrs=attrs, buffer=head, path=path, data=data)


def read_header(src: SourceLike) -> Header:
    """Parse and validate the header of ``src``; raise a FastDcmError subclass naming it.
    A large file (:data:`READ_IN_PARTS_ABOVE`) is read in parts where it can be."""
    name = source_name(src)
    try:
        if is_dataset(src):
            return _header_from_dataset(src, buffer=None, path=name, pixel_pos=None)
        if isinstance(src, (str, os.PathLike)):
            path = os.fspath(src)
            buffer, st = _read_path(path, in_parts=True)
            if st is not None:
                header = _header_in_parts(buffer, path, st)
                if header is not None:
                    return header
                buffer = _read_path(path, in_parts=False)[0]
            return _header_from_bytes(buffer, path)
        buffer, path = read_bytes(src)
        return _header_from_bytes(buffer, path or name)
    except FastDcmError as exc:
        raise exc.with_path(name)


def is_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a pydicom Dataset, told without importing pydicom (~0.17 s), which the
    common path never needs: no Dataset exists before pydicom is imported."""
    module = sys.modules.get("pydicom.dataset")
    return module is not None and isinstance(obj, module.Dataset)


def is_multi(value: Any) -> bool:
    """Whether ``value`` holds several values: a list, a tuple or pydicom's MultiValue (told as
    :func:`is_dataset` tells a Dataset)."""
    if isinstance(value, (list, tuple)):
        return True
    module = sys.modules.get("pydicom.multival")
    return module is not None and isinstance(value, module.MultiValue)


def _header_from_bytes(buffer: bytes, name: str) -> Header:
    if len(buffer) < 8:
        raise NotDicomError(f"only {len(buffer)} bytes long")
    fast = fastheader.parse(buffer)
    if fast is not None:
        ts, attrs, offset, length = fast
        pi = str(attrs.get("PhotometricInterpretation", ""))
        encapsulated = length < 0
        if attrs.get("BitsAllocated") in (8, 16, 32) and (encapsulated or not pi.startswith("YBR")) and "Rows" in attrs:
            module = attrs.module  # validated once per series (fastheader.Attributes)
            if module is None:
                module = attrs.module = _validate(attrs, ts, "PixelData", encapsulated, -1, -1)
            return Header(spec=_placed(module, offset, length), attrs=attrs, buffer=buffer, path=name)
    _refuse_zero_dataset(buffer)
    import pydicom
    from pydicom.errors import InvalidDicomError

    fp = io.BytesIO(buffer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        if not elements.looks_headerless(buffer):
            raise NotDicomError(
                "not a DICOM file: no 'DICM' after a 128-byte preamble, and it does not begin as a raw dataset does"
            ) from None
        # No preamble and no meta (ACR-NEMA style): a raw little-endian dataset.
        fp = io.BytesIO(buffer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        except Exception as exc2:
            raise NotDicomError(f"not a DICOM file ({describe(exc2)})") from None
    except (EOFError, OSError) as exc:
        raise TruncatedPixelDataError(f"file ends inside its header ({describe(exc)})") from None
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise NotDicomError(f"header cannot be parsed: {describe(exc)}") from None
    if len(ds) == 0 and not ds.file_meta:
        raise NotDicomError("no DICOM elements found")
    return _header_from_dataset(ds, buffer=buffer, path=name, pixel_pos=fp.tell())


#: Files larger than this have their first 64 KiB checked before the whole file is read.
_PEEK_ABOVE = 16 << 20


def _refuse_zero_dataset(buffer: bytes) -> None:
    """Eight zero bytes where the first dataset element must be: no dataset (pydicom would read
    them as empty elements of tag (0000,0000), 8 bytes at a time: ~0.5 s per MiB of zeros)."""
    pos = 0
    if elements.has_preamble(buffer):
        try:
            pos = elements.file_meta(buffer, cut_ok=True)[1]
        except elements.Malformed:
            return
    if len(buffer) >= pos + 8 and buffer[pos : pos + 8] == bytes(8):
        raise NotDicomError(f"no dataset: zero bytes where its first element should be (byte {pos})")


def _transfer_syntax(ds: Dataset) -> UID:
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts))
    # No meta: pydicom guessed the encoding while reading.
    if getattr(ds, "original_encoding", (None, None))[0] is not None:
        implicit, little = ds.original_encoding
        if little:
            return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        return UID("1.2.840.10008.1.2.2")
    return ImplicitVRLittleEndian


def _header_from_dataset(
    ds: Dataset, *, buffer: bytes | None, path: str | None, pixel_pos: int | None
) -> Header:
    from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

    ts = _transfer_syntax(ds)
    has_image_module = "Rows" in ds or "Columns" in ds or "BitsAllocated" in ds
    pixel_keyword = next((kw for tag, kw in PIXEL_TAGS.items() if tag in ds), None)
    offset = length = -1
    encapsulated = ts.is_compressed if ts.is_transfer_syntax else False

    if buffer is not None and ts.is_transfer_syntax and (
        ts == DeflatedExplicitVRLittleEndian or not ts.is_little_endian
    ):
        # The bytes after the header are not plain little-endian elements: pydicom reads all.
        ds = _read_full(buffer)
        pixel_keyword = next((kw for tag, kw in PIXEL_TAGS.items() if tag in ds), None)
    elif buffer is not None and pixel_keyword is None:
        pixel_keyword, offset, length, undefined = _locate_pixel_element(buffer, pixel_pos, ds, has_image_module)
        if undefined != encapsulated and pixel_keyword is not None:
            what = "encapsulated" if undefined else "native"
            raise InvalidPixelModuleError(f"{what} pixel data in a file whose transfer syntax is {ts.name}")
    if pixel_keyword is None:
        sop = ds.get("SOPClassUID")
        what = UID(str(sop)).name if sop else "this object"
        if has_image_module or "Image Storage" in what:
            stopped = ""
            if buffer is not None and pixel_pos is not None and pixel_pos < len(buffer):
                stopped = f" (the header parser stopped at byte {pixel_pos} of {len(buffer)})"
            raise TruncatedPixelDataError(f"{what}: the header describes an image but the pixel data is missing{stopped}")
        raise NoImageError(f"no pixel data ({what})")
    if not has_image_module:
        raise InvalidPixelModuleError("pixel data without Rows, Columns and Bits Allocated")

    native_view = (
        buffer is not None
        and ts in NATIVE_LE
        and offset >= 0
        and not encapsulated
        and ds.get("BitsAllocated") in (8, 16, 32, 64)
        and not str(ds.get("PhotometricInterpretation", "")).strip().upper().startswith("YBR")
    )
    if encapsulated:
        if buffer is None:  # a Dataset given by the caller: its pixel data value is the buffer
            buffer, offset = ds[pixel_keyword].value, 0
        spec = _validate(ds, ts, pixel_keyword, True, offset, -1)
        return Header(spec=spec, attrs=ds, buffer=buffer, path=path)
    if buffer is not None and not native_view:
        # Deflated, big endian, YBR or 1-bit native data: pydicom reads the whole object,
        # and its decoders read it (decoders/).
        ds = _read_full(buffer)
        offset = length = -1
    if offset < 0 and pixel_keyword in ds:
        # Read by pydicom (big endian, deflated, YBR, 1-bit): check the length it found.
        offset, length = 0, len(ds[pixel_keyword].value or b"")
        spec = _placed(_validate(ds, ts, pixel_keyword, encapsulated, offset, length), -1, -1)
    else:
        spec = _validate(ds, ts, pixel_keyword, False, offset, length)
    return Header(spec=spec, attrs=ds, buffer=buffer if native_view else None, path=path)


def _read_full(buffer: bytes) -> Dataset:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(buffer), force=True)
    except Exception as exc:
        raise TruncatedPixelDataError(f"pixel data cannot be read: {describe(exc)}") from None


def _locate_pixel_element(
    buffer: bytes, pos: int | None, ds: Dataset, has_image_module: bool
) -> tuple[str | None, int, int, bool]:
    """Read the pixel data element header where pydicom stopped: (keyword, offset, length, undefined)."""
    n = len(buffer)
    if pos is None or pos >= n:
        return None, -1, -1, False
    try:
        # Explicit or implicit by its VR bytes: pydicom may have guessed the encoding.
        tag, _, length, start = elements.element(buffer, pos, None)
    except elements.Malformed:
        raise TruncatedPixelDataError(f"file ends {n - pos} bytes into the pixel data element") from None
    keyword = PIXEL_TAGS.get(tag)
    if keyword is None:
        if has_image_module:
            raise TruncatedPixelDataError(
                f"the header parser stopped at byte {pos} of {n} "
                f"(element ({tag >> 16:04X},{tag & 0xFFFF:04X})): pixel data missing"
            )
        return None, -1, -1, False
    if length == elements.UNDEFINED:
        return keyword, start, -1, True  # encapsulated: its items start here
    if start + length > n:
        raise TruncatedPixelDataError(
            f"pixel data element claims {length} bytes but only {n - start} follow"
        )
    if fastheader.second_pixel_element(buffer, start + length):
        raise InvalidPixelModuleError(
            "a second pixel data element follows the first: which pixel data is meant is ambiguous"
        )
    return keyword, start, length, False


def _extended_offsets(attrs: Any) -> tuple[Any, Any] | None:
    """The Extended Offset Table and its lengths (7FE0,0001/0002) as 64-bit integers, or None."""
    if not is_dataset(attrs) or "ExtendedOffsetTable" not in attrs:
        return None
    import numpy as np

    try:
        offsets = np.frombuffer(attrs.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(attrs.ExtendedOffsetTableLengths, "<u8")
    except (AttributeError, TypeError, ValueError) as exc:
        raise TruncatedPixelDataError(f"the Extended Offset Table cannot be read: {describe(exc)}") from None
    return offsets.tolist(), lengths.tolist()


def _int(ds: Any, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise InvalidPixelModuleError(f"{keyword} is missing")
        return default
    try:
        if is_multi(value):
            raise InvalidPixelModuleError(f"{keyword} has {len(value)} values, expected one")
        return int(value)
    except (TypeError, ValueError):
        raise InvalidPixelModuleError(f"{keyword} is not a number: {value!r}") from None


def _validate(
    ds: Any, ts: str, pixel_keyword: str, encapsulated: bool, offset: int, length: int
) -> PixelSpec:
    """Range and consistency checks of RENDERING.md section 1, before anything is allocated."""
    try:
        rows = _int(ds, "Rows")
        columns = _int(ds, "Columns")
        spp = _int(ds, "SamplesPerPixel", 1)
        ba = _int(ds, "BitsAllocated")
        is_float = pixel_keyword != "PixelData"
        bs = _int(ds, "BitsStored", ba if is_float else None)
        hb = _int(ds, "HighBit", bs - 1 if is_float else None)
        pr = _int(ds, "PixelRepresentation", 0 if is_float else None)
        pi = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        planar = _int(ds, "PlanarConfiguration", 0) if spp > 1 else 0
        frames = _int(ds, "NumberOfFrames", 1)
    except InvalidPixelModuleError:
        raise
    except Exception as exc:  # a value pydicom cannot convert
        raise InvalidPixelModuleError(f"pixel module cannot be read: {describe(exc)}") from None

    def bad(reason: str) -> InvalidPixelModuleError:
        return InvalidPixelModuleError(reason)

    if not 1 <= rows <= 65535 or not 1 <= columns <= 65535:
        raise bad(f"Rows x Columns = {rows} x {columns} is out of range 1..65535")
    if spp not in (1, 3):
        raise bad(f"Samples per Pixel is {spp}, expected 1 or 3")
    if is_float:
        expected = 32 if pixel_keyword == "FloatPixelData" else 64
        if ba != expected:
            raise bad(f"{pixel_keyword} needs Bits Allocated {expected}, not {ba}")
    elif ba not in (1, 8, 16, 32):
        raise bad(f"Bits Allocated is {ba}, expected 1, 8, 16 or 32")
    if not 1 <= bs <= ba:
        raise bad(f"Bits Stored is {bs}, expected 1..{ba} (Bits Allocated)")
    if hb != bs - 1:
        raise bad(f"High Bit is {hb}, expected Bits Stored - 1 = {bs - 1}")
    if pr not in (0, 1):
        raise bad(f"Pixel Representation is {pr}, expected 0 or 1")
    if planar not in (0, 1):
        raise bad(f"Planar Configuration is {planar}, expected 0 or 1")
    if not 1 <= frames <= MAX_FRAMES:
        raise bad(f"Number of Frames is {frames}, expected 1..{MAX_FRAMES}")
    if not pi:
        raise bad("Photometric Interpretation is missing")
    if pi in GRAYSCALE or pi == PALETTE:
        if spp != 1:
            raise bad(f"{pi} needs Samples per Pixel 1, not {spp}")
    elif pi in COLOR:
        if spp != 3:
            raise bad(f"{pi} needs Samples per Pixel 3, not {spp}")
    else:
        raise bad(f"Photometric Interpretation {pi!r} is not supported")
    if pi == PALETTE and ba > 16:
        raise bad(f"PALETTE COLOR with Bits Allocated {ba} is not supported")
    if pi not in GRAYSCALE and pi != PALETTE and is_float:
        raise bad(f"{pixel_keyword} with {pi} is not supported")

    frame_bytes = (rows * columns * spp * ba + 7) // 8
    if frame_bytes > MAX_FRAME_BYTES:
        raise bad(
            f"one frame of {rows} x {columns} x {spp} x {ba} bits is {frame_bytes} bytes, "
            f"over the limit of {MAX_FRAME_BYTES} (FASTDCM_MAX_FRAME_BYTES)"
        )
    spec = PixelSpec(
        transfer_syntax_uid=str(ts),
        rows=rows,
        columns=columns,
        samples_per_pixel=spp,
        bits_allocated=ba,
        bits_stored=bs,
        high_bit=hb,
        pixel_representation=pr,
        photometric_interpretation=pi,
        planar_configuration=planar,
        number_of_frames=frames,
        pixel_keyword=pixel_keyword,
        is_encapsulated=encapsulated,
        sop_class_uid=str(ds.get("SOPClassUID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
    )
    return _placed(spec, offset, length)


def _placed(spec: PixelSpec, offset: int, length: int) -> PixelSpec:
    """``spec`` with its pixel data at ``offset``, ``length`` bytes (-1: not native data);
    native data is checked to be long enough for every frame."""
    s = spec
    if offset >= 0 and not s.is_encapsulated:
        # YBR_FULL_422 native data holds two samples per pixel (PS3.3 C.7.6.3.1.2).
        samples = 2 if s.photometric_interpretation == "YBR_FULL_422" else s.samples_per_pixel
        needed = (s.rows * s.columns * samples * s.bits_allocated * s.number_of_frames + 7) // 8
        if length < needed:
            raise TruncatedPixelDataError(
                f"pixel data is {length} bytes but {s.number_of_frames} frame(s) of "
                f"{s.rows} x {s.columns} x {s.samples_per_pixel} x {s.bits_allocated} bits need {needed}"
            )
    if offset == s.pixel_offset and length == s.pixel_length:
        return spec
    placed = object.__new__(PixelSpec)  # dataclasses.replace costs ~6 us per file here
    placed.__dict__.update(spec.__dict__, pixel_offset=offset, pixel_length=length)
    return placed
