"""The decoder registry: frames from fragments, every backend against the others, generated
HTJ2K / 12-bit JPEG / lossless files against their uncompressed originals, an independent
decoder (dcmtk) for the 12-bit lossy JPEGs, fallback, explicit choice and crash containment."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings, strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID

import fastdcm
from fastdcm.decoders import backends, frames, stored_frame
from fastdcm.decoders import decoders as decoder_table
from fastdcm.errors import DecodeError, TruncatedPixelDataError
from fastdcm.header import read_header

from .test_corpus_render import LOSSY_COLOUR_TOLERANCE, LOSSY_JPEG, NO_PYDICOM_REFERENCE

imagecodecs = pytest.importorskip("imagecodecs")

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _encapsulated_files():
    out = []
    for path in FILES:
        try:
            ds = _read(path)
            ts = UID(ds.file_meta.TransferSyntaxUID)
        except Exception:
            continue
        if ts.is_compressed and backends.family(str(ts)) and "PixelData" in ds:
            out.append(path)
    return out


ENCAPSULATED = _encapsulated_files()


def _header(path):
    try:
        return read_header(path)
    except fastdcm.FastDcmError:
        return None


def test_there_are_encapsulated_test_files():
    assert len(ENCAPSULATED) >= 50
    assert {backends.family(str(_read(p).file_meta.TransferSyntaxUID)) for p in ENCAPSULATED} == {
        "jpeg", "jpegls", "jpeg2000", "rle"
    }


# --------------------------------------------------------------------------- frames from fragments


@pytest.mark.parametrize("path", ENCAPSULATED, ids=os.path.basename)
def test_frame_table_agrees_with_pydicom(path):
    """Each frame's bytes, found by our walk of the items, are pydicom's generate_frames."""
    h = _header(path)
    if h is None:
        return  # header errors are test_corpus_render's
    ds = _read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = list(generate_frames(ds.PixelData, number_of_frames=h.spec.number_of_frames))
    got = [bytes(frames.frame_bytes(h.data, r)) for r in h.frames]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.rstrip(b"\0") == e.rstrip(b"\0")  # pydicom may strip the padding byte


def test_frame_table_rules():
    a, b, c = b"\xff\xd8" + b"a" * 10, b"b" * 6, b"\xff\xd8" + b"c" * 4
    # no offset table, more fragments than frames: split where a codestream starts
    data = b"\xfe\xff\x00\xe0\0\0\0\0" + b"".join(  # an empty Basic Offset Table, then the fragments
        b"\xfe\xff\x00\xe0" + len(x).to_bytes(4, "little") + x for x in (a, b, c)
    ) + b"\xfe\xff\xdd\xe0\0\0\0\0"
    table = frames.frame_table(data, 0, 2)
    assert [bytes(frames.frame_bytes(data, r)) for r in table] == [a + b, c]
    assert len(frames.frame_table(data, 0, 3)) == 3  # as many fragments as frames: one each
    four = data[:-8] + b"\xfe\xff\x00\xe0" + len(b).to_bytes(4, "little") + b + data[-8:]
    with pytest.raises(DecodeError, match="cannot be told apart"):
        frames.frame_table(four, 0, 3)  # 4 fragments, 2 codestream starts, 3 frames
    # the basic offset table decides
    value = encapsulate([a, c], has_bot=True)  # a Dataset's value: no sequence delimiter
    assert [bytes(frames.frame_bytes(value, r)) for r in frames.frame_table(value, 0, 2, delimited=False)] == [a, c]
    enc = value + b"\xfe\xff\xdd\xe0\0\0\0\0"  # as it lies in a file
    assert [bytes(frames.frame_bytes(enc, r)) for r in frames.frame_table(enc, 0, 2)] == [a, c]
    with pytest.raises(TruncatedPixelDataError, match="entries for 3"):
        frames.frame_table(enc, 0, 3)
    # cut short, lying lengths
    with pytest.raises(TruncatedPixelDataError, match="without its sequence delimiter"):
        frames.frame_table(enc[:-8], 0, 2)
    bad = bytearray(enc)
    bad[20:24] = (1 << 30).to_bytes(4, "little")  # after the 16-byte offset table: the first fragment claims 1 GiB
    with pytest.raises(TruncatedPixelDataError, match="claims"):
        frames.frame_table(bytes(bad), 0, 2)
    with pytest.raises(TruncatedPixelDataError, match="Basic Offset Table"):
        frames.frame_table(b"\0" * 16, 0, 1)


# --------------------------------------------------------------------------- every backend, the same picture

LOSSY = set(LOSSY_JPEG)
#: (file, backend) pairs where a fallback backend cannot decode what the default decodes.
KNOWN_BACKEND_FAILURES = {
    ("JPEG-lossy.dcm", "pylibjpeg"),  # libjpeg 9: "misplaced marker segment" (12-bit process 4)
    ("GDCMJ2K_TextGBR.dcm", "pillow"),  # a JPX file (rreq box): Pillow "broken data stream"; imagecodecs reads it
}


@pytest.mark.parametrize("path", ENCAPSULATED, ids=os.path.basename)
def test_every_backend_renders_the_same(path):
    h = _header(path)
    if h is None:
        return
    spec = h.spec
    ts = spec.transfer_syntax_uid
    image = fastdcm.open_image(path)
    try:
        default = image.render_frame(0)
    except DecodeError:
        return  # damaged on purpose: every backend must fail, checked below
    small = spec.rows * spec.columns < backends.SMALL_FRAME_PIXELS and backends.small_frame_first(ts, spec.bits_allocated)
    assert default.decoder == (small or "imagecodecs")
    fam = backends.family(ts)
    for b in backends.chain(ts):
        if not (b.available and b.supports(spec)) or b.name == default.decoder:
            continue
        options = fastdcm.RenderOptions(decoder={fam: b.name})
        if (os.path.basename(path), b.name) in KNOWN_BACKEND_FAILURES:
            with pytest.raises(DecodeError):
                image.render_frame(0, options)
            continue
        got = image.render_frame(0, options)
        assert got.decoder == b.name
        diff = np.abs(got.array.astype(int) - default.array.astype(int))
        if ts in LOSSY:
            limit = LOSSY_COLOUR_TOLERANCE if spec.samples_per_pixel == 3 else 1
            assert diff.max() <= limit and diff.mean() < 0.5, (b.name, diff.max(), diff.mean())
        else:  # lossless, JPEG-LS near-lossless and JPEG 2000: decoding is exact
            assert diff.max() == 0, (b.name, diff.max())



@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_interleave_puts_planes_last(dtype):
    planes = np.arange(3 * 5 * 7, dtype=dtype).reshape(3, 5, 7)
    out = backends.interleave(planes)
    assert out.flags.c_contiguous and out.dtype == dtype and out.shape == (5, 7, 3)
    assert np.array_equal(out, planes.transpose(1, 2, 0))


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"], ids=["rle", "jpegls"])
def test_ybr_full_from_a_codec_is_converted_as_pydicom_does(ts, tmp_path):
    """A YBR_FULL frame the codec returns unconverted (RLE, JPEG-LS): RGB bit for bit as
    pydicom's pixel_array gives it (kernels.ybr_full_to_rgb)."""
    from pydicom.pixels import convert_color_space

    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    rng = np.random.default_rng(3)  # every value range, not only the test image's
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL")
    ybr[::7] = rng.integers(0, 256, ybr[::7].shape, dtype=np.uint8)
    ds.PhotometricInterpretation = "YBR_FULL"
    if ts == "1.2.840.10008.1.2.5":
        ds.compress(ts, ybr, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = UID(ts)
        ds.PixelData = encapsulate([imagecodecs.jpegls_encode(ybr)])
        ds["PixelData"].is_undefined_length = True
    path = tmp_path / "ybr.dcm"
    ds.save_as(path, enforce_file_format=True)
    want = pydicom.dcmread(path).pixel_array
    assert want.shape == ybr.shape
    assert np.array_equal(fastdcm.render(path), want)


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm", "color-pl.dcm"])
def test_planar_colour_matches_pydicom(name):
    """RLE (always by plane) and native Planar Configuration 1: interleaved as pydicom does."""
    path = get_testdata_file(name)
    want = pydicom.dcmread(path).pixel_array
    want = want[0] if want.ndim == 4 else want
    got = stored_frame(read_header(path), 0)
    assert got.flags.c_contiguous and np.array_equal(got, want)

@pytest.mark.parametrize("name", ["SC_rgb_jpeg_lossy_gdcm.dcm", "examples_ybr_color.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg.dcm"])
def test_jpeg_colour_rule_is_pydicoms(name):
    """With pydicom's own JPEG library, fastdcm's colour handling gives pydicom's picture within 1."""
    from .naive import reference

    path = get_testdata_file(name)
    got = fastdcm.render(path, decoder="jpeg=pylibjpeg")
    assert np.abs(got.astype(int) - reference(path, 0).astype(int)).max() <= 1


def _pydicom_jpeg_markers(data):
    utils = pytest.importorskip("pydicom.pixels.utils")
    if not hasattr(utils, "_get_jpg_parameters"):
        pytest.skip("pydicom no longer has _get_jpg_parameters (private) to hold jpeg_markers to")
    info = utils._get_jpg_parameters(data)
    return info.get("component_ids"), {k: bytes(v) for k, v in info.get("app", {}).items()}


def test_jpeg_markers_read_every_test_files_jpeg_as_pydicom_does():
    """The component ids and APP segments that decide whether a colour JPEG holds YCbCr, read as
    pydicom reads them, on every JPEG and JPEG-LS frame of the test files (two a file), whole and
    cut at 20 random points each (bytes and memoryview alike)."""
    import random

    rng = random.Random(0)
    checked = with_ids = 0
    for path in ENCAPSULATED:
        ds = _read(path)
        if backends.family(str(ds.file_meta.TransferSyntaxUID)) not in ("jpeg", "jpegls"):
            continue
        try:
            first = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))[:2]
        except Exception:
            continue
        for frame in first:
            for cut in [len(frame)] + [rng.randrange(0, min(len(frame), 2000)) for _ in range(20)]:
                data = frame[:cut]
                want = _pydicom_jpeg_markers(data)
                assert backends.jpeg_markers(data) == want, (os.path.basename(path), cut)
                assert backends.jpeg_markers(memoryview(data)) == want
                checked += 1
                with_ids += want[0] is not None
    assert checked > 500 and with_ids > 100


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0xC0, 0xC2, 0xC4, 0xDB, 0xE0, 0xE1, 0xEE, 0xF7, 0xDA, 0xFE, 0xD9]),
                          st.binary(max_size=40)), max_size=6), st.binary(max_size=30))
