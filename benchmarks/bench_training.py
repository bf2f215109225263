"""Images for training (issue 11) as micro-benchmarks: resize + encode against OpenCV's, and a
window stack of 3 against one window (the full report, with convert runs: training.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm.encoders import get_encoder
from fastdcm.options import RenderOptions
from fastdcm.render import open_image
from fastdcm.resize import Fit, apply, resize_plan

CT = get_testdata_file("693_UNCR.dcm")  # 512x512 int16 CT


@pytest.fixture(scope="module")
def rendered():
    img = fastdcm.render(CT)
    return img, resize_plan(*img.shape, 256, Fit.PAD, None)


def _ours(img, plan, png):
    return png.encode(apply(img, plan, 255))


def _opencv(img, plan):
    return cv2.imencode(".png", cv2.resize(img, (plan.scaled[1], plan.scaled[0]), interpolation=cv2.INTER_AREA))[1]


@pytest.mark.parametrize("impl", ["fastdcm", "opencv"])
def test_resize_encode_ct(benchmark, rendered, impl):
    """512 -> 256 and PNG, on the same rendered slice (OpenCV: cv2.resize INTER_AREA + cv2.imencode)."""
    benchmark.group = "resize-encode-ct"
    img, plan = rendered
    if impl == "fastdcm":
        data = benchmark(_ours, img, plan, get_encoder("png"))
    else:
        data = benchmark(_opencv, img, plan)
    decoded = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)
    want = cv2.resize(img, (256, 256), interpolation=cv2.INTER_AREA)
    assert decoded.shape == (256, 256) and np.abs(decoded.astype(int) - want).max() <= 1


@pytest.mark.parametrize("windows", ["one", "three"])
def test_window_stack_ct(benchmark, windows):
    """render_frame (decode + VOI) with one window and with brain, subdural, bone."""
    benchmark.group = "window-stack-ct"
    image = open_image(CT)
    options = RenderOptions(window=(40, 80)) if windows == "one" else RenderOptions(windows="brain,subdural,bone")
    out = benchmark(image.render_frame, 0, options).array
    assert out.shape == ((512, 512) if windows == "one" else (512, 512, 3))
    if windows == "three":
        assert np.array_equal(out[..., 0], fastdcm.render(CT, window=(40, 80)))
