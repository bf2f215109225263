"""elements.py: the one element reader and the one set of VR rules."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom import valuerep
from pydicom.data import get_testdata_file

from fastdcm import elements
from fastdcm.elements import Malformed

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
PACKAGE = Path(elements.__file__).parent


def test_vr_sets_are_pydicoms():
    assert {vr.decode() for vr in elements.LONG_VRS} == {str(v) for v in valuerep.EXPLICIT_VR_LENGTH_32}
    assert {vr.decode() for vr in elements.SHORT_VRS} == {str(v) for v in valuerep.EXPLICIT_VR_LENGTH_16}
    for vr in elements.VRS:
        kind = elements.VR_CLASS[vr[0] | vr[1] << 8]
        assert kind == (elements.VR_LONG if vr in elements.LONG_VRS else elements.VR_SHORT)
    assert int((elements.VR_CLASS != elements.VR_UNKNOWN).sum()) == len(elements.VRS)


def test_no_other_module_keeps_its_own_vr_table_or_preamble_rule():
    """One set of VR rules: a VR list or a DICM check written anywhere else is a second reader."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "elements.py":
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r'b"(OB|OW)\b|b"DICM"|\[128:132\]', text):
            offenders.append(path.relative_to(PACKAGE).as_posix())
    assert offenders == []


def _explicit(group, elem, vr, value):
    if vr.encode() in elements.LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def test_encode_writes_what_element_reads_and_part10_what_pydicom_reads():
    import io

    import pydicom

    short, long_ = elements.encode(0x0028, 0x0004, "CS", b"RGB"), elements.encode(0x7FE0, 0x0010, "OB", b"\x01\x02\x03")
    assert short == _explicit(0x0028, 0x0004, "CS", b"RGB ")  # text padded with a space
    assert long_ == _explicit(0x7FE0, 0x0010, "OB", b"\x01\x02\x03\x00")  # binary with a NUL
    assert elements.element(short + long_, len(short), True) == (0x7FE00010, b"OB", 4, len(short) + 12)
    meta = elements.encode(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1")  # odd: NUL-padded
    data = elements.part10(meta, elements.encode(0x0010, 0x0020, "LO", b"ID1") + short)
    assert elements.has_preamble(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta)
    assert (ds.file_meta.TransferSyntaxUID, ds.PatientID, ds.PhotometricInterpretation) == ("1.2.840.10008.1.2.1", "ID1", "RGB")


def test_element_reads_short_long_and_implicit_headers():
    buf = _explicit(0x0028, 0x0010, "US", b"\x00\x02") + _explicit(0x7FE0, 0x0010, "OW", b"\x01\x02")
    assert elements.element(buf, 0, True) == (0x00280010, b"US", 2, 8)
    assert elements.element(buf, 10, True) == (0x7FE00010, b"OW", 2, 22)
    implicit = struct.pack("<HHI", 0x0028, 0x0010, 2) + b"\x00\x02"
    assert elements.element(implicit, 0, False) == (0x00280010, None, 2, 8)
    # Sniffed: explicit by its VR bytes, else implicit.
    assert elements.element(buf, 10, None) == (0x7FE00010, b"OW", 2, 22)
    assert elements.element(implicit, 0, None) == (0x00280010, None, 2, 8)


def test_element_refuses_cut_headers_and_strict_rule_breaks():
    long_header = _explicit(0x7FE0, 0x0010, "OB", b"")
    for cut in (0, 7, 11):
        with pytest.raises(Malformed, match="cut off"):
            elements.element(long_header[:cut], 0, True)
    unknown = struct.pack("<HH2sH", 0x0009, 0x0010, b"ZZ", 4) + b"abcd"
    with pytest.raises(Malformed, match="unknown VR"):
        elements.element(unknown, 0, True, strict=True)
    assert elements.element(unknown, 0, True) == (0x00090010, b"ZZ", 4, 8)
    reserved = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 1, 0)
    with pytest.raises(Malformed, match="reserved"):
        elements.element(reserved, 0, True, strict=True)
    with pytest.raises(Malformed, match="cut off"):
        elements.item(b"\xfe\xff\x00\xe0\x00", 0)
    with pytest.raises(Malformed, match="claims 9 bytes"):
        elements.value_end(b"12345678", 4, 9)