def test_jpeg_markers_agree_with_pydicom_on_made_up_streams(segments, tail):
    data = b"\xff\xd8" + b"".join(bytes((0xFF, m)) + (len(body) + 2).to_bytes(2, "big") + body for m, body in segments) + tail
    assert backends.jpeg_markers(data) == _pydicom_jpeg_markers(data)


@pytest.mark.parametrize("name", ["emri_small_jpeg_2k_lossless.dcm", "SC_rgb_rle_2frame.dcm", "JPEG-LL.dcm"])
def test_a_dataset_renders_like_its_file(name):
    path = get_testdata_file(name)
    ds = _read(path)
    for frame in range(int(ds.get("NumberOfFrames", 1) or 1)):
        np.testing.assert_array_equal(fastdcm.render(ds, frame=frame), fastdcm.render(path, frame=frame))


def test_damaged_codestream_fails_with_every_backend():
    path = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")
    with pytest.raises(DecodeError) as info:
        fastdcm.render(path)
    assert "imagecodecs:" in info.value.reason and "pylibjpeg:" in info.value.reason


# --------------------------------------------------------------------------- generated files


def _base(bits_stored=16, signed=True):
    """Real CT pixels (CT_small) as a template dataset and its stored values."""
    ds = _read(get_testdata_file("CT_small.dcm"))
    arr = ds.pixel_array.astype(np.int32)
    if bits_stored < 16 or not signed:
        arr = np.clip(arr - arr.min(), 0, (1 << bits_stored) - 1)
        arr = arr.astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        ds.RescaleIntercept = 0
    else:
        arr = arr.astype(np.int16)
    return ds, arr


