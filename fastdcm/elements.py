"""One element reader and one set of VR rules for every place that reads DICOM bytes itself.

The header walk (``fastheader``, compiled as ``kernels.walk_header`` with :data:`VR_CLASS`),
the file-meta read, discovery's sniffing (``discover``), pixel-element location after a pydicom
parse (``header``) and the encapsulated item walk (``decoders.frames``) all read element and
item headers here (PS3.5 7.1): little endian, explicit or implicit VR, every length checked
against the buffer before it is used. A header that does not fit raises :class:`Malformed`;
what a caller does with that (hand the file to pydicom, report it truncated, call it not DICOM)
is the caller's business.
"""

from __future__ import annotations

import struct

import numpy as np

#: VRs whose explicit-VR header has two reserved bytes and a 32-bit length (PS3.5 Table 7.1-1).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
#: VRs with a 16-bit length.
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
VRS = LONG_VRS | SHORT_VRS

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
#: Sequences of undefined length nested deeper than this are not walked (a hostile file could
#: otherwise recurse without end).
MAX_DEPTH = 16

#: ``kernels.walk_header``'s table: the class of a VR, indexed by its two bytes as a
#: little-endian uint16 (``vr[0] | vr[1] << 8``).
VR_UNKNOWN, VR_SHORT, VR_LONG = 0, 1, 2
VR_CLASS = np.zeros(1 << 16, dtype=np.uint8)
for _vrs, _kind in ((SHORT_VRS, VR_SHORT), (LONG_VRS, VR_LONG)):
    for _vr in _vrs:
        VR_CLASS[_vr[0] | _vr[1] << 8] = _kind

_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (or reserved)
_IMPLICIT = struct.Struct("<HHI")  # group, element, 32-bit length
_U32 = struct.Struct("<I")


class Malformed(ValueError):
    """An element or item header that does not fit the buffer or breaks the encoding's rules."""


