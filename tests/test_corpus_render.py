"""Every image of pydicom's test files and of pydicom-data, every frame, against tests/naive.py."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

import fastdcm
from fastdcm.errors import (
    DecodeError,
    InvalidPixelModuleError,
    NoImageError,
    NotDicomError,
    TruncatedPixelDataError,
)

from .naive import reference

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))

#: Files that cannot be rendered, with the error they must raise (and why).
EXPECTED_ERRORS = {
    "JPEG2000-embedded-sequence-delimiter.dcm": DecodeError,  # J2K codestream damaged on purpose
    "JPEG-lossy.dcm": DecodeError,  # 12-bit JPEG that libjpeg rejects (misplaced marker); Pillow has no 12-bit
    "badVR.dcm": InvalidPixelModuleError,  # Number of Frames '1A'
    "meta_missing_tsyntax.dcm": InvalidPixelModuleError,  # pixel data without an image module
    "nested_priv_SQ.dcm": InvalidPixelModuleError,  # pixel data without an image module
    "MR_truncated.dcm": TruncatedPixelDataError,  # pixel data cut short
    "emri_small_jpeg_2k_lossless_too_short.dcm": InvalidPixelModuleError,  # Rows missing
}


def _classify(path: str):
    """What a file should give: 'image', or the exception class it must raise."""
    name = os.path.basename(path)
    if name in EXPECTED_ERRORS:
        return EXPECTED_ERRORS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            try:  # no preamble: a raw dataset starting with group 0008
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                return NotDicomError
            if "SOPClassUID" not in ds:
                return NotDicomError
    if not any(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
        # An image SOP class without its pixel data is a failure, anything else holds no image.
        sop = str(ds.get("SOPClassUID", ""))
        return TruncatedPixelDataError if "Image Storage" in pydicom.uid.UID(sop).name else NoImageError
    return "image"


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_file_renders_like_reference(path):
    expected = _classify(path)
    if expected != "image":
        with pytest.raises(expected) as info:
            image = fastdcm.open_image(path)
            for i in range(image.n_frames):
                image.render_frame(i)
        assert info.value.path == path and info.value.reason
        return
    image = fastdcm.open_image(path)
    assert image.n_frames >= 1
    for i in range(image.n_frames):
        got = image.render_frame(i).array
        ref = reference(path, i)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        assert got.shape == ref.shape, (i, got.shape, ref.shape)
        diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        assert diff.max() <= 1, f"frame {i}: max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


def test_corpus_is_not_empty():
    images = [f for f in FILES if _classify(f) == "image"]
    assert len(FILES) > 150 and len(images) > 100
