"""The fused render kernels per stored dtype and image size, against pydicom and numpy.

    pytest benchmarks/bench_kernels.py                       # timings, groups "kernel-<case>-<size>"
    pytest benchmarks/bench_kernels.py --benchmark-disable   # smoke test (CI)

Every group holds four implementations timed in the same run, on the same stored frame
(an in-memory dataset: MONOCHROME2, rescale slope/intercept and a window in the header):

``fastdcm``  ``render._render_stored``: the plan (the table is cached across calls, as for a
             series of slices) and one fused Numba kernel into a fresh output;
``kernel``   the fused Numba kernel alone, with a prebuilt plan;
``numpy``    the kernel's plain-numpy twin (``fastdcm.kernels.twins``) with the same plan;
``pydicom``  pydicom's own ``apply_modality_lut`` + ``apply_voi_lut``, then the scaling from
             the VOI output range to uint8 (tests/naive.py's recipe).

Cases: ``uint8`` (8 stored bits), ``int16-12bit`` (signed 12 of 16 bits, junk-free),
``uint16-16bit``, ``int32`` (32-bit signed: the arithmetic path) and ``float32`` (Float
Pixel Data: the float path), each at 512x512 and 2048x2048, plus 4096x3328 for uint16
(a mammogram). Every output is checked: fastdcm and numpy bit-exact with each other,
pydicom within 1 of them, so a fast wrong answer fails.

``test_reference_numpy`` is a fixed numpy workload that does not depend on fastdcm's code:
the gate (gate.py) divides every median by it, so a baseline from another CPU still compares.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from fastdcm.decoders import stored_frame
from fastdcm import kernels
from fastdcm.kernels import twins
from fastdcm.options import RenderOptions
from fastdcm.plan import build_plan
from fastdcm.render import _as_unsigned, _render_stored, open_image

#: case -> (numpy dtype, bits stored, rescale slope, rescale intercept, window center, width)
CASES = {
    "uint8": (np.uint8, 8, 1.0, 0.0, 128.0, 200.0),
    "int16-12bit": (np.int16, 12, 1.0, -1024.0, 40.0, 400.0),
    "uint16-16bit": (np.uint16, 16, 1.0, 0.0, 30000.0, 50000.0),
    "int32": (np.int32, 32, 0.5, -100.0, 1000.0, 20000.0),
    "float32": (np.float32, 32, 2.0, -10.0, 50.0, 300.0),
}
SIZES = {"512": (512, 512), "2048": (2048, 2048), "4096x3328": (3328, 4096)}
PARAMS = [
    pytest.param(case, size, id=f"{case}-{size}")
    for case in CASES
    for size in SIZES
    if size != "4096x3328" or case == "uint16-16bit"
]
IMPLS = ("fastdcm", "kernel", "numpy", "pydicom")


def stored_values(case: str, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A smooth image with noise that spans the case's stored range (so windows clip both ways)."""
    dtype, bits = CASES[case][0], CASES[case][1]
    rng = np.random.default_rng(seed)
    rows, cols = shape
    y, x = np.ogrid[-1:1:rows * 1j, -1:1:cols * 1j]
    base = np.exp(-(x * x + y * y) * 2.0)  # 0..1, a bright disc
    noise = rng.normal(0.0, 0.05, shape)
    v = np.clip(base + noise, 0.0, 1.0)
    if dtype == np.float32:
        return (v * 400.0 - 100.0).astype(np.float32)
    signed = np.dtype(dtype).kind == "i"
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if bits == 32:  # keep int32 values in a range a window can see
        lo, hi = -40000, 80000
    return np.round(lo + v * (hi - lo)).astype(dtype)


def make_dataset(case: str, arr: np.ndarray) -> Dataset:
    """An in-memory MONOCHROME2 dataset holding ``arr`` (native, explicit VR little endian)."""
    dtype, bits, slope, intercept, center, width = CASES[case]
    return dataset_for(arr, bits, slope, intercept, center, width)