def _save(ds, arr, ts, codestream, tmp_path, name, frames_=1):
    out = ds.copy()
    out.file_meta = ds.file_meta.copy()
    out.file_meta.TransferSyntaxUID = UID(ts)
    out.PixelData = encapsulate([codestream] * frames_, has_bot=True)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    if frames_ > 1:
        out.NumberOfFrames = frames_
    path = tmp_path / name
    out.save_as(path, enforce_file_format=True)
    native = ds.copy()
    native.PixelData = arr.tobytes()
    native.file_meta = ds.file_meta.copy()
    native.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if frames_ > 1:
        native.NumberOfFrames = frames_
        native.PixelData = arr.tobytes() * frames_
    ref = tmp_path / ("native_" + name)
    native.save_as(ref, enforce_file_format=True)
    return str(path), str(ref)


LOSSLESS_CASES = [
    ("htj2k", "1.2.840.10008.1.2.4.201", lambda a: imagecodecs.htj2k_encode(a, reversible=True)),
    # OpenJPH writes its own progression order: this checks the decode path of the RPCL syntax
    ("htj2k_rpcl", "1.2.840.10008.1.2.4.202", lambda a: imagecodecs.htj2k_encode(a, reversible=True)),
    ("jpeg_lossless_sv1", "1.2.840.10008.1.2.4.70", lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=1)),
    ("jpeg_lossless_p14", "1.2.840.10008.1.2.4.57", lambda a: imagecodecs.jpeg8_encode(a, lossless=True, predictor=6)),
    ("jpegls", "1.2.840.10008.1.2.4.80", lambda a: imagecodecs.jpegls_encode(a)),
    ("j2k_lossless", "1.2.840.10008.1.2.4.90", lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, codecformat="J2K")),
]


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("case", LOSSLESS_CASES, ids=lambda c: c[0])
def test_lossless_generated_file_is_bit_exact(case, bits, tmp_path):
    name, ts, encode = case
    ds, arr = _base(bits, signed=bits == 16)
    if name.startswith(("jpeg_lossless", "jpegls")) and arr.dtype == np.int16:
        arr = arr.view(np.uint16)  # these codecs code unsigned samples; the header says signed
    path, ref = _save(ds, arr, ts, encode(arr), tmp_path, f"{name}.dcm", frames_=3)
    for frame in (0, 2):
        for kw in ({}, {"window": (40, 400)}, {"depth": 16}):
            np.testing.assert_array_equal(fastdcm.render(path, frame=frame, **kw), fastdcm.render(ref, frame=frame, **kw))


