"""Large files read in parts: the header from the first bytes, then only the frame asked for.

``header.READ_IN_PARTS_ABOVE`` is lowered here so that small generated files take the path
large archives' files take (cine loops, tomosynthesis, multi-frame CT). Every frame must equal
what the whole-file read gives, the whole file must never be read, and anything the first bytes
cannot settle must fall back to the whole-file read.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

import fastdcm
from fastdcm import fastheader, header
from fastdcm.decoders import stored_frame
from fastdcm.decoders.frames import FileRanges
from fastdcm.errors import TruncatedPixelDataError
from fastdcm.render import open_image
from fastdcm.run.tags import _fast, extract_from, parse_tags

FRAMES = 7


def _frames(rows: int = 64, cols: int = 48) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(-1000, 3000, (FRAMES, rows, cols), dtype=np.int16)


def _multiframe(path, ts=ExplicitVRLittleEndian, encode=None, has_bot=True) -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    arr = _frames()
    ds.Rows, ds.Columns = arr.shape[1:]
    ds.NumberOfFrames = FRAMES
    if encode is None:
        ds.PixelData = arr.tobytes()
    else:
        ds.PixelData = encapsulate([encode(a) for a in arr], has_bot=has_bot)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian)
    return arr


def _whole(path, monkeypatch, frame):
    with monkeypatch.context() as m:
        m.setattr(header, "READ_IN_PARTS_ABOVE", 1 << 40)
        image = open_image(path)
        assert not isinstance(image._header.data, FileRanges)
        return image.render_frame(frame).array


@pytest.fixture
def in_parts(monkeypatch):
    """Files over 1 kB read in parts, the header from the first 8 kB (CT_small's runs to byte 6,310); the whole-file read raises
    (a test that wants it back uses _whole)."""
    monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1024)
    monkeypatch.setattr(header, "HEAD_BYTES", 8192)
    whole = header._read_all

    def refused(fd, size):
        raise AssertionError("the whole file was read")

    monkeypatch.setattr(header, "_read_all", refused)
    return whole


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_native_frames_are_read_alone_and_equal_the_whole_read(tmp_path, monkeypatch, in_parts, ts):
    path = tmp_path / "mf.dcm"
    arr = _multiframe(path, ts)
    image = open_image(path)
    assert isinstance(image._header.data, FileRanges) and len(image.header_bytes) < os.path.getsize(path)
    assert np.array_equal(stored_frame(image._header, 3).view(np.int16), arr[3])  # the stored values themselves
    got = [image.render_frame(f).array for f in range(FRAMES)]
    monkeypatch.setattr(header, "_read_all", in_parts)
    for f in range(FRAMES):
        assert np.array_equal(got[f], _whole(path, monkeypatch, f))


@pytest.mark.parametrize("has_bot", [True, False])
def test_encapsulated_frames_are_read_alone_and_equal_the_whole_read(tmp_path, monkeypatch, in_parts, has_bot):
    imagecodecs = pytest.importorskip("imagecodecs")
    path = tmp_path / "mf.dcm"
    arr = _multiframe(path, JPEGLSLossless, lambda a: imagecodecs.jpegls_encode(a.view(np.uint16)), has_bot)
    image = open_image(path)
    assert isinstance(image._header.data, FileRanges) and len(image._header.frames) == FRAMES
    got = [image.render_frame(f).array for f in range(FRAMES)]
    assert np.array_equal(stored_frame(image._header, 5).view(np.int16), arr[5])
    monkeypatch.setattr(header, "_read_all", in_parts)
    for f in range(FRAMES):
        assert np.array_equal(got[f], _whole(path, monkeypatch, f))


def test_iter_frames_reads_in_parts(tmp_path, monkeypatch, in_parts):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    frames = list(fastdcm.iter_frames(path, frames="every:3"))
    monkeypatch.setattr(header, "_read_all", in_parts)
    assert len(frames) == 3 and all(np.array_equal(a, _whole(path, monkeypatch, f)) for a, f in zip(frames, (0, 3, 6)))


def test_a_file_changed_after_its_header_was_read_is_refused(tmp_path, in_parts):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    image = open_image(path)
    with open(path, "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(TruncatedPixelDataError, match="changed after its header was read"):
        image.render_frame(1)


def test_a_header_longer_than_the_first_bytes_is_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1024)
    monkeypatch.setattr(header, "HEAD_BYTES", 300)  # the file meta and part of the dataset
    image = open_image(path)
    assert not isinstance(image._header.data, FileRanges)
    assert np.array_equal(image.render_frame(2).array, _whole(path, monkeypatch, 2))


def test_a_truncated_large_file_fails_as_it_does_when_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(TruncatedPixelDataError) as whole:
        _whole(path, monkeypatch, 0)
    monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1024)
    monkeypatch.setattr(header, "HEAD_BYTES", 8192)
    with pytest.raises(TruncatedPixelDataError) as parts:
        fastdcm.render(path)
    assert str(parts.value) == str(whole.value)


def test_the_walk_and_its_twin_agree_on_a_files_first_bytes(tmp_path):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    data = path.read_bytes()
    head = data[:8192]
    meta = fastheader._file_meta(head)
    assert meta is not None
    ts, pos = meta
    kernel = fastheader._walk(head, pos, True, total=len(data))
    twin = fastheader.walk_python(head, pos, True, total=len(data))
    assert kernel is not None and kernel == twin and kernel[:2] == fastheader._walk(data, pos, True)[:2]
    assert fastheader._walk(head, pos, True) is None  # without the file's size the pixel data runs past the end


def test_tags_are_read_from_the_first_bytes(tmp_path, monkeypatch, in_parts):
    path = tmp_path / "mf.dcm"
    _multiframe(path)
    specs = parse_tags(None)
    image = open_image(path)
    fast = _fast(image.header_bytes, specs, image.file_size)
    assert fast is not None and fast == extract_from(image, specs)
    monkeypatch.setattr(header, "_read_all", in_parts)
    monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1 << 40)
    assert fast == extract_from(open_image(path), specs)


def test_threads_may_share_an_image_read_in_parts(tmp_path, monkeypatch, in_parts):
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "mf.dcm"
    _multiframe(path)
    image = open_image(path)
    alone = [image.render_frame(f).array for f in range(FRAMES)]
    with ThreadPoolExecutor(4) as pool:
        shared = list(pool.map(lambda f: image.render_frame(f % FRAMES).array, range(8 * FRAMES)))
    assert all(np.array_equal(a, alone[i % FRAMES]) for i, a in enumerate(shared))


FUZZ = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpora", "dicom-fuzzing-corpus")


def _outcome(path):
    """What open_image and the first and last frame give: arrays, or the typed errors' names."""
    from fastdcm.errors import FastDcmError

    try:
        image = open_image(path)
    except FastDcmError as exc:
        return [type(exc).__name__], None
    out = []
    for k in sorted({0, image.n_frames - 1}):
        try:
            out.append(image.render_frame(k).array)
        except FastDcmError as exc:
            out.append(type(exc).__name__)
    return out, image._header.data


def test_every_test_and_fuzzed_file_ends_the_same_read_in_parts(monkeypatch):
    """On pydicom's test files and the fuzzing corpus, with every file over 1 kB read in parts (the
    header from its first 8 kB): the same images, or the same typed errors, as read whole."""
    import warnings

    from pydicom.data import get_testdata_files

    fuzz = sorted(os.path.join(d, f) for d, _, names in os.walk(FUZZ) for f in names) if os.path.isdir(FUZZ) else []
    if not fuzz:
        pytest.skip(f"the fuzzing corpus is not at {FUZZ}")
    files = fuzz + sorted(f for f in get_testdata_files() if os.path.isfile(f))
    in_parts = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1 << 62)
            whole, _ = _outcome(path)
            monkeypatch.setattr(header, "READ_IN_PARTS_ABOVE", 1024)
            monkeypatch.setattr(header, "HEAD_BYTES", 8192)
            parts, data = _outcome(path)
            in_parts += isinstance(data, FileRanges)
            assert len(parts) == len(whole), path
            for a, b in zip(parts, whole):
                if isinstance(a, str) or isinstance(b, str):
                    assert a == b, (path, a, b)
                else:
                    assert a.shape == b.shape and np.array_equal(a, b), path
    assert in_parts > 300  # (the path was taken: 482 files of 843 here)
