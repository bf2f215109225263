"""Decoding one frame per transfer syntax: fastdcm's stored_frame against pydicom's pixel_array.

    pytest benchmarks/bench_decode.py                       # timings, groups "decode-<syntax>"
    pytest benchmarks/bench_decode.py --benchmark-disable   # smoke test (CI)

Per transfer syntax, one real file (pydicom-data, or the ``mixed`` workload of
make_corpus.py where the test data only has toy sizes), its header parsed once outside
the timing, then frame 0 decoded by:

``fastdcm``  ``fastdcm.decoders.stored_frame(header, 0)``: a view of the file's bytes for native
             data, else the first backend of fastdcm's registry (decoders/backends.PREFERENCE)
             on the frame's fragments;
``pydicom``  ``pydicom.pixels.pixel_array(ds, index=0)`` on a dataset read beforehand, with
             the plugin pydicom picks by itself.

Both must return the same values (fastdcm gives native integers as unsigned views; they
are compared bit for bit; lossy JPEG colour, decoded by libjpeg-turbo against pydicom's
libjpeg 9, within a few levels), so a fast wrong answer fails. HTJ2K has no file here (the
tests generate them); ``benchmarks/compressed.py`` times every compressed test file against
dicomsdl.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import JPEGBaseline8Bit

from fastdcm.decoders import stored_frame
from fastdcm.render import open_image

#: syntax -> (source, file): source "data" = pydicom's test data / pydicom-data, "mixed" = corpus
FILES = {
    "native": ("data", "693_UNCR.dcm"),  # 512x512 CT, explicit VR little endian
    "rle": ("mixed", "series_1_mr-rle"),  # 484x484 MR
    "jpeg-baseline": ("data", "color3d_jpeg_baseline.dcm"),  # 640x480 US YBR_FULL_422, 120 frames
    "jpeg-lossless": ("mixed", "series_1_ct-jpeg-lossless"),  # 512x512 CT, process 14 SV1
    "jpeg-ls": ("mixed", "series_1_mr-jls"),  # 1024x1024 MR, lossless
    "j2k-lossless": ("data", "693_J2KR.dcm"),  # 512x512 CT
    "j2k-lossy": ("data", "MR2_J2KI.dcm"),  # 1024x1024 MR
}
IMPLS = ("fastdcm", "pydicom")


def source_path(which: str) -> str:
    source, name = FILES[which]
    if source == "data":
        path = get_testdata_file(name, download=False)
        assert path is not None, f"{name} not found: pip install pydicom-data"
        return path
    from make_corpus import corpus_files, ensure_corpus

    files = [f for f in corpus_files(ensure_corpus("mixed")) if f"/{name}/" in f]
    assert files, f"no {name} series in the mixed workload"
    return sorted(files)[0]


class Source:
    def __init__(self, which: str):
        self.path = source_path(which)
        self.header = open_image(self.path)._header
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.ds = pydicom.dcmread(self.path)
        self.expected = self.pydicom()

    def fastdcm(self) -> np.ndarray:
        return stored_frame(self.header, 0)

    def pydicom(self) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(self.ds, index=0)

    def check(self, out: np.ndarray) -> None:
        exp = self.expected
        assert out.shape == exp.shape, (out.shape, exp.shape)
        if out.dtype != exp.dtype and out.dtype.itemsize == exp.dtype.itemsize:
            out = out.view(exp.dtype)  # native integers: fastdcm's unsigned view of the same bits
        if self.header.spec.transfer_syntax_uid == JPEGBaseline8Bit:  # two decoders' IDCTs
            diff = np.abs(out.astype(np.int32) - exp.astype(np.int32))
            assert diff.max() <= 5 and diff.mean() < 0.5, (diff.max(), diff.mean())
            return
        np.testing.assert_array_equal(out, exp)


_SOURCES: dict[str, Source] = {}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("syntax", list(FILES))
def test_decode(benchmark, syntax, impl):
    benchmark.group = f"decode-{syntax}"
    if syntax not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[syntax] = Source(syntax)
    src = _SOURCES[syntax]
    fn = getattr(src, impl)
    src.check(fn())
    src.check(benchmark(fn))