def _undefined_sequence(depth: int) -> bytes:
    """A sequence of undefined length holding one item of undefined length, nested ``depth`` deep."""
    inner = _explicit(0x0008, 0x0100, "SH", b"CODE01")
    for _ in range(depth):
        seq = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, elements.UNDEFINED)
        item = struct.pack("<HHI", 0xFFFE, 0xE000, elements.UNDEFINED) + inner + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        inner = seq + item + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return inner


@pytest.mark.parametrize("explicit", [True, False])
def test_skip_sequence_ends_after_the_delimiter_and_stops_hostile_nesting(explicit):
    body = _undefined_sequence(3)
    if not explicit:  # the same structure in implicit VR: element headers without VR
        body = body.replace(b"SQ\x00\x00", b"").replace(b"SH\x06\x00", b"\x06\x00\x00\x00")
    tag, _, length, start = elements.element(body, 0, explicit)
    assert (tag, length) == (0x0040A730, elements.UNDEFINED)
    assert elements.skip_sequence(body, start, explicit) == len(body)
    deep = _undefined_sequence(elements.MAX_DEPTH + 2)
    with pytest.raises(Malformed, match="nested"):
        elements.skip_sequence(deep, 12, True)
    with pytest.raises(Malformed):
        elements.skip_sequence(body[:-4], start, explicit)


def _files_with_meta():
    out = []
    for name in sorted(os.listdir(TEST_FILES)):
        path = TEST_FILES / name
        head = path.read_bytes()[:132] if path.is_file() else b""
        if elements.has_preamble(head):
            out.append(path)
    return out


def test_file_meta_matches_pydicom_on_every_test_file_with_a_preamble():
    files = _files_with_meta()
    assert len(files) > 50
    checked = 0
    for path in files:
        data = path.read_bytes()
        try:
            meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
        except Exception:  # noqa: BLE001 - a damaged test file: pydicom's answer is not the reference
            continue
        try:
            values, pos = elements.file_meta(data)
        except Malformed:
            continue  # damaged meta: the header parser hands these to pydicom
        if "TransferSyntaxUID" in meta:
            assert elements.uid_text(values[0x0010]) == str(meta.TransferSyntaxUID), path.name
        if "MediaStorageSOPClassUID" in meta:
            assert elements.uid_text(values[0x0002]) == str(meta.MediaStorageSOPClassUID), path.name
        assert pos >= 132 + 12
        # The first bytes only (discovery's head): what fits is read, nothing raises.
        cut, _ = elements.file_meta(data[:200], cut_ok=True)
        assert all(values[k] == v for k, v in cut.items())
        checked += 1
    assert checked > 50


def test_one_headerless_rule():
    assert elements.looks_headerless(Path(get_testdata_file("rtstruct.dcm")).read_bytes()[:512])  # implicit VR LE
    assert elements.looks_headerless(Path(get_testdata_file("ExplVR_BigEndNoMeta.dcm")).read_bytes()[:512])
    assert elements.looks_headerless(Path(get_testdata_file("ExplVR_LitEndNoMeta.dcm")).read_bytes()[:512])
    assert not elements.looks_headerless(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert not elements.looks_headerless(b"hello world, not dicom at all")
    assert not elements.looks_headerless(b"\x08\x00\x05\x00")  # too short for an element header
    # group 0008, element 0005, implicit VR with an odd or huge length: not plausible
    assert not elements.looks_headerless(struct.pack("<HHI", 0x0008, 0x0005, 7))
    assert not elements.looks_headerless(struct.pack("<HHI", 0x0008, 0x0005, 1 << 20))