def encode(group: int, number: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element (the reader's rules backwards): its header, 12 bytes
    for the long VRs and 8 for the others, and ``value``, padded to an even length (UI and the
    binary VRs with a NUL, text with a space)."""
    code = vr.encode("ascii")
    if len(value) % 2:
        value += b"\0" if vr == "UI" or code in LONG_VRS else b" "
    if code in LONG_VRS:
        return _EXPLICIT.pack(group, number, code, 0) + _U32.pack(len(value)) + value
    return _EXPLICIT.pack(group, number, code, len(value)) + value


def part10(meta: bytes, body: bytes) -> bytes:
    """A Part 10 file's bytes: the preamble, ``DICM``, the file meta group (``meta``: its elements
    after the group length, which this adds) and the dataset's encoded elements (``body``)."""
    return b"\0" * PREAMBLE + MAGIC + encode(0x0002, 0x0000, "UL", _U32.pack(len(meta))) + meta + body


def element(buffer: bytes | memoryview, pos: int, explicit: bool | None, strict: bool = False) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None for implicit VR, value length, value start) of the element header at ``pos``.

    ``explicit=None`` reads the header as explicit VR when its VR bytes are a known VR, else as
    implicit (for a position reached by another parser whose encoding guess is not known here).
    ``strict`` refuses what a top-level walk should leave to pydicom: an unknown VR in an
    explicit file, or non-zero reserved bytes; otherwise an unknown VR reads as a 16-bit length.
    The value itself is not checked against the buffer (its length may be :data:`UNDEFINED`).
    """
    n = len(buffer)
    if pos + 8 > n:
        raise Malformed(f"an element header at byte {pos} is cut off by the end of the data")
    if explicit is None:
        explicit = bytes(buffer[pos + 4 : pos + 6]) in VRS
    if not explicit:
        group, elem, length = _IMPLICIT.unpack_from(buffer, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, short = _EXPLICIT.unpack_from(buffer, pos)
    if vr in LONG_VRS:
        if pos + 12 > n:
            raise Malformed(f"an element header at byte {pos} is cut off by the end of the data")
        if strict and short != 0:
            raise Malformed(f"non-zero reserved bytes in the element header at byte {pos}")
        return group << 16 | elem, vr, _U32.unpack_from(buffer, pos + 8)[0], pos + 12
    if strict and vr not in SHORT_VRS:
        raise Malformed(f"unknown VR {vr!r} at byte {pos}")
    return group << 16 | elem, vr, short, pos + 8


def item(buffer: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """(tag, length, value start) of the item or delimiter header at ``pos``."""
    if pos + 8 > len(buffer):
        raise Malformed(f"an item header at byte {pos} is cut off by the end of the data")
    group, elem, length = _IMPLICIT.unpack(buffer[pos : pos + 8])  # (a slice: frames.FileRanges too)
    return group << 16 | elem, length, pos + 8


def value_end(buffer: bytes | memoryview, start: int, length: int) -> int:
    """The end of a value of defined ``length`` starting at ``start``, checked against the buffer."""
    end = start + length
    if end > len(buffer):
        raise Malformed(f"a value at byte {start} claims {length} bytes but only {len(buffer) - start} follow")
    return end


def skip_sequence(buffer: bytes | memoryview, pos: int, explicit: bool, depth: int = 0) -> int:
    """Skip the items of a sequence (or encapsulated value) of undefined length whose first
    item header is at ``pos``; return the position after its delimiter."""
    if depth > MAX_DEPTH:
        raise Malformed(f"sequences nested more than {MAX_DEPTH} deep")
    while True:
        tag, length, start = item(buffer, pos)
        if tag == SEQ_END:
            return start
        if tag != ITEM:
            raise Malformed(f"no item at byte {pos} inside a sequence of undefined length")
        pos = _skip_item(buffer, start, explicit, depth + 1) if length == UNDEFINED else value_end(buffer, start, length)


def _skip_item(buffer: bytes | memoryview, pos: int, explicit: bool, depth: int) -> int:
    """Skip the elements of an item of undefined length, up to and past its delimiter."""
    while True:
        tag, _, length, start = element(buffer, pos, explicit)
        if tag == ITEM_END:
            return pos + 8
        pos = skip_sequence(buffer, start, explicit, depth + 1) if length == UNDEFINED else value_end(buffer, start, length)


# --------------------------------------------------------------------------- file meta and sniffing

PREAMBLE = 128
MAGIC = b"DICM"


def has_preamble(head: bytes | memoryview) -> bool:
    """The 128-byte preamble and ``DICM`` (PS3.10 7.1)."""
    return len(head) >= PREAMBLE + 4 and head[PREAMBLE : PREAMBLE + 4] == MAGIC


def file_meta(buffer: bytes | memoryview, cut_ok: bool = False) -> tuple[dict[int, bytes], int]:
    """The file meta elements (group 0002, explicit VR little endian) after the preamble:
    ({element number: value bytes}, position of the first dataset element).

    ``cut_ok`` is for the first bytes of a file only (discovery's sniffing): a meta cut off by
    the end of ``buffer`` returns what was read instead of raising :class:`Malformed`.
    """
    pos = PREAMBLE + 4
    values: dict[int, bytes] = {}
    n = len(buffer)
    while pos + 8 <= n:
        try:
            tag, _, length, start = element(buffer, pos, True)
            if tag >> 16 != 0x0002:
                break
            if length == UNDEFINED:
                raise Malformed(f"undefined length in the file meta at byte {pos}")
            end = value_end(buffer, start, length)
        except Malformed:
            if cut_ok:
                return values, pos
            raise
        values[tag & 0xFFFF] = bytes(buffer[start:end])
        pos = end
    return values, pos


def uid_text(value: bytes) -> str:
    """A UI value as text, its padding removed."""
    return value.rstrip(b"\0 ").decode("ascii", "replace")


def looks_headerless(head: bytes | memoryview) -> bool:
    """A dataset without preamble and meta (ACR-NEMA style), by its first element header: group
    0002 or 0008 with a low element number, then a known VR (explicit, either byte order) or,
    implicit VR little endian, a short even length. The one rule for discovery and the header parser."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, elem = struct.unpack_from(order + "HH", head, 0)
        if group not in (0x0002, 0x0008) or elem > 0x00FF:
            continue
        if bytes(head[4:6]) in VRS:
            return True
        if order == "<":  # implicit VR is always little endian
            (length,) = _U32.unpack_from(head, 4)
            if length % 2 == 0 and length <= 0xFFFF:
                return True
    return False
