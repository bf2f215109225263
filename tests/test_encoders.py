"""fastdcm.encoders: registry, exact PNG/npy round trips, JPEG fidelity, PNG size on real CT."""

from __future__ import annotations

import io
import struct
import sys
import zlib

import numpy as np
import png as pypng
import pydicom
import pytest
import simplejpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from pydicom.data import get_testdata_file

import fastdcm.encoders as encoders
from fastdcm.encoders import png as png_module
from fastdcm.errors import EncodeError, InvalidOptionError, MissingDependencyError

LOSSLESS = ("png", "png-small", "npy")
ALL = ("png", "png-small", "jpeg", "npy")


# ---------------------------------------------------------------- helpers


def decode(name: str, data: bytes) -> np.ndarray:
    """Decode with independent readers: np.load for npy, Pillow for PNG and JPEG.

    Every PNG is also read by pypng (pure Python), which must agree with Pillow; Pillow
    reads 16-bit RGB as 8-bit (the high bytes), so there pypng's 16-bit reading is returned.
    """
    if name == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        pillow = np.asarray(image)
    if name == "jpeg":
        return pillow
    width, height, pixels, info = pypng.Reader(bytes=data).read_flat()
    dtype = np.uint16 if info["bitdepth"] == 16 else np.uint8
    shape = (height, width) if info["planes"] == 1 else (height, width, info["planes"])
    exact = np.asarray(pixels, dtype).reshape(shape)
    if dtype == np.uint16 and info["planes"] == 3:
        assert pillow.dtype == np.uint8
        np.testing.assert_array_equal(pillow, exact >> 8)
    else:
        assert pillow.dtype == exact.dtype
        np.testing.assert_array_equal(pillow, exact)
    return exact


