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
    "badVR.dcm": InvalidPixelModuleError,  # Number of Frames '1A'
    "meta_missing_tsyntax.dcm": InvalidPixelModuleError,  # pixel data without an image module
    "nested_priv_SQ.dcm": InvalidPixelModuleError,  # pixel data without an image module
    "MR_truncated.dcm": TruncatedPixelDataError,  # pixel data cut short
    "emri_small_jpeg_2k_lossless_too_short.dcm": TruncatedPixelDataError,  # cut before the sequence delimiter
}


#: Lossy JPEG colour: fastdcm decodes with libjpeg-turbo (imagecodecs), the reference with
#: pydicom's default plugin (libjpeg 9). Two conforming decoders whose IDCT and chroma
#: upsampling differ by a few levels on colour (measured on these files: at most 5, mean
#: under 0.5); the colour conversion itself is pydicom's rule (test_decoders holds
#: ``decoder="jpeg=pylibjpeg"`` within 1 of the reference on the same files).
LOSSY_COLOUR_TOLERANCE = 5
LOSSY_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")


#: Files pydicom cannot decode (so no reference here) that fastdcm renders: held against
#: dcmtk's decoder in test_decoders.py.
NO_PYDICOM_REFERENCE = {"JPEG-lossy.dcm"}  # 12-bit lossy JPEG that pylibjpeg-libjpeg rejects


def tolerance(image) -> int:
    spec = image.spec
    return LOSSY_COLOUR_TOLERANCE if spec.transfer_syntax_uid in LOSSY_JPEG and spec.samples_per_pixel == 3 else 1


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
        if os.path.basename(path) in NO_PYDICOM_REFERENCE:
            assert got.dtype == np.uint8 and got.shape == (image.spec.rows, image.spec.columns)
            continue
        ref = reference(path, i)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        assert got.shape == ref.shape, (i, got.shape, ref.shape)
        diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
        limit = tolerance(image)
        assert diff.max() <= limit, f"frame {i}: max diff {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
        if limit > 1:  # a wrong colour transform would be off by tens everywhere
            assert diff.mean() < 0.5, f"frame {i}: mean diff {diff.mean():.2f}"


def test_corpus_is_not_empty():
    images = [f for f in FILES if _classify(f) == "image"]
    assert len(FILES) > 150 and len(images) > 100
