"""Encoder speed on a 512x512 windowed CT slice: fastdcm's encoders against Pillow.

    pytest benchmarks/bench_encoders.py                       # timings, group "encode"
    pytest benchmarks/bench_encoders.py --benchmark-disable   # smoke test (CI)

Pillow's PNG at compress_level=6 (its default, the naive recipe) is the reference for the
PNG encoders, Pillow's JPEG at quality 90 the peer of "jpeg". Compare the ratios, not the
absolute times. Every benchmark decodes its output and checks it, so a fast wrong answer
fails; PNG sizes are checked against the reference too.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fastdcm.encoders import get_encoder

pytestmark = pytest.mark.benchmark(group="encode")


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """693_UNCR.dcm (pydicom-data), 512x512 CT, soft-tissue window (C 40, W 400), uint8."""
    path = get_testdata_file("693_UNCR.dcm", download=False)
    assert path is not None, "693_UNCR.dcm not found: pip install pydicom-data"
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = np.clip(np.rint((hu - (40 - 200)) / 400 * 255), 0, 255).astype(np.uint8)
    assert image.shape == (512, 512)
    return image


@pytest.fixture(scope="module")
def pillow_level6_size(ct) -> int:
    return len(pillow_png(ct, 6))


def pillow_png(image: np.ndarray, level: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def pillow_jpeg(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def test_png_fast_default(benchmark, ct, pillow_level6_size):
    encode = get_encoder("png").encode
    data = benchmark(encode, ct)
    np.testing.assert_array_equal(decoded(data), ct)
    assert len(data) <= 1.3 * pillow_level6_size
    benchmark.extra_info["bytes"] = len(data)


def test_png_small(benchmark, ct, pillow_level6_size):
    encode = get_encoder("png-small").encode
    data = benchmark(encode, ct)
    np.testing.assert_array_equal(decoded(data), ct)
    assert len(data) <= pillow_level6_size
    benchmark.extra_info["bytes"] = len(data)


def test_pillow_png_level6_reference(benchmark, ct):
    data = benchmark(pillow_png, ct, 6)
    np.testing.assert_array_equal(decoded(data), ct)
    benchmark.extra_info["bytes"] = len(data)


def test_jpeg_q90(benchmark, ct):
    encode = get_encoder("jpeg").encode
    data = benchmark(encode, ct, quality=90)
    back = decoded(data)
    assert back.shape == ct.shape and np.abs(back.astype(np.int16) - ct).mean() < 1.0
    benchmark.extra_info["bytes"] = len(data)


def test_pillow_jpeg_q90_peer(benchmark, ct):
    data = benchmark(pillow_jpeg, ct, 90)
    back = decoded(data)
    assert back.shape == ct.shape and np.abs(back.astype(np.int16) - ct).mean() < 1.0
    benchmark.extra_info["bytes"] = len(data)