@pytest.mark.parametrize(
    "name,ts,encode",
    [
        ("htj2k_lossy", "1.2.840.10008.1.2.4.203", lambda a: imagecodecs.htj2k_encode(a, reversible=False)),
        ("jpeg12", "1.2.840.10008.1.2.4.51", lambda a: imagecodecs.jpeg8_encode(a, level=95, bitspersample=12)),
    ],
)
def test_lossy_generated_file_within_codec_error(name, ts, encode, tmp_path):
    ds, arr = _base(12, signed=False)
    path, ref = _save(ds, arr, ts, encode(arr), tmp_path, f"{name}.dcm")
    image = fastdcm.open_image(path)
    assert image.spec.transfer_syntax_uid == ts
    got = fastdcm.render(path, window=(1100, 1200)).astype(int)
    want = fastdcm.render(ref, window=(1100, 1200)).astype(int)
    diff = np.abs(got - want)
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())


@pytest.mark.parametrize("samples", [1, 3])
def test_lossy_8_bit_htj2k_keeps_its_highlights(samples, tmp_path):
    """Saturated samples of a lossy 8-bit HTJ2K stream stay bright with the default backend
    (imagecodecs' OpenJPH path wraps them to 0, which is why OpenJPEG is tried first)."""
    us = _read(get_testdata_file("US1_J2KR.dcm"))
    rgb = us.pixel_array  # real ultrasound, RGB, many samples at 255
    arr = np.ascontiguousarray(rgb if samples == 3 else rgb[..., 0])
    ds = us.copy()
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    ds.SamplesPerPixel = samples
    if samples == 1:
        del ds.PlanarConfiguration
    path, _ = _save(ds, arr, "1.2.840.10008.1.2.4.203", imagecodecs.htj2k_encode(arr, reversible=False), tmp_path, "ht8.dcm")
    got = fastdcm.render(path, voi="none").astype(int)
    diff = np.abs(got - arr.astype(int))
    assert diff.max() <= 8 and diff.mean() < 0.5, (diff.max(), diff.mean())


