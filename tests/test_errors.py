"""Bad input gets a typed error naming the file and the reason, before any kernel runs."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

import fastdcm
from fastdcm import fastheader
from fastdcm.decoders import backends
from fastdcm.errors import (
    DecodeError,
    FastDcmError,
    InvalidOptionError,
    InvalidPixelModuleError,
    MissingDecoderError,
    NoImageError,
    NotDicomError,
    Status,
    TruncatedPixelDataError,
    UnsupportedTransferSyntaxError,
)

CT = get_testdata_file("CT_small.dcm")


def _write(tmp_path, name: str, ds: pydicom.Dataset) -> str:
    path = str(tmp_path / name)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ct(**changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(CT)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _raises(cls, path, fragment: str) -> FastDcmError:
    with pytest.raises(cls) as info:
        fastdcm.render(path)
    err = info.value
    assert err.path == str(path), err.path
    assert fragment.lower() in err.reason.lower(), err.reason
    assert str(path) in str(err)
    return err


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a DICOM file at all\n" * 10)
    err = _raises(NotDicomError, path, "not a DICOM file")
    assert err.status is Status.NOT_DICOM
    # the reason is fastdcm's, not pydicom's advice to its own callers ("Use force=True ...")
    assert "force" not in err.reason and "DICM" in err.reason and "raw dataset" in err.reason, err.reason


def test_missing_file_and_directory(tmp_path):
    _raises(NotDicomError, tmp_path / "nope.dcm", "no such file")
    _raises(NotDicomError, tmp_path, "directory")


def test_empty_and_tiny_files(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    _raises(NotDicomError, tmp_path / "empty.dcm", "bytes long")


@pytest.mark.parametrize("name", ["rtplan.dcm", "rtstruct.dcm"])
def test_no_image(name):
    path = get_testdata_file(name)
    err = _raises(NoImageError, path, "no pixel data")
    assert err.status is Status.NO_IMAGE


def test_pixel_data_shorter_than_header_promises(tmp_path):
    path = _write(tmp_path, "rows.dcm", _ct(Rows=1000))
    _raises(TruncatedPixelDataError, path, "need")


def test_file_cut_inside_pixel_data(tmp_path):
    data = open(CT, "rb").read()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 1000])
    err = _raises(TruncatedPixelDataError, path, "only")
    assert err.status is Status.TRUNCATED


def test_pixel_data_missing_entirely(tmp_path):
    ds = _ct()
    del ds.PixelData
    path = _write(tmp_path, "nopix.dcm", ds)
    _raises(TruncatedPixelDataError, path, "pixel data is missing")


def test_parser_stopped_early_is_not_silent(tmp_path):
    """An element whose length runs past the end stops pydicom's parser without an error:
    the pixel data is then silently absent from the dataset. fastdcm must notice."""
    data = bytearray(open(CT, "rb").read())
    ds = pydicom.dcmread(CT)
    # Patch the length of (0008,0060) Modality (explicit VR, 2-byte length) to 0xFFFF.
    tag = struct.pack("<HH", 0x0008, 0x0060) + b"CS"
    at = data.index(tag)
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFFF)
    path = tmp_path / "stopped.dcm"
    path.write_bytes(bytes(data))
    assert "Rows" in ds
    err = _raises(TruncatedPixelDataError, path, "pixel data is missing")
    assert "CT Image Storage" in err.reason


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"BitsStored": 17}, "Bits Stored"),
        ({"HighBit": 11}, "High Bit"),
        ({"BitsAllocated": 12}, "Bits Allocated"),
        ({"SamplesPerPixel": 2}, "Samples per Pixel"),
        ({"PixelRepresentation": 2}, "Pixel Representation"),
        ({"Rows": 0}, "Rows"),
        ({"NumberOfFrames": 0}, "Number of Frames"),
        ({"PhotometricInterpretation": "RGB"}, "RGB needs Samples per Pixel 3"),
        ({"PhotometricInterpretation": "HSV"}, "not supported"),
        ({"RescaleSlope": 0}, "Rescale"),
    ],
)
def test_invalid_pixel_module(tmp_path, changes, fragment):
    path = _write(tmp_path, "bad.dcm", _ct(**changes))
    err = _raises(InvalidPixelModuleError, path, fragment)
    assert err.status is Status.INVALID_PIXEL_MODULE


def test_huge_claims_fail_fast_without_allocating(tmp_path):
    ds = _ct(Rows=60000, Columns=60000, NumberOfFrames=1000)
    path = _write(tmp_path, "huge.dcm", ds)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidPixelModuleError) as info:
            fastdcm.render(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "over the limit" in info.value.reason
    assert peak < 20 * 2**20, peak


def test_many_frames_claimed_but_not_there(tmp_path):
    path = _write(tmp_path, "frames.dcm", _ct(NumberOfFrames=500))
    _raises(TruncatedPixelDataError, path, "500 frame(s)")


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder exists
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path)
    err = _raises(UnsupportedTransferSyntaxError, path, "not supported")
    assert err.status is Status.UNSUPPORTED_TRANSFER_SYNTAX


def test_a_transfer_syntax_no_one_knows_is_unsupported_not_a_decode_error(tmp_path):
    """A native file whose Transfer Syntax UID is no DICOM transfer syntax: pydicom reads its header
    (as explicit VR little endian) but will not read its pixels; that is the transfer syntax's status."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("999.888.777.1")
    path = tmp_path / "unknown_ts.dcm"
    ds.save_as(path)
    err = _raises(UnsupportedTransferSyntaxError, path, "999.888.777.1")
    assert err.status is Status.UNSUPPORTED_TRANSFER_SYNTAX
    assert fastdcm.open_image(path).spec.rows == 128  # the header is still read (fastdcm info shows it)