def dataset_for(arr: np.ndarray, bits: int, slope: float, intercept: float, center: float, width: float) -> Dataset:
    """A MONOCHROME2 dataset holding ``arr`` with these stored bits, rescale and window."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = center, width
    if arr.dtype == np.float32:
        ds.FloatPixelData = arr.astype("<f4").tobytes()
    else:
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = int(arr.dtype.kind == "i")
        ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


def pydicom_render(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """pydicom's functions, scaled from apply_windowing's output range to uint8 (tests/naive.py)."""
    values = apply_voi_lut(apply_modality_lut(arr, ds), ds, index=0, prefer_lut=False)
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0.0, float(2**ds.BitsStored - 1)
    else:
        y_min, y_max = float(-(2 ** (ds.BitsStored - 1))), float(2 ** (ds.BitsStored - 1) - 1)
    y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip(np.floor((values - y_min) / (y_max - y_min) * 255.0 + 0.5), 0, 255).astype(np.uint8)


def apply_plan(stored: np.ndarray, plan, impl=twins) -> np.ndarray:
    """One kernel with a prebuilt plan: ``impl`` is ``fastdcm.kernels`` or its numpy ``twins``."""
    if plan.kind == "table":
        raw = _as_unsigned(stored)
        out = np.empty(raw.shape[0], plan.out_dtype)
        impl.lut_gather(raw, plan.mask, plan.flip, plan.table, out)
    elif stored.dtype.kind == "f":
        raw = np.ascontiguousarray(stored).reshape(-1)
        out = np.empty(raw.shape[0], plan.out_dtype)
        impl.voi_float(raw, plan.slope, plan.intercept, plan.mode, plan.p1, plan.p2, plan.ymax,
                       plan.invert, plan.lut, plan.lut_first, out)
    else:
        raw = _as_unsigned(stored)
        out = np.empty(raw.shape[0], plan.out_dtype)
        impl.voi_int(raw, plan.mask, plan.flip, plan.slope, plan.intercept, plan.mode, plan.p1,
                     plan.p2, plan.ymax, plan.invert, plan.lut, plan.lut_first, out)
    return out.reshape(stored.shape)


class Frame:
    """One case at one size: the dataset, fastdcm's parsed image and stored frame, the answer."""

    def __init__(self, case: str, size: str):
        self.case, self.size = case, size
        arr = stored_values(case, SIZES[size])
        self.ds = make_dataset(case, arr)
        image = open_image(self.ds)
        self.spec = image.spec
        self.stored = stored_frame(image._header, 0)
        assert self.stored.shape == arr.shape and np.array_equal(self.stored, arr)
        self.options = RenderOptions()
        self.plan = build_plan(self.ds, self.spec, 0, self.options)
        assert self.plan is not None and self.plan.kind == ("table" if CASES[case][1] <= 16 else "arith")
        if self.plan.kind == "arith":
            self.plan.lut = self.plan.lut.astype(self.plan.out_dtype)  # as _render_stored passes it
        self.expected = apply_plan(self.stored, self.plan, twins)
        # pydicom's view: Float Pixel Data has no Bits Stored, which apply_windowing reads for
        # its output range; give it the 32-bit signed range there (the window maps the same)
        self.pydicom_ds = copy.copy(self.ds)
        if case == "float32":
            self.pydicom_ds.BitsStored, self.pydicom_ds.PixelRepresentation = 32, 1
        self.pydicom_arr = arr

    def run(self, impl: str):
        if impl == "fastdcm":
            return lambda: _render_stored(self.stored, self.ds, self.spec, 0, self.options)[0]
        if impl == "kernel":
            return lambda: apply_plan(self.stored, self.plan, kernels)
        if impl == "numpy":
            return lambda: apply_plan(self.stored, self.plan, twins)
        return lambda: pydicom_render(self.pydicom_arr, self.pydicom_ds)

    def check(self, impl: str, out: np.ndarray) -> None:
        assert out.shape == self.expected.shape and out.dtype == np.uint8, (out.shape, out.dtype)
        if impl == "pydicom":
            diff = np.abs(out.astype(np.int16) - self.expected.astype(np.int16)).max()
            assert diff <= 1, f"{self.case}: pydicom differs from the numpy twin by {diff}"
        else:
            np.testing.assert_array_equal(out, self.expected, err_msg=f"{impl} {self.case}-{self.size}")
        # the window must clip on both sides, or the case measures nothing interesting
        assert self.expected.min() == 0 and self.expected.max() == 255


_FRAMES: dict[tuple[str, str], Frame] = {}


@pytest.fixture
def frame(request) -> Frame:
    key = (request.node.callspec.params["case"], request.node.callspec.params["size"])
    if key not in _FRAMES:
        _FRAMES.clear()  # keep one case in memory at a time (4096x3328 frames are big)
        _FRAMES[key] = Frame(*key)
    return _FRAMES[key]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("case", "size"), PARAMS)
def test_kernel(benchmark, frame, case, size, impl):
    benchmark.group = f"kernel-{case}-{size}"
    fn = frame.run(impl)
    frame.check(impl, fn())  # checked before timing too: the first call is a warm-up
    out = benchmark(fn)
    frame.check(impl, out)


REFERENCE_SHAPE = (512, 512)


def reference_numpy(src: np.ndarray) -> np.ndarray:
    """A fixed numpy workload (float rescale + window + uint8) independent of fastdcm's code."""
    y = src.astype(np.float64) * 1.0 - 1024.0
    return np.clip(np.floor((y + 160.0) * (255.0 / 400.0) + 0.5), 0, 255).astype(np.uint8)


def test_reference_numpy(benchmark):
    """The in-run yardstick of the gate: every median is divided by this one's."""
    benchmark.group = "reference"
    src = np.random.default_rng(3).integers(0, 4096, REFERENCE_SHAPE, dtype=np.int16)
    out = benchmark(reference_numpy, src)
    y = src.astype(np.float64) - 1024.0
    np.testing.assert_array_equal(out, np.clip(np.floor((y + 160.0) * 0.6375 + 0.5), 0, 255))


#: The memory yardstick's frame: a 4096x3328 uint16 mammogram (27 MB, far beyond the caches).
COPY_SHAPE = (3328, 4096)


def test_reference_copy(benchmark):
    """The gate's yardstick for frames of 2048x2048 and more: a numpy copy of 27 MB. Those
    kernels run at memory speed, which a busy neighbour on a shared VM slows far more than
    the compute of ``test_reference_numpy`` (seen: copy 2.1x slower, compute 1.7x)."""
    benchmark.group = "reference"
    src = np.random.default_rng(4).integers(0, 65536, COPY_SHAPE, dtype=np.uint16)
    dst = np.empty_like(src)
    benchmark(np.copyto, dst, src)
    np.testing.assert_array_equal(dst, src)