def ct_render(name: str, size: int = 512) -> np.ndarray:
    """A real CT slice, soft-tissue window (C 40, W 400), as uint8 of size x size."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: pip install pydicom-data"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = np.clip(np.rint((hu - (40 - 200)) / 400 * 255), 0, 255).astype(np.uint8)
    if image.shape != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    return image


@pytest.fixture(scope="module")
def ct_images() -> dict[str, np.ndarray]:
    return {"693_UNCR": ct_render("693_UNCR.dcm"), "CT_small": ct_render("CT_small.dcm")}


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Walk a PNG's chunks, checking the signature, each length and each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert len(body) == length and crc == zlib.crc32(tag + body), tag
        chunks.append((tag, body))
        pos += 12 + length
    assert pos == len(data) and chunks[-1] == (b"IEND", b"")
    return chunks


def naive_up_filter(array: np.ndarray) -> bytes:
    """PNG spec 9.2, byte by byte: filter type 2 (Up), 16-bit samples big-endian."""
    raw = array.astype(array.dtype.newbyteorder(">")).tobytes()
    row_bytes = len(raw) // array.shape[0]
    out, above = bytearray(), bytes(row_bytes)
    for r in range(array.shape[0]):
        row = raw[r * row_bytes : (r + 1) * row_bytes]
        out.append(2)
        out += bytes((x - b) % 256 for x, b in zip(row, above))
        above = row
    return bytes(out)


def images(dtype, channels: int | None):
    side = st.integers(1, 33)
    shape = st.tuples(side, side) if channels is None else st.tuples(side, side, st.just(channels))
    return hnp.arrays(dtype, shape, elements=st.integers(0, np.iinfo(dtype).max))


KINDS = [(np.uint8, None), (np.uint8, 3), (np.uint16, None), (np.uint16, 3)]
HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- registry


def test_registry_names_and_extensions():
    assert encoders.names() == ("png", "png-small", "jpeg", "npy")
    assert encoders.DEFAULT == "png"
    extensions = {name: encoders.get_encoder(name).extension for name in encoders.names()}
    assert extensions == {"png": ".png", "png-small": ".png", "jpeg": ".jpg", "npy": ".npy"}
    for name in encoders.names():
        encoder = encoders.get_encoder(name)
        assert encoder.name == name and encoder.is_available() is True


def test_available_reports_every_encoder():
    # All optional packages are installed in the test environment.
    assert encoders.available() == {"png": True, "png-small": True, "jpeg": True, "npy": True}


def test_unknown_encoder_is_an_option_error():
    expected = "unknown image format 'webp'.*png, png-small, jpeg, npy"
    with pytest.raises(InvalidOptionError, match=expected):
        encoders.get_encoder("webp")


@pytest.mark.parametrize(
    "name, modules, pip",
    [
        ("png", ("isal", "isal.isal_zlib"), "pip install isal"),
        ("jpeg", ("simplejpeg",), "pip install simplejpeg"),
        ("png-small", ("PIL", "PIL.Image"), "pip install pillow"),
    ],
)
def test_missing_dependency_names_the_pip_command(monkeypatch, name, modules, pip):
    for module in modules:  # a None entry in sys.modules makes `import` raise ImportError
        monkeypatch.setitem(sys.modules, module, None)
    reason = encoders.available()[name]
    assert isinstance(reason, str) and pip in reason
    with pytest.raises(MissingDependencyError, match=pip):
        encoders.get_encoder(name)
    encoder = encoders._REGISTRY[name]  # an instance obtained earlier fails the same way
    assert encoder.is_available() is False
    with pytest.raises(MissingDependencyError, match=pip):
        encoder.encode(np.zeros((2, 2), np.uint8))
    # the other encoders are unaffected
    assert encoders.available()["npy"] is True


# ---------------------------------------------------------------- lossless round trips


@pytest.mark.parametrize(
    "name, dtype, channels",
    # Pillow cannot write 16-bit RGB, so png-small refuses it (tested below)
    [(n, *k) for n in LOSSLESS for k in KINDS if not (n == "png-small" and k == (np.uint16, 3))],
)
def test_lossless_round_trip_is_exact(name, dtype, channels):

    @HYPO
    @given(images(dtype, channels))
    def check(array):
        before = array.copy()
        data = encoders.get_encoder(name).encode(array)
        assert type(data) is bytes
        back = decode(name, data)
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
        np.testing.assert_array_equal(array, before)  # the input is left alone

    check()


@pytest.mark.parametrize("dtype, channels", KINDS)
def test_png_edge_values_and_degenerate_shapes(dtype, channels):
    top = np.iinfo(dtype).max
    for shape in [(1, 1), (1, 70), (70, 1), (3, 5)]:
        full = shape if channels is None else (*shape, channels)
        for array in (np.zeros(full, dtype), np.full(full, top, dtype)):
            array.flat[::2] = top - array.flat[::2]  # alternate 0 and max
            data = encoders.get_encoder("png").encode(array)
            np.testing.assert_array_equal(decode("png", data), array)


@pytest.mark.parametrize("dtype, channels", KINDS)
def test_png_of_non_contiguous_views_is_exact(dtype, channels):
    rng = np.random.default_rng(7)
    shape = (40, 30) if channels is None else (40, 30, channels)
    base = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    for view in (base[::2, 1::3], base[::-1], np.asfortranarray(base), base[5:9]):
        for name in ("png", "npy"):
            data = encoders.get_encoder(name).encode(view)
            np.testing.assert_array_equal(decode(name, data), view)


@pytest.mark.parametrize("dtype, channels", KINDS)
def test_png_structure_and_filter(dtype, channels):
    rng = np.random.default_rng(1)
    shape = (9, 13) if channels is None else (9, 13, channels)
    array = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    chunks = png_chunks(encoders.get_encoder("png").encode(array))
    assert [tag for tag, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color, *rest = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (width, height, depth, color, rest) == (
        13, 9, 8 * np.dtype(dtype).itemsize, 0 if channels is None else 2, [0, 0, 0]
    )
    assert zlib.decompress(chunks[1][1]) == naive_up_filter(array)
    assert png_module.filter_up(array).tobytes() == naive_up_filter(array)


def test_png_splits_large_image_data_into_several_idat_chunks(monkeypatch):
    monkeypatch.setattr(png_module, "_MAX_CHUNK", 100)
    array = np.random.default_rng(3).integers(0, 256, size=(20, 30), dtype=np.uint8)
    data = encoders.get_encoder("png").encode(array)
    idats = [body for tag, body in png_chunks(data) if tag == b"IDAT"]
    assert len(idats) > 3 and all(len(b) <= 100 for b in idats)
    np.testing.assert_array_equal(decode("png", data), array)


def test_png_of_a_real_ct_render_is_exact_and_at_most_1_3x_pillow_level_6(ct_images):
    for label, image in ct_images.items():
        data = encoders.get_encoder("png").encode(image)
        np.testing.assert_array_equal(decode("png", data), image)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG", compress_level=6)
        reference = len(buffer.getvalue())
        assert len(data) <= 1.3 * reference, (label, len(data), reference)
        small = encoders.get_encoder("png-small").encode(image)
        assert len(small) <= reference, (label, len(small), reference)


# ---------------------------------------------------------------- JPEG


@pytest.mark.parametrize("rgb", [False, True])
def test_jpeg_decodes_close_to_the_input(ct_images, rgb):
    image = ct_images["693_UNCR"]
    if rgb:
        image = np.ascontiguousarray(np.stack([image, ct_images["CT_small"], image[::-1]], axis=2))
    encoder = encoders.get_encoder("jpeg")
    data = encoder.encode(image, quality=90)
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG" and decoded.mode == ("RGB" if rgb else "L")
        back = np.asarray(decoded)
    assert back.shape == image.shape
    error = np.abs(back.astype(np.int16) - image).mean()
    assert error < (3.0 if rgb else 1.0), error
    low, high = encoder.encode(image, quality=40), encoder.encode(image, quality=98)
    assert len(low) < len(data) < len(high)


def test_jpeg_of_small_and_strided_images():
    encoder = encoders.get_encoder("jpeg")
    base = np.random.default_rng(5).integers(0, 256, size=(41, 23, 3), dtype=np.uint8)
    for array in (base[:1, :1], base[::2, ::3], base[:, :, 0], base[::-1, :, 1]):
        assert decode("jpeg", encoder.encode(array)).shape == array.shape


@pytest.mark.parametrize("quality", [0, 101, 90.0, True, "90"])
def test_jpeg_rejects_bad_quality(quality):
    with pytest.raises(EncodeError, match="quality must be an integer from 1 to 100"):
        encoders.get_encoder("jpeg").encode(np.zeros((4, 4), np.uint8), quality=quality)


@pytest.mark.parametrize("channels", [None, 3])
def test_jpeg_rejects_16_bit(channels):
    shape = (4, 4) if channels is None else (4, 4, 3)
    with pytest.raises(EncodeError, match="8-bit samples only, got uint16"):
        encoders.get_encoder("jpeg").encode(np.zeros(shape, np.uint16))


def test_jpeg_rejects_sides_beyond_libjpeg_limit():
    with pytest.raises(EncodeError, match="65500"):
        encoders.get_encoder("jpeg").encode(np.zeros((1, 65501), np.uint8))


def test_png_small_rejects_16_bit_rgb_pointing_to_png():
    with pytest.raises(EncodeError, match="use the 'png' encoder"):
        encoders.get_encoder("png-small").encode(np.zeros((4, 4, 3), np.uint16))


# ---------------------------------------------------------------- rejected inputs

BAD = [
    (np.zeros((4, 4), np.float32), "samples must be"),
    (np.zeros((4, 4), np.int16), "samples must be"),
    (np.zeros((4, 4), np.uint32), "samples must be"),
    (np.zeros((4, 4), bool), "samples must be"),
    (np.zeros((4, 4), ">u2"), "samples must be"),
    (np.zeros((4, 4, 4), np.uint8), "expected shape"),
    (np.zeros((4, 4, 1), np.uint8), "expected shape"),
    (np.zeros(16, np.uint8), "expected shape"),
    (np.zeros((2, 4, 4, 3), np.uint8), "expected shape"),
    (np.zeros((0, 4), np.uint8), "empty"),
    (np.zeros((4, 0, 3), np.uint8), "empty"),
    ([[0, 1], [2, 3]], "expected a numpy array"),
]


@pytest.mark.parametrize("array, message", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_raise_encode_error(name, array, message):
    if name == "npy" and isinstance(array, np.ndarray) and array.ndim == 3 and array.shape[2] in (1, 4):
        pytest.skip("npy writes any number of channels (window stacks): test_npy_takes_any_channel_count")
    with pytest.raises(EncodeError, match=f"^{name}: .*{message}") as info:
        encoders.get_encoder(name).encode(array)
    assert info.value.status == "encode_error"


@pytest.mark.parametrize("name", ALL)
def test_unknown_options_are_rejected(name):
    with pytest.raises(InvalidOptionError, match="takes no option.*compress_level"):
        encoders.get_encoder(name).encode(np.zeros((2, 2), np.uint8), compress_level=9)


def test_jpeg_in_rgb_codes_each_channel_as_a_grey_image():
    """colorspace="RGB" (a window stack): no YCbCr transform, so a pattern in one channel leaves the
    others exactly as they are, and each channel decodes as close as the grey JPEG of it alone."""
    rng = np.random.default_rng(3)
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = rng.integers(0, 256, (64, 64))  # noise in one channel, flat grey in the other two
    img[..., 1] = 128
    enc = encoders.get_encoder("jpeg")
    data = enc.encode(img, quality=90, colorspace="RGB")
    assert data[:4] == b"\xff\xd8\xff\xee" and data[6:11] == b"Adobe"  # APP14: transform 0, RGB
    got = simplejpeg.decode_jpeg(data).astype(int)
    assert np.array_equal(got[..., 1:], img[..., 1:].astype(int))  # nothing leaked into them
    alone = simplejpeg.decode_jpeg(enc.encode(np.ascontiguousarray(img[..., 0]), quality=90)).astype(int)
    ycc = simplejpeg.decode_jpeg(enc.encode(img, quality=90, subsampling="444")).astype(int)
    assert np.abs(ycc[..., 1:] - img[..., 1:]).max() > 10  # the YCbCr transform spreads it
    assert np.abs(got[..., 0] - img[..., 0]).mean() <= 1.05 * np.abs(alone[..., 0] - img[..., 0]).mean()
    with pytest.raises(EncodeError, match="not subsampled"):
        enc.encode(img, colorspace="RGB", subsampling="420")
    with pytest.raises(EncodeError, match="YCbCr or RGB"):
        enc.encode(img, colorspace="CMYK")


def test_npy_takes_any_channel_count():
    stack = np.arange(4 * 4 * 5, dtype=np.uint8).reshape(4, 4, 5)
    assert np.array_equal(np.load(io.BytesIO(encoders.get_encoder("npy").encode(stack))), stack)


def test_jpeg_without_chroma_subsampling_keeps_channels_apart():
    """A window stack's three channels are windows: 4:4:4 keeps a one-pixel-wide line in one
    channel from bleeding into the neighbouring pixels of the others, as 4:2:0 makes it."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 31, 0] = 255
    enc = encoders.get_encoder("jpeg")
    def worst(data):
        return np.abs(simplejpeg.decode_jpeg(data).astype(int) - img).max()
    assert worst(enc.encode(img, quality=95, subsampling="444")) < worst(enc.encode(img, quality=95))
    with pytest.raises(EncodeError):
        enc.encode(img, subsampling="411")
    with pytest.raises(InvalidOptionError):
        encoders.get_encoder("png").encode(img, subsampling="444")
