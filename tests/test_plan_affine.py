"""The plan's float32 line (``RenderPlan.affine``) reproduces its table at every stored value.

``plan.fit_affine`` only hands out a line it has checked against the whole table, so these
tests hold the renderer to that: with the line, ``kernels.lut_affine`` gives exactly what
``kernels.lut_gather`` gives with the table, over every stored value and junk high bits;
and the line is found for the cases that matter for speed (so the fast path is really taken).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from fastdcm import kernels
from fastdcm import plan as plan_module
from fastdcm.kernels.voi import MODE_LINEAR, MODE_LINEAR_EXACT, MODE_SCALE, MODE_SIGMOID
from fastdcm.options import RenderOptions
from fastdcm.plan import _rescale_window_table, fit_affine, voi_line
from fastdcm.render import _as_unsigned, _plan_with_range, open_image
from fastdcm.decoders import stored_frame


def _all_values(bits: int, allocated: int) -> np.ndarray:
    """Every stored value, once clean and once with every bit above Bits Stored set."""
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[allocated]
    clean = np.arange(1 << bits, dtype=np.uint64)
    junk = clean | (((1 << allocated) - 1) ^ ((1 << bits) - 1))
    return np.concatenate([clean, junk]).astype(dtype)


def _same_as_gather(table, affine, bits, allocated, signed):
    mask, flip = (1 << bits) - 1, (1 << (bits - 1)) if signed else 0
    raw = _all_values(bits, allocated)
    via_table, via_line = np.empty(raw.shape, table.dtype), np.empty(raw.shape, table.dtype)
    kernels.lut_gather(raw, mask, flip, table, via_table)
    narrow = raw.dtype.type
    ymax = np.float32(np.iinfo(table.dtype).max)
    kernels.lut_affine(raw, narrow(mask), narrow(flip), *affine, ymax, via_line)
    np.testing.assert_array_equal(via_line, via_table)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([(8, 8), (10, 16), (12, 16), (15, 16), (16, 16)]),
    st.booleans(),
    st.sampled_from([(1.0, 0.0), (1.0, -1024.0), (0.5, -1000.0), (2.0, 3.25), (0.3125, 0.0), (-1.0, 100.0)]),
    st.sampled_from([MODE_LINEAR, MODE_LINEAR_EXACT, MODE_SIGMOID]),
    st.one_of(st.integers(-2000, 5000).map(float), st.floats(-2000, 5000)),
    st.one_of(st.integers(1, 6000).map(float), st.floats(1.0, 6000)),
    st.sampled_from([8, 16]),
    st.booleans(),
)
def test_a_fitted_line_is_the_table(bits_alloc, signed, rescale, mode, center, width, depth, invert):
    bits, allocated = bits_alloc
    slope, intercept = rescale
    ymax = float(2**depth - 1)
    table, affine = _rescale_window_table(
        bits, signed, slope, intercept, mode, center, width, ymax, invert, "|u1" if depth == 8 else "<u2"
    )
    if mode == MODE_SIGMOID:
        assert affine is None
    if affine is not None:
        _same_as_gather(table, affine, bits, allocated, signed)


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize(
    ("bits", "signed", "slope", "intercept", "mode", "center", "width"),
    [
        (12, True, 1.0, -1024.0, MODE_LINEAR, 40.0, 400.0),  # CT soft tissue
        (12, True, 1.0, -1024.0, MODE_LINEAR, -600.0, 1500.0),  # CT lung
        (16, True, 1.0, -1024.0, MODE_LINEAR, 300.0, 1500.0),  # CT bone, 16 stored bits
        (12, False, 1.0, 0.0, MODE_LINEAR, 2048.0, 4096.0),  # mammography / CR
        (12, False, 1.0, 0.0, MODE_LINEAR_EXACT, 1800.0, 2500.0),
        (16, False, 0.5, 0.0, MODE_LINEAR, 9000.0, 12000.0),  # MR
        (8, False, 1.0, 0.0, MODE_LINEAR, 128.0, 256.0),
    ],
)
def test_the_line_is_found_for_common_windows(bits, signed, slope, intercept, mode, center, width, invert):
    table, affine = _rescale_window_table(bits, signed, slope, intercept, mode, center, width, 255.0, invert, "|u1")
    assert affine is not None
    _same_as_gather(table, affine, bits, 16 if bits > 8 else 8, signed)


@pytest.mark.parametrize("lo,hi", [(-1024.0, 3071.0), (0.0, 510.0), (17.0, 18.0), (5.0, 5.0)])
def test_min_max_lines(lo, hi):
    stored = np.arange(4096, dtype=np.float64)
    from fastdcm.kernels.voi import quantize, voi_values

    table = quantize(voi_values(stored - 1024.0, MODE_SCALE, lo, hi, 255.0), 255.0, False).astype(np.uint8)
    affine = fit_affine(table, voi_line(MODE_SCALE, lo, hi, 1.0, -1024.0, 255.0), 255.0, False)
    assert affine is not None
    _same_as_gather(table, affine, 12, 16, False)


def test_no_line_for_a_table_that_is_not_one():
    table = np.zeros(4096, np.uint8)
    table[100] = 7  # one stray entry: no line reproduces it, and no near-miss is accepted
    assert fit_affine(table, (0.0, 0.0), 255.0, False) is None
    assert fit_affine(np.zeros((16, 3), np.uint8), (0.0, 0.0), 255.0, False) is None
    assert fit_affine(table, None, 255.0, False) is None


def _lines_and_gathers_agree(image, plan, stored):
    raw = _as_unsigned(stored)
    want = np.empty(raw.shape, np.uint8)
    kernels.lut_gather(raw, plan.mask, plan.flip, plan.table, want)
    np.testing.assert_array_equal(image.render_frame(0).array.reshape(-1), want)


def test_render_takes_the_line_for_a_windowed_ct_file():
    """The real CT test file (int16, rescale -1024, a window) renders through lut_affine, and
    the result is the gather's."""
    image = open_image(get_testdata_file("693_UNCR.dcm"))
    stored = stored_frame(image._header, 0)
    plan = _plan_with_range(stored, image._header.attrs, image.spec, 0, RenderOptions())
    assert plan.kind == "table" and plan.affine is not None
    _lines_and_gathers_agree(image, plan, stored)


