"""reduce=k: images 2^k times smaller, by the codec's resolution levels or by block means."""

from __future__ import annotations

import json
import os

import imagecodecs
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import RenderOptions, cli
from fastdcm.decoders import backends, decode_frame
from fastdcm.render import open_image
from fastdcm.resample import MAX_REDUCE, reduce_stored, reduced_size

from .test_decoders import ENCAPSULATED, _base, _header, _save

J2K_FILES = [p for p in ENCAPSULATED if (h := _header(p)) is not None and backends.family(h.spec.transfer_syntax_uid) in ("jpeg2000", "htj2k")]


def _spec(bits_stored=12, signed=False, pi="MONOCHROME2"):
    class Spec:  # the fields reduce_stored reads
        pass

    s = Spec()
    s.bits_stored, s.is_signed, s.photometric_interpretation = bits_stored, signed, pi
    return s


def _block_means(values: np.ndarray, f: int) -> np.ndarray:
    """The definition: each f x f block (edge blocks: what they have) -> its mean, half up."""
    rows, cols = -(-values.shape[0] // f), -(-values.shape[1] // f)
    out = np.empty((rows, cols) + values.shape[2:], np.int64)
    for r in range(rows):
        for c in range(cols):
            block = values[r * f : (r + 1) * f, c * f : (c + 1) * f].astype(np.float64)
            out[r, c] = np.floor(block.mean(axis=(0, 1)) + 0.5)
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_block_means_mask_sign_extend_and_keep_edge_blocks(k):
    rng = np.random.default_rng(k)
    values = rng.integers(-2048, 2048, size=(37, 29))  # odd sizes: partial edge blocks
    raw = (values & 0xFFF) | (rng.integers(0, 16, size=values.shape) << 12)  # garbage above Bits Stored
    got = reduce_stored(raw.astype(np.uint16), _spec(12, True), k)
    assert got.shape == (reduced_size(37, k), reduced_size(29, k)) and got.dtype == np.int16
    assert np.array_equal(got.astype(np.int64), _block_means(values, 1 << k))
    unsigned = rng.integers(0, 4096, size=(20, 31, 3))
    got = reduce_stored(unsigned.astype(np.uint16), _spec(12, False, "RGB"), k)
    assert got.dtype == np.uint16 and np.array_equal(got, _block_means(unsigned, 1 << k))


def test_palette_indices_are_picked_not_averaged():
    idx = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(reduce_stored(idx, _spec(8, False, "PALETTE COLOR"), 1), idx[::2, ::2])


@pytest.mark.parametrize("bad", [-1, MAX_REDUCE + 1, 1.5, True, "2"])
def test_reduce_option_is_checked(bad):
    with pytest.raises((ValueError, TypeError)):
        RenderOptions(reduce=bad)


@pytest.mark.parametrize("path", J2K_FILES, ids=os.path.basename)
def test_pillow_full_size_decode_equals_the_default(path):
    """Pillow scales samples to its modes' widths; undone, they are the stored values."""
    image = open_image(path)
    try:
        default = image.render_frame(0)
    except fastdcm.DecodeError:
        return  # damaged on purpose (test_decoders checks every backend fails)
    try:
        got = image.render_frame(0, RenderOptions(decoder={backends.family(image.spec.transfer_syntax_uid): "pillow"}))
    except fastdcm.DecodeError as exc:
        # Pillow decodes 1 or 3 components of up to 16 bits (unsigned colour only)
        assert image.spec.bits_stored > 16 or image.spec.samples_per_pixel == 3 or "mode" in exc.reason, exc.reason
        return
    assert got.decoder == "pillow"
    assert np.array_equal(got.array, default.array)


def test_pillow_decodes_most_j2k_test_files():
    ok = 0
    for path in J2K_FILES:
        image = open_image(path)
        try:
            image.render_frame(0, RenderOptions(decoder={backends.family(image.spec.transfer_syntax_uid): "pillow"}))
            ok += 1
        except fastdcm.DecodeError:
            pass
    assert len(J2K_FILES) >= 15 and ok >= 0.8 * len(J2K_FILES), (ok, len(J2K_FILES))


def _mammo_like(tmp_path, ts="1.2.840.10008.1.2.4.90", encode=None):
    """A 12-bit J2K file of real CT pixels scaled up (texture, edges), and its native twin."""
    ds, arr = _base(12, signed=False)
    smooth = PILImage.fromarray(arr.astype(np.int32), mode="I").resize((512, 512), PILImage.BILINEAR)
    noise = np.random.default_rng(0).integers(-8, 9, (512, 512))
    big = np.clip(np.asarray(smooth) + noise, 0, 4095).astype(np.uint16)
    ds.Rows, ds.Columns = big.shape
    encode = encode or (lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, codecformat="J2K", level=0))
    return _save(ds, big, ts, encode(big), tmp_path, "big.dcm"), big