# --------------------------------------------------------------------------- an independent decoder

DCMDJPEG = shutil.which("dcmdjpeg")


def _dcmtk_stored(path, tmp_path):
    out = tmp_path / "dcmtk.dcm"
    subprocess.run([DCMDJPEG, str(path), str(out)], check=True, capture_output=True, timeout=60)
    return _read(out).pixel_array


@pytest.mark.skipif(DCMDJPEG is None, reason="dcmtk's dcmdjpeg is not on PATH (apt-get install dcmtk)")
@pytest.mark.parametrize("name", sorted(NO_PYDICOM_REFERENCE) + ["JPGExtended.dcm"])
def test_12_bit_lossy_jpeg_matches_dcmtk(name, tmp_path):
    path = get_testdata_file(name)
    want = _dcmtk_stored(path, tmp_path).astype(int)
    got = stored_frame(read_header(path), 0).astype(int) & 0xFFF
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # two conforming IDCTs
    assert fastdcm.open_image(path).spec.bits_stored == 12  # the mask above keeps the stored bits


@pytest.mark.skipif(DCMDJPEG is None, reason="dcmtk's dcmdjpeg is not on PATH (apt-get install dcmtk)")
def test_generated_12_bit_jpeg_matches_dcmtk(tmp_path):
    ds, arr = _base(12, signed=False)
    path, _ = _save(ds, arr, "1.2.840.10008.1.2.4.51", imagecodecs.jpeg8_encode(arr, level=90, bitspersample=12), tmp_path, "j12.dcm")
    want = _dcmtk_stored(path, tmp_path).astype(int)
    got = stored_frame(read_header(path), 0).astype(int)
    assert np.abs(got - want).max() <= 1


# --------------------------------------------------------------------------- choice, fallback, containment

RLE = get_testdata_file("emri_small_RLE.dcm")


def test_explicit_choice_and_its_errors():
    got = fastdcm.open_image(RLE).render_frame(3, fastdcm.RenderOptions(decoder="rle=pydicom"))
    assert got.decoder == "pydicom"
    np.testing.assert_array_equal(got.array, fastdcm.render(RLE, frame=3))
    assert fastdcm.RenderOptions(decoder="RLE=PyDicom,1.2.840.10008.1.2.4.90=pylibjpeg").decoder == (
        ("1.2.840.10008.1.2.4.90", "pylibjpeg"), ("rle", "pydicom")
    )
    for bad, message in (("rle", "look like"), ("mpeg=x", "unknown decoder family"), ("rle=pyjpegls", "choose from")):
        with pytest.raises(ValueError, match=message):
            fastdcm.RenderOptions(decoder=bad)