def test_missing_decoder_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(backends.Backend, "available", property(lambda self: False))
    path = get_testdata_file("JPEG2000.dcm")
    err = _raises(MissingDecoderError, path, "pip install imagecodecs")  # the fastest backend's package
    assert err.status is Status.MISSING_DECODER
    # an explicit choice that is not installed names its own package
    with pytest.raises(MissingDecoderError, match="pip install pylibjpeg pylibjpeg-openjpeg"):
        fastdcm.render(path, decoder="jpeg2000=pylibjpeg")


def test_decode_failure(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    broken = frames[0][:40] + bytes(len(frames[0]) - 40)  # header kept, codestream zeroed
    ds.PixelData = pydicom.encaps.encapsulate([broken])
    path = tmp_path / "broken_j2k.dcm"
    ds.save_as(path)
    err = _raises(DecodeError, path, "cannot be decoded")
    assert err.status is Status.DECODE_ERROR


def test_frame_out_of_range():
    with pytest.raises(InvalidOptionError) as info:
        fastdcm.render(CT, frame=1)
    assert "1 frame" in info.value.reason and info.value.path == CT


def test_voi_index_out_of_range():
    with pytest.raises(InvalidOptionError):
        fastdcm.render(get_testdata_file("MR_small.dcm"), voi="window", voi_index=7)
    with pytest.raises(InvalidOptionError):
        fastdcm.render(get_testdata_file("MR_small.dcm"), voi="voi_lut")


def test_errors_pickle_with_their_path():
    err = DecodeError("boom", path="/x/y.dcm")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is DecodeError and again.path == "/x/y.dcm" and again.reason == "boom"


def test_sources_other_than_paths():
    by_path = fastdcm.render(CT)
    data = open(CT, "rb").read()
    np.testing.assert_array_equal(fastdcm.render(data), by_path)
    np.testing.assert_array_equal(fastdcm.render(io.BytesIO(data)), by_path)
    np.testing.assert_array_equal(fastdcm.render(pydicom.dcmread(CT)), by_path)
    with pytest.raises(TypeError):
        fastdcm.render(12345)


def test_encapsulated_frames_missing(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.NumberOfFrames = 3  # one fragment for three frames
    path = tmp_path / "j2k_frames.dcm"
    ds.save_as(path)
    _raises(TruncatedPixelDataError, path, "1 fragment(s) for 3 frame(s)")
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.PixelData = ds.PixelData[:20]  # basic offset table and a cut item header
    path = tmp_path / "j2k_cut.dcm"
    ds.save_as(path)
    with pytest.raises((TruncatedPixelDataError, DecodeError)) as info:
        fastdcm.render(path)
    assert info.value.path == str(path)


def test_two_pixel_data_elements_are_refused(tmp_path):
    data = open(CT, "rb").read()
    # append a second, encapsulated-looking Pixel Data element after the first
    extra = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF)
    extra += struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    _, _, offset, length = fastheader.parse(data)
    end = offset + length
    path = tmp_path / "two_pixels.dcm"
    path.write_bytes(data[:end] + extra + data[end:])
    _raises(InvalidPixelModuleError, path, "second pixel data element")


FUZZ_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "dicom-fuzzing-corpus"


def _fuzz(name):
    found = list(FUZZ_DIR.rglob(name)) if FUZZ_DIR.is_dir() else []
    if not found:
        pytest.skip(f"{name} not in the fuzzing corpus")
    return found[0]


def test_what_pydicom_raises_on_a_damaged_file_is_that_files_status(tmp_path):
    """A meta element with an unknown VR: pydicom raises NotImplementedError when it reads it."""
    path = _fuzz("TC0695_meta_mixed_odd_vr_ZZ.dcm")
    image = fastdcm.open_image(path)
    with pytest.raises(fastdcm.NotDicomError, match="pydicom cannot read the header"):
        image.dataset  # noqa: B018
    src = tmp_path / "src"
    src.mkdir()
    (src / "x.dcm").write_bytes(path.read_bytes())
    report = fastdcm.convert([str(src)], str(tmp_path / "out"), workers=0, quiet=True, name="{PatientID}/{stem}", allow_phi=True)
    assert report.counts.get(fastdcm.Status.ERROR, 0) == 0 and report.counts[fastdcm.Status.NOT_DICOM] == 1


def test_what_a_dependency_says_is_one_line(capsys):
    """pydicom appends a traceback to some messages (its ``tag_in_exception``): a reason, a manifest
    field or a line of ``fastdcm info`` keeps the first line only."""
    from fastdcm import cli
    from fastdcm.errors import describe

    assert describe(ValueError("bad value\nTraceback (most recent call last):\n  File x")) == "ValueError: bad value"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    path = _fuzz("TC0913_sq_early_delim.dcm")  # a sequence delimiter read as an element of VR 'NONE'
    assert cli.main(["info", "--json", str(path)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "pydicom cannot read the dataset" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bug_in_fastdcm_stays_status_error(monkeypatch, tmp_path):
    from fastdcm.run import pipeline

    monkeypatch.setattr(pipeline, "output_name", None)  # "'NoneType' object is not callable", in pipeline.py
    src = tmp_path / "src"
    src.mkdir()
    (src / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    report = fastdcm.convert([str(src)], str(tmp_path / "out"), workers=0, quiet=True)
    assert report.counts[fastdcm.Status.ERROR] == 1


@pytest.mark.parametrize("size", [1 << 20, 2 << 30])
def test_a_zero_filled_file_after_a_preamble_is_not_dicom_without_reading_it_all(tmp_path, size, monkeypatch):
    """pydicom would read the zeros as empty (0000,0000) elements, 8 bytes at a time (~0.5 s/MiB)."""
    from fastdcm import header

    path = tmp_path / "zeros.dcm"
    with open(path, "wb") as f:  # sparse: no disk used
        f.write(b"\0" * 128 + b"DICM")
        f.truncate(132 + size)
    monkeypatch.setattr(pydicom, "dcmread", None)  # never reached (header.py imports it where it reads)
    read = []
    real_read = os.read

    def counting(fd, n):
        data = real_read(fd, n)
        read.append(len(data))
        return data

    monkeypatch.setattr(header.os, "read", counting)
    with pytest.raises(fastdcm.NotDicomError, match="zero bytes where its first element should be"):
        fastdcm.render(path)
    assert sum(read) == (0 if size > header._PEEK_ABOVE else size + 132)  # large: only a 64 KiB pread