@pytest.mark.parametrize(
    "ts,encode",
    [
        ("1.2.840.10008.1.2.4.90", None),
        ("1.2.840.10008.1.2.4.201", lambda a: imagecodecs.htj2k_encode(a, reversible=True)),
    ],
    ids=["j2k", "htj2k"],
)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_codec_reduction_is_the_picture_at_a_smaller_size(tmp_path, ts, encode, k):
    (path, native), big = _mammo_like(tmp_path, ts, encode)
    image = open_image(path)
    stored, name = decode_frame(image._header, 0, (), k)
    assert name == "pillow"  # the codec's resolution levels, not a full decode
    expected = _block_means(big.astype(np.int64), 1 << k)
    assert stored.shape == expected.shape
    # The wavelet's low band is not a box filter (k cascaded 5/3 low-pass filters reach ~3 blocks
    # wide at the body's edge), but it is the same picture at that size:
    diff = np.abs(stored.astype(np.int64) - expected)
    assert diff.mean() < 0.01 * 4095 and np.corrcoef(stored.ravel(), expected.ravel())[0, 1] > 0.98
    assert abs(stored.mean() - expected.mean()) < 2
    # A file without resolution levels (native) is reduced by block means: the same size.
    assert fastdcm.render(native, reduce=k).shape == expected.shape


def test_more_levels_than_the_codestream_has_fall_back_to_block_means(tmp_path):
    enc = lambda a: imagecodecs.jpeg2k_encode(a, reversible=True, codecformat="J2K", level=0, resolutions=2)  # noqa: E731
    (path, native), big = _mammo_like(tmp_path, encode=enc)
    image = open_image(path)
    stored, name = decode_frame(image._header, 0, (), 3)  # one level in the codestream, three asked for
    assert name != "pillow" and stored.shape == (64, 64)
    assert np.array_equal(stored.astype(np.int64), _block_means(big.astype(np.int64), 8))


SAMPLES = [
    "CT_small.dcm",  # native 16-bit signed
    "MR_small_RLE.dcm",
    "SC_rgb_jpeg_gdcm.dcm",  # YBR JPEG baseline
    "JPEGLSNearLossless_16.dcm",
    "US1_J2KR.dcm",
    "OBXXXX1A.dcm",  # palette colour
    "emri_small_jpeg_2k_lossless.dcm",  # multi-frame
    "SC_rgb_32bit.dcm",
]


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("k", [1, 2])
def test_every_kind_of_file_gives_the_reduced_size(name, k):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not among the installed test files")
    full = fastdcm.render(path)
    small = fastdcm.render(path, reduce=k)
    assert small.shape[:2] == (reduced_size(full.shape[0], k), reduced_size(full.shape[1], k))
    assert small.shape[2:] == full.shape[2:] and small.dtype == full.dtype
    frames = list(fastdcm.iter_frames(path, reduce=k))
    assert all(f.shape == small.shape for f in frames)


def test_convert_writes_reduced_images_and_says_so(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "US1_J2KR.dcm"):
        (src / name).write_bytes(open(get_testdata_file(name), "rb").read())
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), "-o", str(out), "--reduce", "2", "--workers", "0", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    images = [r for r in records if r.get("status") == "converted"]
    assert len(images) == 2
    for r in images:
        assert r["reduce"] == 2
        with PILImage.open(out / r["outputs"][0]) as im:
            assert [im.height, im.width] == r["shape"]
        ds = pydicom.dcmread(r["source"], stop_before_pixels=True)
        assert r["shape"] == [reduced_size(ds.Rows, 2), reduced_size(ds.Columns, 2)]
    # Without --reduce the manifest has no reduce field, and shapes are the full ones.
    full = tmp_path / "full"
    assert cli.main(["convert", str(src), "-o", str(full), "--workers", "0", "--quiet"]) == 0
    records = [json.loads(line) for line in (full / "manifest.jsonl").read_text().splitlines() if '"converted"' in line]
    assert all("reduce" not in r and len(r["shape"]) == 2 for r in records)
