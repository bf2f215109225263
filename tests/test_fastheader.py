"""The fast header parser gives pydicom's answer on every file it accepts."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from fastdcm import fastheader, header
from fastdcm.errors import FastDcmError
from fastdcm.render import Image

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def _both(path, monkeypatch):
    fast = header.read_header(path)
    with monkeypatch.context() as m:
        m.setattr(fastheader, "parse", lambda buffer: None)
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
    a, b = Image(fast), Image(slow)
    for i in range(min(a.n_frames, 3)):
        ra, rb = a.render_frame(i), b.render_frame(i)
        np.testing.assert_array_equal(ra.array, rb.array)
        assert ra.voi == rb.voi


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


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "OBXXXX1A.dcm", "MR_small_RLE.dcm", "SC_rgb_expb.dcm"])
def test_unusual_files_go_to_pydicom(name):
    """Encapsulated, palette (its LUTs), RLE and big-endian files are left to pydicom."""
    data = open(get_testdata_file(name), "rb").read()
    assert fastheader.parse(data) is None


def test_truncated_and_garbage_headers_fall_back():
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    _, _, offset, length = fastheader.parse(data)
    for cut in (140, 300, 1000, offset + length // 2):
        assert fastheader.parse(data[:cut]) is None
    assert fastheader.parse(b"\0" * 128 + b"DICM" + b"\xff" * 200) is None