def test_min_max_frames_take_the_line_when_it_pays():
    """A min-max table is built per frame: the 512x512 14-bit CT without its window (16 pixels
    per table entry) gets the line; the 16-bit 128x128 CT (a quarter of a pixel per entry) is
    rendered by its value range instead (plan.minmax_by_range); with tables forced it keeps the
    gather, which is cheaper there than proving the line."""
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    del ds.WindowCenter, ds.WindowWidth
    image = open_image(ds)
    stored = stored_frame(image._header, 0)
    plan = _plan_with_range(stored, image._header.attrs, image.spec, 0, RenderOptions())
    assert plan.voi.startswith("minmax") and plan.affine is not None
    _lines_and_gathers_agree(image, plan, stored)
    small = open_image(get_testdata_file("CT_small.dcm"))
    stored = stored_frame(small._header, 0)
    assert _plan_with_range(stored, small._header.attrs, small.spec, 0, RenderOptions()).kind == "arith"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "MINMAX_TABLE_PIXELS_PER_ENTRY", 0)  # tables always
        plan = _plan_with_range(stored, small._header.attrs, small.spec, 0, RenderOptions())
    assert plan.voi.startswith("minmax") and plan.kind == "table" and plan.affine is None
    _lines_and_gathers_agree(small, plan, stored)


MINMAX_FILES = [
    "CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "emri_small_RLE.dcm", "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm", "JPEG-lossy.dcm", "693_UNCR.dcm", "MR_small_bigendian.dcm", "rtdose.dcm",
    "MR2_UNCR.dcm", "RG1_UNCR.dcm", "liver_1frame.dcm", "OBXXXX1A.dcm", "SC_rgb.dcm",
]


@pytest.mark.parametrize("name", MINMAX_FILES)
@pytest.mark.parametrize("depth", [8, 16])
def test_min_max_by_value_range_is_bit_exact_to_the_table(name, depth):
    """The arithmetic min-max (small frames) and the table min-max give the same bits."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    options = RenderOptions(voi="minmax", depth=depth)
    image = open_image(path)
    by_range = image.render_frame(0, options).array
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "MINMAX_TABLE_PIXELS_PER_ENTRY", 0)
        by_table = open_image(path).render_frame(0, options).array
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan_module, "MINMAX_TABLE_PIXELS_PER_ENTRY", 1 << 30)
        arithmetic = open_image(path).render_frame(0, options).array
    assert np.array_equal(by_table, arithmetic) and np.array_equal(by_range, by_table)


def test_palette_plans_are_shared_by_value_not_by_identity():
    """Palette plans are cached by the palette's values: an edited palette is a new plan."""
    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))
    first = open_image(ds).render_frame(0).array
    again = open_image(pydicom.dcmread(get_testdata_file("OBXXXX1A.dcm"))).render_frame(0).array
    assert np.array_equal(first, again)
    red = np.frombuffer(ds.RedPaletteColorLookupTableData, "<u2").copy()
    ds.RedPaletteColorLookupTableData = (65535 - red).tobytes()
    edited = open_image(ds).render_frame(0).array
    assert np.array_equal(edited[..., 1:], first[..., 1:]) and not np.array_equal(edited[..., 0], first[..., 0])


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([(8, 8, False), (12, 16, False), (12, 16, True), (16, 16, True), (16, 16, False)]),
    st.sampled_from([1.0, 0.5, -1.0, 2.5, -0.37]),
    st.floats(-3000, 3000, allow_nan=False),
    st.integers(0, 2**32 - 1),
)
def test_a_min_max_plan_from_the_extremes_equals_the_plan_from_presence(layout, slope, intercept, seed):
    """Without a Modality LUT the min-max table is planned from the frame's least and greatest
    stored value (a rescale keeps or reverses their order): the same plan as from which values occur."""
    bits, allocated, signed = layout
    ds = pydicom.Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 64, 64, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, bits, bits - 1, int(signed)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    mask, flip, _ = plan_module.stored_range(open_image_spec(ds))
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.integers(0, mask + 1, 2))
    j = rng.integers(lo, hi + 1, 4096)
    j[:2] = lo, hi
    raw = (j ^ flip).astype({8: np.uint8, 16: np.uint16}[allocated])
    spec = open_image_spec(ds)
    present = np.zeros(mask + 1, np.bool_)
    kernels.stored_presence(raw, mask, flip, present)
    from fastdcm.render import _stored_extremes

    by_presence = plan_module.build_plan(ds, spec, 0, RenderOptions(), present=present)
    by_extremes = plan_module.build_plan(ds, spec, 0, RenderOptions(), extremes=_stored_extremes(raw, mask, flip, kernels))
    assert by_presence.voi == by_extremes.voi and by_presence.window == by_extremes.window
    np.testing.assert_array_equal(by_presence.table, by_extremes.table)


def open_image_spec(ds):
    """The validated spec of a header-only dataset (pixel data of the right size added)."""
    from fastdcm.header import read_header

    ds = ds.copy()
    ds.PixelData = bytes(ds.Rows * ds.Columns * ds.BitsAllocated // 8)
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    return read_header(ds).spec
