"""The fast header parser gives pydicom's answer on every file it accepts."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files

from fastdcm import fastheader, header
from fastdcm.errors import FastDcmError, InvalidPixelModuleError
from fastdcm.render import Image

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def _both(path, monkeypatch):
    fast = header.read_header(path)
    with monkeypatch.context() as m:
        m.setattr(fastheader, "parse", lambda buffer, total=None: None)
        slow = header.read_header(path)
    return fast, slow


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_fast_parser_agrees_with_pydicom(path, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fast, slow = _both(path, monkeypatch)
        except FastDcmError:
            return  # the error cases are covered in test_errors / test_corpus_render
    assert fast.spec == slow.spec
    if fast.attrs is fast.dataset:
        return  # the fast parser declined: both are pydicom's
    assert fast.frames == slow.frames  # the same fragments for every frame of encapsulated data
    a, b = Image(fast), Image(slow)
    for i in range(min(a.n_frames, 3)):
        try:
            ra = a.render_frame(i)
        except FastDcmError as exc:
            with pytest.raises(type(exc)):
                b.render_frame(i)
            continue
        rb = b.render_frame(i)
        np.testing.assert_array_equal(ra.array, rb.array)
        assert ra.voi == rb.voi and ra.decoder == rb.decoder


def test_fast_parser_is_used_for_plain_ct():
    data = open(get_testdata_file("693_UNCR.dcm"), "rb").read()
    parsed = fastheader.parse(data)
    assert parsed is not None
    ts, attrs, offset, length = parsed
    assert ts == fastheader.EXPLICIT_LE and attrs["Rows"] == 512 and length == 512 * 512 * 2
    assert attrs["WindowCenter"] is not None and offset + length <= len(data)
    # and the lazily parsed pydicom dataset is still there for name templates and `info`
    h = header.read_header(get_testdata_file("693_UNCR.dcm"))
    assert not isinstance(h.attrs, type(h.dataset)) and h.dataset.Rows == 512


@pytest.mark.parametrize("name", ["SC_rgb_expb.dcm", "image_dfl.dcm"])
def test_unusual_files_go_to_pydicom(name):
    """Big-endian and deflated files are left to pydicom."""
    data = open(get_testdata_file(name), "rb").read()
    assert fastheader.parse(data) is None


def _saved(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _palette_variant(kind: str) -> bytes:
    if kind.startswith("segmented"):  # the implicit-VR original, and written as explicit VR
        ds = pydicom.dcmread(get_testdata_file("gdcm-US-ALOKA-16.dcm"))
        if "explicit" in kind:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        return _saved(ds)
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    if "implicit" in kind:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    if kind.startswith("signed first value"):  # SS descriptors (implicit VR: by Pixel Representation), stored values below the first mapped one
        ds.PixelRepresentation = 1
        for c in ("Red", "Green", "Blue"):
            elem = ds[f"{c}PaletteColorLookupTableDescriptor"]
            elem.VR, elem.value = "SS", [256, -20, 16]
    elif kind.startswith("8-bit entries"):
        for c in ("Red", "Green", "Blue"):
            ds[f"{c}PaletteColorLookupTableDescriptor"].value = [256, 0, 8]
            data = np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2")
            ds[f"{c}PaletteColorLookupTableData"].value = (data >> 8).astype(np.uint8).tobytes()
    return _saved(ds)


@pytest.mark.parametrize(
    "kind",
    ["plain", "signed first value", "8-bit entries", "segmented explicit", "segmented",
     "plain implicit", "signed first value implicit"],
)
def test_palettes_are_read_on_the_fast_path_as_pydicom_reads_them(kind, monkeypatch):
    data = _palette_variant(kind)
    assert fastheader.parse(data) is not None
    fast, slow = _both(data, monkeypatch)
    assert fast.attrs is not fast.dataset and slow.attrs is slow.dataset
    a, b = Image(fast).render_frame(0), Image(slow).render_frame(0)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.voi == b.voi == "palette" and a.array.ndim == 3


def _with_un(representation: int) -> bytes:
    """A 4 x 4 palette colour image in explicit VR little endian whose Modality, Rows, Window Center
    (two values), Rescale Slope and LUT descriptors carry the VR UN."""
    import struct

    from fastdcm.elements import encode, part10

    us = lambda *v: struct.pack(f"<{len(v)}H", *v)  # noqa: E731
    desc = struct.pack("<HhH" if representation else "<3H", 16, -2 if representation else 2, 8)
    lut = np.arange(16, dtype=np.uint16) * 16
    sc, uid = b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3"
    meta = (encode(0x0002, 0x0001, "OB", bytes([0, 1])) + encode(0x0002, 0x0002, "UI", sc)
            + encode(0x0002, 0x0003, "UI", uid) + encode(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1"))
    body = (encode(0x0008, 0x0016, "UI", sc) + encode(0x0008, 0x0018, "UI", uid) + encode(0x0008, 0x0060, "UN", b"OT")
            + encode(0x0028, 0x0002, "US", us(1)) + encode(0x0028, 0x0004, "CS", b"PALETTE COLOR")
            + encode(0x0028, 0x0010, "UN", us(4)) + encode(0x0028, 0x0011, "US", us(4))
            + encode(0x0028, 0x0100, "US", us(8)) + encode(0x0028, 0x0101, "US", us(8)) + encode(0x0028, 0x0102, "US", us(7))
            + encode(0x0028, 0x0103, "US", us(representation)) + encode(0x0028, 0x1050, "UN", b"40\\400")
            + encode(0x0028, 0x1051, "DS", b"80\\800") + encode(0x0028, 0x1053, "UN", b"1")
            + b"".join(encode(0x0028, 0x1101 + c, "UN", desc) for c in range(3))
            + b"".join(encode(0x0028, 0x1201 + c, "OW", (lut + c).tobytes()) for c in range(3))
            + encode(0x7FE0, 0x0010, "OB", bytes(range(0, 32, 2))))
    return part10(meta, body)


@pytest.mark.parametrize("representation", [0, 1])
def test_explicit_un_values_of_known_tags_are_read_on_the_fast_path_as_pydicom_reads_them(representation, monkeypatch):
    """An explicit VR of UN on a tag the dictionary knows (a PACS that lost the VRs; pydicom's
    explicit_VR-UN.dcm): pydicom reads the value as the tag's own VR, and so does the fast path (it
    sent such files to pydicom's full parse before). The LUT descriptors' "US or SS" follows Pixel
    Representation, as for implicit VR."""
    data = _with_un(representation)
    parsed = fastheader.parse(data)
    assert parsed is not None
    attrs = parsed[1]
    read = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    for keyword in ("Modality", "Rows", "WindowCenter", "RescaleSlope", "RedPaletteColorLookupTableDescriptor",
                    "BluePaletteColorLookupTableDescriptor"):
        want = read[keyword].value
        if isinstance(want, (list, pydicom.multival.MultiValue)):
            want = tuple(want) if keyword.endswith("Descriptor") else [float(v) for v in want]
        assert attrs[keyword] == want, keyword
    fast, slow = _both(data, monkeypatch)
    assert fast.attrs is not fast.dataset and fast.spec == slow.spec
    a, b = Image(fast).render_frame(0), Image(slow).render_frame(0)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.voi == b.voi == "palette"
    # and pydicom's own test file of UN values takes the fast path, with pydicom's values
    un = get_testdata_file("explicit_VR-UN.dcm")
    parsed = fastheader.parse(open(un, "rb").read())
    assert parsed is not None and parsed[1]["RescaleSlope"] == 1.0 and parsed[1]["Modality"] == "CT"


def test_rgba_palettes_go_to_pydicom():
    """Alpha palette data makes apply_color_lut's answer RGBA: pydicom's path."""
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    ds.add_new(0x00281204, "OW", ds.RedPaletteColorLookupTableData)
    assert fastheader.parse(_saved(ds)) is None


def test_a_supplemental_palette_is_refused_on_both_paths(monkeypatch):
    """Pixel Presentation COLOR (a supplemental palette, which pydicom's apply_color_lut does not
    do) fails the same way whichever path read the header."""
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    ds.PixelPresentation = "COLOR"
    fast, slow = _both(_saved(ds), monkeypatch)
    assert fast.attrs is not fast.dataset
    for h in (fast, slow):
        with pytest.raises(InvalidPixelModuleError, match="Supplemental"):
            Image(h).render_frame(0)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_encapsulated_files_are_walked_too(name):
    """Encapsulated files: the compiled walk finds the first item of the pixel data."""
    data = open(get_testdata_file(name), "rb").read()
    parsed = fastheader.parse(data)
    assert parsed is not None
    ts, attrs, offset, length = parsed
    assert ts in fastheader.ENCAPSULATED and length == -1
    assert data[offset : offset + 4] == b"\xfe\xff\x00\xe0"  # the Basic Offset Table item
    h = header.read_header(get_testdata_file(name))
    assert h.spec.is_encapsulated and not h.spec.is_native_view and h.frames


def test_truncated_and_garbage_headers_fall_back():
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    _, _, offset, length = fastheader.parse(data)
    for cut in (140, 300, 1000, offset + length // 2):
        assert fastheader.parse(data[:cut]) is None
    assert fastheader.parse(b"\0" * 128 + b"DICM" + b"\xff" * 200) is None


# --------------------------------------------------------------------------- the compiled walk


FUZZ = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "dicom-fuzzing-corpus")


def _fuzz_files():
    if not os.path.isdir(FUZZ):
        return []
    return sorted(os.path.join(d, f) for d, _, names in os.walk(FUZZ) for f in names)


def _walks(buffer: bytes):
    try:
        meta = fastheader._file_meta(buffer)
    except (ValueError, fastheader._Unusual):  # parse() declines these (UnicodeDecodeError is a ValueError)
        return None
    if meta is None:
        return None
    ts, pos = meta
    explicit = ts != fastheader.IMPLICIT_LE  # as parse() walks it (encapsulated syntaxes are explicit VR)
    return fastheader._walk(buffer, pos, explicit), fastheader.walk_python(buffer, pos, explicit)


def test_compiled_walk_equals_its_twin_on_every_real_and_fuzzed_file():
    files = FILES + _fuzz_files()
    assert len(files) > 600, "the fuzzing corpus is missing: ../shared/corpora/dicom-fuzzing-corpus"
    walked = 0
    for path in files:
        with open(path, "rb") as f:
            both = _walks(f.read())
        if both is None:
            continue
        compiled, python = both
        assert compiled == python, path
        walked += compiled is not None
    assert walked > 100  # most native files are walked to their pixel data


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "liver_1frame.dcm"]),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(130, 5000)),
)
def test_compiled_walk_equals_its_twin_on_damaged_headers(name, flips, cut):
    """Random byte changes and truncations in real headers: the same answer, never a crash."""
    both = _walks(_damaged(name, flips, cut, first=132))
    if both is not None:
        assert both[0] == both[1]


def _damaged(name: str, flips: list[tuple[int, int]], cut: int | None, first: int) -> bytes:
    """Test file ``name`` with the bytes at ``flips`` positions (from ``first`` on) changed, cut at ``cut``."""
    data = bytearray(open(get_testdata_file(name), "rb").read())
    for pos, value in flips:
        if first <= pos < len(data):
            data[pos] = value
    return bytes(data if cut is None else data[:cut])


def _reads(buffer: bytes):
    """``kernels.read_header`` (through ``_read``) and its twin ``read_python``, side by side:
    (transfer syntax, meta end, explicit, pixel start, length, key, rows) or None each."""
    fastheader._keep_meta(None, None)
    compiled = fastheader._read(buffer)
    if compiled is not None:
        ts, explicit, start, length, key, rows = compiled
        pos = fastheader._LAST_META[1][1]
        compiled = (ts, pos, explicit, start, length, key, rows.tolist() if start >= 0 else None)
    try:
        python = fastheader.read_python(buffer)
    except ValueError:  # a meta element that does not fit: parse() declines it
        python = None
    if python is not None and python[3] < 0:
        python = python[:6] + (None,)
    return compiled, python


def test_compiled_read_equals_its_twin_on_every_real_and_fuzzed_file():
    files = FILES + _fuzz_files()
    assert len(files) > 600, "the fuzzing corpus is missing: ../shared/corpora/dicom-fuzzing-corpus"
    keyed = 0
    for path in files:
        with open(path, "rb") as f:
            compiled, python = _reads(f.read())
        assert compiled == python, path
        keyed += compiled is not None and compiled[5] is not None
    assert keyed > 100


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["693_UNCR.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "OBXXXX1A.dcm", "rtplan.dcm"]),
    st.lists(st.tuples(st.integers(120, 4000), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, 5000)),
)
def test_compiled_read_equals_its_twin_on_damaged_headers(name, flips, cut):
    """Random byte changes (the preamble's magic and the file meta included) and truncations."""
    compiled, python = _reads(_damaged(name, flips, cut, first=0))
    assert compiled == python


def test_series_share_decoded_values_but_huge_values_are_not_cached(tmp_path):
    """Slices with the same header values share one Attributes (and what is kept on it); a
    header whose values run past the cacheable size is decoded each time and shared with none."""
    import pydicom

    path = get_testdata_file("693_UNCR.dcm")
    data = open(path, "rb").read()
    first, second = fastheader.parse(data)[1], fastheader.parse(data)[1]
    assert first is second

    ds = pydicom.dcmread(path)
    ds.WindowCenter = [ds.WindowCenter] * 2000  # ~6 KB of DS text: a legal but absurd header
    ds.WindowWidth = [ds.WindowWidth] * 2000
    big = tmp_path / "big.dcm"
    ds.save_as(big)
    before = len(fastheader._DECODED)
    parsed = fastheader.parse(big.read_bytes())
    assert parsed is not None and len(parsed[1]["WindowCenter"]) == 2000
    assert len(fastheader._DECODED) == before and fastheader.parse(big.read_bytes())[1] is not parsed[1]
    np.testing.assert_array_equal(Image(header.read_header(str(big))).render_frame(0).array,
                                  Image(header.read_header(path)).render_frame(0).array)


def test_the_file_meta_kept_is_the_same_objects_only():
    """_file_meta keeps the last buffer's answer (a header is read twice per input): another
    buffer, even an equal one, or a mutable one, is read again."""
    from pydicom.data import get_testdata_file

    explicit = open(get_testdata_file("CT_small.dcm"), "rb").read()
    implicit = open(get_testdata_file("MR_small_implicit.dcm"), "rb").read()
    first = fastheader._file_meta(explicit)
    assert fastheader._file_meta(explicit) is first and first[0] == "1.2.840.10008.1.2.1"
    assert fastheader._file_meta(implicit)[0] == "1.2.840.10008.1.2"
    mutable = bytearray(explicit)
    assert fastheader._file_meta(mutable) == first
    mutable[128:132] = b"XXXX"  # no longer a DICOM preamble
    assert fastheader._file_meta(mutable) is None


def test_threads_walking_headers_at_once_each_get_their_own_answer():
    """The compiled walk releases the GIL and reuses scratch arrays: one set per thread, so
    headers parsed on several threads at once (a data loader's threads calling render) each get
    the values of their own file."""
    from concurrent.futures import ThreadPoolExecutor

    buffers = []
    for path in FILES:
        with open(path, "rb") as f:
            data = f.read()
        if fastheader.parse(data) is not None:
            buffers.append(data)
    assert len(buffers) > 40
    expected = [_parsed(data) for data in buffers]

    def walk(offset):
        order = [(i + offset) % len(buffers) for i in range(len(buffers))]
        return [(i, _parsed(buffers[i])) for _ in range(20) for i in order]

    with ThreadPoolExecutor(4) as pool:
        for results in pool.map(walk, range(0, 40, 10)):
            for i, got in results:
                assert got == expected[i], i


def _parsed(data):
    """What the fast parser read of ``data``: the transfer syntax, the pixel data's place and the
    wanted values' rows (their start, length, VR) straight from the walk's scratch arrays."""
    fastheader._DECODED.clear()  # every call walks and decodes (no answer from the series cache)
    read = fastheader._read(data)
    ts, explicit, start, length, key, rows = read
    return ts, explicit, start, length, key, rows.tolist() if isinstance(rows, np.ndarray) else rows
