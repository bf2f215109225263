"""A fast path for the common case: a little-endian file with a plain header, native or encapsulated.

pydicom's ``dcmread`` costs about 0.4 ms for a CT header, several times the fused kernel.
For the files that make up most archives (preamble + meta, Explicit or Implicit VR Little
Endian or an encapsulated transfer syntax, rescale and window as plain elements)
this module reads the file meta and walks the top-level elements in one compiled call
(``kernels.read_header``, whose plain-Python twin is ``read_python``) and keeps only the few
values the pixel pipeline needs. Anything unusual returns None and header.py uses pydicom as before:
other transfer syntaxes, sequences the pipeline reads (modality/VOI LUT, functional groups),
RGBA palettes, float pixel data, or any structure this walker does not fully understand. A
test holds this parser to pydicom's answer on every file of the test corpora.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np

from . import elements, kernels

# The transfer syntaxes fastdcm reads without pydicom, named as pydicom.uid names them (tests hold each to
# pydicom's): plain strings, so that importing fastdcm does not import pydicom (~0.17 s).
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
JPEGBaseline8Bit = "1.2.840.10008.1.2.4.50"
JPEGExtended12Bit = "1.2.840.10008.1.2.4.51"
JPEGLossless = "1.2.840.10008.1.2.4.57"
JPEGLosslessSV1 = "1.2.840.10008.1.2.4.70"
JPEGLSLossless = "1.2.840.10008.1.2.4.80"
JPEGLSNearLossless = "1.2.840.10008.1.2.4.81"
JPEG2000Lossless = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
HTJ2KLossless = "1.2.840.10008.1.2.4.201"
HTJ2KLosslessRPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLELossless = "1.2.840.10008.1.2.5"
#: Encapsulated transfer syntaxes whose dataset is explicit VR little endian like EXPLICIT_LE:
#: JPEG (baseline, extended, lossless 14 and SV1), JPEG-LS, JPEG 2000, HTJ2K, RLE.
ENCAPSULATED = frozenset((
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K, RLELossless,
))

# Elements whose values the pipeline reads: tag -> (keyword, VR).
WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x00089205: ("PixelPresentation", "CS"),  # (a supplemental palette: apply_color_lut refuses it)
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280006: ("PlanarConfiguration", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280102: ("HighBit", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00281050: ("WindowCenter", "DS"),
    0x00281051: ("WindowWidth", "DS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00281056: ("VOILUTFunction", "CS"),
    0x20500020: ("PresentationLUTShape", "CS"),
    # PALETTE COLOR: the LUTs as pydicom gives them (the plan expands them once per palette)
    0x00281101: ("RedPaletteColorLookupTableDescriptor", "LUTD"),
    0x00281102: ("GreenPaletteColorLookupTableDescriptor", "LUTD"),
    0x00281103: ("BluePaletteColorLookupTableDescriptor", "LUTD"),
    0x00281201: ("RedPaletteColorLookupTableData", "OW"),
    0x00281202: ("GreenPaletteColorLookupTableData", "OW"),
    0x00281203: ("BluePaletteColorLookupTableData", "OW"),
    0x00281221: ("SegmentedRedPaletteColorLookupTableData", "OW"),
    0x00281222: ("SegmentedGreenPaletteColorLookupTableData", "OW"),
    0x00281223: ("SegmentedBluePaletteColorLookupTableData", "OW"),
}

# Elements whose presence sends the file to pydicom (the pipeline needs their structure).
UNUSUAL = {
    0x00283000,  # Modality LUT Sequence
    0x00283010,  # VOI LUT Sequence
    0x52009229,  # Shared Functional Groups Sequence
    0x52009230,  # Per-frame Functional Groups Sequence
    0x00281204, 0x00281224,  # alpha palette data (RGBA palettes)
    0x7FE00008, 0x7FE00009,  # float pixel data
    0x7FE00001, 0x7FE00002,  # Extended Offset Table (and its lengths)
}

_WANTED_LIST = sorted(WANTED)
_WANTED_TAGS = np.array(_WANTED_LIST, dtype=np.int64)
_UNUSUAL_TAGS = np.array(sorted(UNUSUAL), dtype=np.int64)

PIXEL_DATA = elements.PIXEL_DATA
_UNDEFINED = elements.UNDEFINED
_VR_BYTES = {vr: vr.encode() for vr in ("US", "SS", "CS", "UI", "IS", "DS", "OW", "OB")}
#: The one other VR a wanted value may have and still be read the same (as pydicom reads it).
_VR_ALSO = {"US": "SS", "OW": "OB"}
_H = struct.Struct("<H")
_UN_CODE = ord("U") | ord("N") << 8  # b"UN" as the walk gives a VR: little-endian uint16
_LUTD = {b"US": struct.Struct("<3H"), b"SS": struct.Struct("<3h")}
_HH = struct.Struct("<HH")


class _Unusual(Exception):
    """The walker met something it leaves to pydicom."""


class Attributes(dict):
    """The values fast-parsed from a header, looked up by pydicom keyword like a Dataset.

    Read-only: the slices of a series with the same raw values (and so the same transfer
    syntax) share one instance, and what is computed from the values alone is kept on it,
    so a series computes it once: ``module``, the validated pixel module (header.py), and
    ``plans``, render plans by options (plan.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.module: Any = None
        self.plans: dict[Any, Any] = {}


#: Raw values of at most this many bytes in all are decoded once and shared (a header whose
#: window text runs to megabytes is decoded every time, and nothing of it is kept).
_CACHEABLE_BYTES = 4096


def parse(buffer: bytes, total: int | None = None) -> tuple[str, Attributes, int, int] | None:
    """(transfer syntax, attributes, pixel offset, pixel length), or None for pydicom.
    Encapsulated pixel data has length -1 and the offset of its first item. ``total``: the
    file's size when ``buffer`` is only its first bytes (``header.py`` reads a large file in
    parts); then everything before the pixel data must be in ``buffer``, and the check for a
    second pixel data element after the first is the caller's."""
    try:
        return _parse(buffer, total)
    except (_Unusual, struct.error, ValueError, UnicodeDecodeError, IndexError):
        return None


def _parse(buffer: bytes, total: int | None = None) -> tuple[str, Attributes, int, int] | None:
    read = _read(buffer, total)
    if read is None:
        return None
    ts, explicit, start, length, key, rows = read
    if start < 0:
        return None
    if length == _UNDEFINED:
        if ts not in ENCAPSULATED:
            return None  # undefined length in a native file: header.py's path reports it
        length = -1
    elif ts in ENCAPSULATED or second_pixel_element(buffer, start + length):
        return None  # native data in an encapsulated syntax, or two pixel elements: header.py reports it
    if key is None:  # too large to keep
        attrs = _decode(explicit, _values(buffer, rows))
        return None if attrs is None else (ts, attrs, start, length)
    cache_key = (ts, explicit, key)
    attrs = _DECODED.get(cache_key)
    if attrs is None:
        attrs = _decode(explicit, _values(buffer, rows))
        if attrs is None:
            return None
        if len(_DECODED) >= 256:
            _DECODED.clear()
        _DECODED[cache_key] = attrs
    return ts, attrs, start, length


#: ``read_header``'s key holds 6 bytes per wanted tag and at most this many bytes of values.
_KEY_BYTES = _CACHEABLE_BYTES + 6 * len(_WANTED_LIST)
_IMPLICIT_TS = np.frombuffer(IMPLICIT_LE.encode(), np.uint8)
_MAGIC = np.frombuffer(elements.MAGIC, np.uint8)


#: The compiled walk's scratch arrays (wanted rows, sequence stack, meta, key), one set per thread:
#: the kernel fills what it reads (allocating them each call cost 0.6 us of a 644-byte file's 4.6).
_SCRATCH = threading.local()


def _scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = getattr(_SCRATCH, "arrays", None)
    if arrays is None:
        arrays = _SCRATCH.arrays = (
            np.empty((len(_WANTED_LIST), 3), np.int64), np.empty(elements.MAX_DEPTH + 2, np.int64),
            np.empty(4, np.int64), np.empty(_KEY_BYTES, np.uint8),
        )
    return arrays


def _read(buffer: bytes, total: int | None = None) -> tuple[str, bool, int, int, bytes | None, Any] | None:
    """(transfer syntax, explicit VR, pixel data start and length (start < 0: the walk declined),
    the key of the wanted values (None: larger than ``_CACHEABLE_BYTES``), their [start, length,
    VR code] rows: this thread's scratch, to be read before its next call) of a little-endian file
    with a file meta, or None. One compiled call
    (``kernels.read_header``); with the kernels' numpy twins in use, ``read_python``. The meta
    read is kept for ``find_changed`` (``_LAST_META``)."""
    if kernels.twins_active():
        read = read_python(buffer, total)
        if read is not None and type(buffer) is bytes:
            _keep_meta(buffer, (read[0], read[1]))
        return None if read is None else read[:1] + read[2:]
    found, stack, meta, key = _scratch()  # (the rows are read before this thread's next call)
    start, length, key_length = kernels.compiled().read_header(
        np.frombuffer(buffer, np.uint8), elements.VR_CLASS, _MAGIC, _IMPLICIT_TS, _WANTED_TAGS, _UNUSUAL_TAGS,
        found, stack, meta, key, len(buffer) if total is None else total,
    )
    if start == -2:
        return None
    pos, ts_start, ts_length, explicit = meta.tolist()
    ts = elements.uid_text(buffer[ts_start : ts_start + ts_length])
    if ts not in (EXPLICIT_LE, IMPLICIT_LE) and ts not in ENCAPSULATED:
        return None
    if type(buffer) is bytes:
        _keep_meta(buffer, (ts, pos))
    packed = key[:key_length].tobytes() if start >= 0 and key_length >= 0 else None
    return ts, bool(explicit), start, length, packed, found


def read_python(buffer: bytes, total: int | None = None) -> tuple[str, int, bool, int, int, bytes | None, Any] | None:
    """The plain-Python twin of ``kernels.read_header`` (the definition the tests hold it to):
    (transfer syntax, position after the file meta, explicit VR, pixel data start and length, key,
    rows), or None, from ``elements.file_meta``, ``_explicit`` and ``walk_python``."""
    meta = _read_file_meta(buffer)
    if meta is None:
        return None
    ts, pos = meta
    explicit = _explicit(buffer, ts, pos)
    walked = walk_python(buffer, pos, explicit, total=total)
    if walked is None:
        return ts, pos, explicit, -1, 0, None, None
    start, length, rows = walked
    key = bytearray()
    for s, n, vr in rows:
        key += struct.pack("<IH", n if s >= 0 else 0xFFFFFFFF, vr)
        if s >= 0:
            key += buffer[s : s + n]
    return ts, pos, explicit, start, length, bytes(key) if len(key) <= _KEY_BYTES else None, rows


def _values(buffer: bytes, rows: Any) -> list[tuple[bytes, int] | None]:
    """(value bytes, VR code) of each wanted tag in ``_WANTED_LIST`` order, None when absent."""
    rows = rows.tolist() if isinstance(rows, np.ndarray) else rows
    return [None if s < 0 else (buffer[s : s + n], vr) for s, n, vr in rows]


#: Decoded values by their raw bytes: the slices of a series share one (read-only) Attributes.
_DECODED: dict[tuple, Attributes] = {}


def _decode(explicit: bool, values: list[tuple[bytes, int] | None]) -> Attributes | None:
    """The wanted values from their (bytes, VR code) in ``_WANTED_LIST`` order, or None when a
    VR is not the expected one (pydicom knows what to do)."""
    attrs = Attributes()
    for tag, value in zip(_WANTED_LIST, values):
        if value is None:
            continue
        data, code = value
        keyword, want_vr = WANTED[tag]
        # An explicit VR of UN on a tag the dictionary knows: pydicom reads the value as that VR
        # (config.replace_un_with_known_vr, its default), the bytes as an implicit VR file has them.
        unknown = explicit and code == _UN_CODE
        if want_vr == "LUTD":
            if explicit and not unknown:
                vr = bytes((code & 0xFF, code >> 8))
            else:  # "US or SS": pydicom's rule for the ambiguous VR, by Pixel Representation
                representation = attrs.get("PixelRepresentation")
                if representation not in (0, 1):
                    return None
                vr = _VR_BYTES["SS" if representation else "US"]
            attrs[keyword] = _lut_descriptor(data, vr)
            continue
        if explicit and not unknown:
            vr = bytes((code & 0xFF, code >> 8))
            if vr != _VR_BYTES[want_vr] and vr != _VR_BYTES.get(_VR_ALSO.get(want_vr, "")):
                return None
        attrs[keyword] = _value(data, want_vr)
    return attrs


def _file_meta(buffer: bytes) -> tuple[str, int] | None:
    """(transfer syntax, position after the file meta) of a little-endian file, or None. The last
    buffer's answer is kept: a file's header is parsed (``_parse``), then walked again for the
    metadata table and the name guard (``find_changed``), and its meta read once (~10 us)."""
    last = _LAST_META
    if last[0] is buffer:
        return last[1]
    meta = _read_file_meta(buffer)
    if type(buffer) is bytes:  # (immutable: the same object has the same meta)
        _keep_meta(buffer, meta)
    return meta


#: (the last buffer whose file meta was read, its answer) (a reference: ``is`` cannot be fooled).
#: One tuple, replaced whole: a thread reads a consistent pair even while another replaces it
#: (two slots of one list could be read from two different files' calls).
_LAST_META: tuple[Any, Any] = (None, None)


def _keep_meta(buffer: bytes, meta: Any) -> None:
    global _LAST_META
    _LAST_META = (buffer, meta)


def _read_file_meta(buffer: bytes) -> tuple[str, int] | None:
    if len(buffer) < 144 or not elements.has_preamble(buffer):
        return None
    values, pos = elements.file_meta(buffer)
    ts = elements.uid_text(values[0x0010]) if 0x0010 in values else None
    if ts not in (EXPLICIT_LE, IMPLICIT_LE) and ts not in ENCAPSULATED:
        return None
    return ts, pos


def _explicit(buffer: bytes, ts: str, pos: int) -> bool:
    explicit = ts != IMPLICIT_LE
    if pos + 6 <= len(buffer) and (buffer[pos + 4 : pos + 6] in elements.VRS) != explicit:
        # pydicom's rule: the first element's VR bytes say which encoding the dataset really has
        # (writers that put implicit VR under an explicit transfer syntax exist).
        explicit = not explicit
    return explicit


_NO_TAGS = np.empty(0, np.int64)


def find_changed(
    buffer: bytes, tags: np.ndarray, total: int | None, last: np.ndarray, seen: np.ndarray, changed: np.ndarray,
) -> tuple[bool, int, np.ndarray, int] | None:
    """Where the top-level elements ``tags`` of a little-endian file are, by the same walk as the
    header's (sequences of undefined length are skipped, not found), and which of their values
    differ from those of the call before that passed the same ``last``, ``seen`` and ``changed``
    (``kernels.changed_values``, which keeps them): (explicit VR, where the pixel data value starts,
    the rows [value start, value length, VR code] as an array, start -1 when absent, the count of
    changed rows, whose indexes are the first entries of ``changed``), or None when this walk cannot
    read the header (pydicom can tell; ``last`` and ``seen`` are then as they were). Used for the
    metadata table's values and the name guard's. One compiled call (``kernels.walk_changed``)."""
    meta = _file_meta(buffer)
    if meta is None:
        return None
    ts, pos = meta
    explicit = _explicit(buffer, ts, pos)
    if kernels.twins_active():
        walked = walk_python(buffer, pos, explicit, tags, _NO_TAGS, total)
        if walked is None:
            return None
        rows = np.array(walked[2], np.int64).reshape(len(tags), 3)
        count = kernels.impl().changed_values(np.frombuffer(buffer, np.uint8), rows, last, seen, changed)
        return explicit, walked[0], rows, count
    rows = np.empty((len(tags), 3), np.int64)
    stack = np.empty(elements.MAX_DEPTH + 2, np.int64)
    start, _, count = kernels.compiled().walk_changed(
        np.frombuffer(buffer, np.uint8), pos, explicit, elements.VR_CLASS, tags, _NO_TAGS, rows, stack,
        len(buffer) if total is None else total, last, seen, changed,
    )
    return None if start < 0 else (explicit, start, rows, count)


def _walk(
    buffer: bytes, pos: int, explicit: bool, wanted: np.ndarray | None = None, unusual: np.ndarray | None = None,
    total: int | None = None,
) -> tuple[int, int, list[list[int]]] | None:
    """The top-level walk, compiled (``kernels.walk_header``): (pixel data start, its length,
    [value start, value length, VR code] per tag of ``wanted`` (default ``_WANTED_LIST``), start -1
    when absent), or None for pydicom (also when a tag of ``unusual``, default ``UNUSUAL``, is met).
    With the kernels' numpy twins in use (``kernels.impl``), ``walk_python``."""
    wanted = _WANTED_TAGS if wanted is None else wanted
    unusual = _UNUSUAL_TAGS if unusual is None else unusual
    if kernels.twins_active():
        return walk_python(buffer, pos, explicit, wanted, unusual, total)
    found = np.empty((len(wanted), 3), np.int64)
    stack = np.empty(elements.MAX_DEPTH + 2, np.int64)
    start, length = kernels.compiled().walk_header(
        np.frombuffer(buffer, np.uint8), pos, explicit, elements.VR_CLASS, wanted, unusual, found, stack,
        len(buffer) if total is None else total,
    )
    if start < 0:
        return None
    return start, length, found.tolist()


def walk_python(
    buffer: bytes, pos: int, explicit: bool, wanted: np.ndarray | None = None, unusual: np.ndarray | None = None,
    total: int | None = None,
) -> tuple[int, int, list[list[int]]] | None:
    """The plain-Python twin of ``_walk`` (the definition the tests hold the kernel to), on
    the shared element reader (``elements``)."""
    n = len(buffer)
    total = n if total is None else total
    wanted_list = _WANTED_LIST if wanted is None else [int(t) for t in wanted]
    unusual_set = UNUSUAL if unusual is None else {int(t) for t in unusual}
    found = {tag: [-1, 0, 0] for tag in wanted_list}
    while pos + 8 <= n:
        try:
            tag, vr, length, start = elements.element(buffer, pos, explicit, strict=True)
        except elements.Malformed:
            return None  # a cut header, an unknown VR or reserved bytes: let pydicom sort it out
        if tag == PIXEL_DATA:
            if length != _UNDEFINED and start + length > total:
                return None  # short: pydicom's path reports it
            return start, length, [found[tag] for tag in wanted_list]
        if tag in unusual_set:
            return None
        if length == _UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN"):
                return None
            try:
                pos = elements.skip_sequence(buffer, start, explicit)
            except elements.Malformed:
                return None
            continue
        end = start + length
        if end > n:
            return None
        if tag in found:
            found[tag] = [start, length, (vr[0] | vr[1] << 8) if vr else 0]
        pos = end
    return None  # no pixel data: pydicom's path reports what kind of object this is


def second_pixel_element(buffer: bytes, pos: int) -> bool:
    """True when another pixel data element follows at ``pos`` (a malformed file holding two:
    which one is meant is ambiguous, and pydicom would take the last)."""
    if pos + 4 > len(buffer):
        return False
    group, elem = _HH.unpack_from(buffer, pos)
    return group == 0x7FE0 and elem in (0x0008, 0x0009, 0x0010)


def _lut_descriptor(raw: bytes, vr: bytes) -> tuple[int, int, int]:
    """A palette LUT descriptor (US or SS, three values) as pydicom gives it: a first value
    (the number of entries) read as SS and negative is taken as unsigned."""
    unpack = _LUTD.get(vr)
    if unpack is None or len(raw) != 6:
        raise _Unusual  # another VR or value count: pydicom decides
    entries, first, bits = unpack.unpack(raw)
    return (entries + 65536 if entries < 0 else entries, first, bits)


def _value(raw: bytes, vr: str) -> Any:
    if vr == "OW":
        return raw
    if vr == "US":
        if len(raw) != 2:
            raise _Unusual  # multi-valued or odd: pydicom decides
        return _H.unpack(raw)[0]
    text = raw.decode("ascii").strip(" \0")
    if vr in ("UI", "CS"):
        return text
    parts = [p.strip() for p in text.split("\\")]
    if vr == "IS":
        if len(parts) != 1:
            raise _Unusual
        return int(parts[0]) if parts[0] else ""
    # DS: one value as float, several as a list, empty as ""
    values = [float(p) for p in parts if p]
    if not values:
        return ""
    return values[0] if len(values) == 1 else values
