"""Header reading: fastdcm.open_image against pydicom's dcmread, from a path each time.

    pytest benchmarks/bench_header.py                       # timings, groups "header-<file>"
    pytest benchmarks/bench_header.py --benchmark-disable   # smoke test (CI)

Per file, three ways to get at the pixel module, timed in the same run:

``fastdcm``             ``fastdcm.open_image(path)``: read, parse and validate the header,
                        locate the pixel data (what a worker does before decoding);
``dcmread``             ``pydicom.dcmread(path)``: the whole dataset, pixel data included
                        (not decoded);
``dcmread-stop``        ``pydicom.dcmread(path, stop_before_pixels=True)``.

Files: ``ct`` = 693_UNCR.dcm (a 512x512 CT slice, explicit VR little endian), ``enhanced`` =
eCT_Supplemental.dcm (an enhanced CT, 2 frames with per-frame functional groups), both from
pydicom-data. Every result is checked (size, frames, bits stored), so a fast wrong answer fails.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

import fastdcm

FILES = {
    "ct": ("693_UNCR.dcm", (512, 512, 1, 14)),
    "enhanced": ("eCT_Supplemental.dcm", (512, 512, 2, 16)),
}
IMPLS = ("fastdcm", "dcmread", "dcmread-stop")


def _path(name: str) -> str:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: pip install pydicom-data"
    return path


def read(impl: str, path: str) -> tuple[int, int, int, int]:
    """(rows, columns, frames, bits stored) the way ``impl`` reads them."""
    if impl == "fastdcm":
        spec = fastdcm.open_image(path).spec
        return spec.rows, spec.columns, spec.number_of_frames, spec.bits_stored
    ds = pydicom.dcmread(path, stop_before_pixels=impl == "dcmread-stop")
    if impl == "dcmread":
        assert len(ds.PixelData) >= ds.Rows * ds.Columns * 2
    return ds.Rows, ds.Columns, int(ds.get("NumberOfFrames", 1) or 1), ds.BitsStored


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("which", list(FILES))
def test_header(benchmark, which, impl):
    benchmark.group = f"header-{which}"
    name, expected = FILES[which]
    path = _path(name)
    assert read(impl, path) == expected  # warm-up (file cache, imports) and check
    assert benchmark(read, impl, path) == expected