def test_small_near_lossless_frames_of_more_than_8_bits_go_to_pyjpegls_first(tmp_path):
    """The one exception to PREFERENCE's order (backends.small_frame_first): measured set-up cost."""
    small16 = fastdcm.open_image(get_testdata_file("JPEGLSNearLossless_16.dcm"))  # 50 x 10, 16 bits
    assert small16.render_frame(0).decoder == "pyjpegls" and small16.decoder_for(None) == "pyjpegls"
    np.testing.assert_array_equal(
        small16.render_frame(0).array, small16.render_frame(0, fastdcm.RenderOptions(decoder="jpegls=imagecodecs")).array
    )
    assert fastdcm.open_image(get_testdata_file("JPEGLSNearLossless_08.dcm")).render_frame(0).decoder == "imagecodecs"
    ds, arr = _base(12, signed=False)  # 128 x 128: not small
    assert arr.shape[0] * arr.shape[1] == backends.SMALL_FRAME_PIXELS
    path, _ = _save(ds, arr, "1.2.840.10008.1.2.4.81", imagecodecs.jpegls_encode(arr, level=2), tmp_path, "nl.dcm")
    assert fastdcm.open_image(path).render_frame(0).decoder == "imagecodecs"
    crop = np.ascontiguousarray(arr[:64, :64])  # small, but lossless: no such cost
    ds.Rows = ds.Columns = 64
    lossless, _ = _save(ds, crop, "1.2.840.10008.1.2.4.80", imagecodecs.jpegls_encode(crop), tmp_path, "ll.dcm")
    assert fastdcm.open_image(lossless).render_frame(0).decoder == "imagecodecs"
    near, _ = _save(ds, crop, "1.2.840.10008.1.2.4.81", imagecodecs.jpegls_encode(crop, level=2), tmp_path, "nl64.dcm")
    assert fastdcm.open_image(near).render_frame(0).decoder == "pyjpegls"
    assert np.abs(stored_frame(read_header(near), 0).astype(int) - crop).max() <= 2  # NEAR 2


def _failing(exc):
    def decode(data, spec):
        raise exc

    return decode


class PanicException(BaseException):
    """What pyo3 raises on a Rust panic: not an Exception."""


@pytest.mark.parametrize("exc", [RuntimeError("boom"), PanicException("index out of bounds")], ids=["error", "panic"])
def test_a_failing_backend_falls_back_to_the_next(monkeypatch, exc):
    first = backends.backend("imagecodecs", "1.2.840.10008.1.2.5")
    patched = tuple(
        backends.Backend(**{**b.__dict__, "decode": _failing(exc)}) if b is first else b for b in backends.BACKENDS
    )
    monkeypatch.setattr(backends, "BACKENDS", patched)
    got = fastdcm.open_image(RLE).render_frame(0)
    assert got.decoder == "pylibjpeg"  # the next one in the chain
    # with no backend left, the panic is that file's DecodeError, never a dead run
    with pytest.raises(DecodeError, match="imagecodecs: (RuntimeError: boom|panic: index out of bounds)"):
        fastdcm.open_image(RLE).render_frame(0, fastdcm.RenderOptions(decoder="rle=imagecodecs"))


def test_other_base_exceptions_pass_through(monkeypatch):
    class Stop(BaseException):
        pass

    first = backends.backend("imagecodecs", "1.2.840.10008.1.2.5")
    patched = tuple(backends.Backend(**{**b.__dict__, "decode": _failing(Stop())}) if b is first else b for b in backends.BACKENDS)
    monkeypatch.setattr(backends, "BACKENDS", patched)
    with pytest.raises(Stop):
        fastdcm.render(RLE)


def test_frame_n_decodes_only_frame_n(monkeypatch):
    """Multi-frame data streams: frame N is decoded without frames 0..N-1."""
    calls = []
    real = backends.backend("imagecodecs", "1.2.840.10008.1.2.5")
    counting = backends.Backend(**{**real.__dict__, "decode": lambda d, s: (calls.append(len(d)), real.decode(d, s))[1]})
    monkeypatch.setattr(backends, "BACKENDS", tuple(counting if b is real else b for b in backends.BACKENDS))
    image = fastdcm.open_image(RLE)
    assert image.n_frames == 10
    last = image.render_frame(9).array
    assert len(calls) == 1
    assert len(list(fastdcm.iter_frames(RLE))) == 10 and len(calls) == 11
    np.testing.assert_array_equal(last, fastdcm.render(RLE, frame=9, decoder="rle=pydicom"))


def test_manifest_names_the_decoder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("emri_small_RLE.dcm", "CT_small.dcm", "JPEG2000.dcm"):
        shutil.copy(get_testdata_file(name), src / name)
    report = fastdcm.convert([str(src)], str(tmp_path / "out"), workers=0, quiet=True, decoder="jpeg2000=pylibjpeg")
    import json

    records = {os.path.basename(r["source"]): r for r in map(json.loads, open(report.manifest))}
    assert records["emri_small_RLE.dcm"]["decoder"] == "imagecodecs"
    assert records["CT_small.dcm"]["decoder"] == "native"
    assert records["JPEG2000.dcm"]["decoder"] == "pylibjpeg"


def test_info_lists_backends_and_pip_commands(monkeypatch):
    rows = decoder_table()
    ht = [r for r in rows if r.transfer_syntax == "1.2.840.10008.1.2.4.201"]
    assert [r.backend for r in ht] == ["imagecodecs", "imagecodecs-openjph", "pylibjpeg", "pillow"]
    assert all(r.install.startswith("pip install") for r in rows if r.backend != "pydicom")


def test_decode_threads_setting(monkeypatch):
    monkeypatch.delenv(backends.THREADS_ENV, raising=False)
    default = backends.decode_threads()
    assert 1 <= default <= backends.MAX_DEFAULT_THREADS
    for value, want in (("3", 3), ("1", 1), ("0", default), ("two", default), ("-2", default)):
        monkeypatch.setenv(backends.THREADS_ENV, value)
        assert backends.decode_threads() == want


def test_a_threaded_jpeg_2000_decode_equals_one_thread(monkeypatch):
    """OpenJPEG's threads decode code-blocks in parallel: the same values (a codestream big enough)."""
    path = get_testdata_file("RG3_J2KR.dcm")
    header = read_header(path)
    assert len(frames.frame_bytes(header.data, header.frames[0])) >= backends.THREADED_J2K_BYTES
    calls = []
    real = imagecodecs.jpeg2k_decode
    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", lambda data, **kw: calls.append(kw["numthreads"]) or real(data, **kw))
    monkeypatch.setenv(backends.THREADS_ENV, "1")
    one = stored_frame(read_header(path), 0)
    monkeypatch.setenv(backends.THREADS_ENV, "4")
    four = stored_frame(read_header(path), 0)
    assert calls == [1, 4] and np.array_equal(one, four)


def test_a_small_jpeg_2000_codestream_decodes_on_one_thread(monkeypatch):
    """Below THREADED_J2K_BYTES OpenJPEG's threads cost more than they save (a 30 kB 400x400
    codestream: 4x slower on two): one thread, whatever the setting."""
    path = get_testdata_file("GDCMJ2K_TextGBR.dcm")
    header = read_header(path)
    assert len(frames.frame_bytes(header.data, header.frames[0])) < backends.THREADED_J2K_BYTES
    calls = []
    real = imagecodecs.jpeg2k_decode
    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", lambda data, **kw: calls.append(kw["numthreads"]) or real(data, **kw))
    monkeypatch.setenv(backends.THREADS_ENV, "4")
    stored_frame(header, 0)
    assert calls == [1]


def test_the_transfer_syntax_constants_are_pydicoms():
    """fastheader.py names the transfer syntaxes as pydicom.uid does, as plain strings (importing
    pydicom costs ~0.17 s that the common path never needs): each must be pydicom's."""
    import pydicom.uid

    from fastdcm.decoders import backends

    names = ["JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGLossless", "JPEGLosslessSV1", "JPEGLSLossless",
             "JPEGLSNearLossless", "JPEG2000Lossless", "JPEG2000", "HTJ2KLossless", "HTJ2KLosslessRPCL", "HTJ2K",
             "RLELossless"]
    assert {n: getattr(backends, n) for n in names} == {n: str(getattr(pydicom.uid, n)) for n in names}
    every = {ts for family in backends.FAMILIES.values() for ts in family}
    assert every == {str(getattr(pydicom.uid, n)) for n in names}
    from fastdcm import fastheader

    assert fastheader.ENCAPSULATED == every
    assert (fastheader.EXPLICIT_LE, fastheader.IMPLICIT_LE) == (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian)
