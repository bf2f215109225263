"""Each Numba kernel bit-exact against its plain-numpy twin (kernels/twins.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdcm import kernels
from fastdcm.kernels import twins
from fastdcm.kernels.voi import (
    MODE_LINEAR,
    MODE_LINEAR_EXACT,
    MODE_LUT,
    MODE_SCALE,
    MODE_SIGMOID,
    quantize,
    voi_values,
)

RAW_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def test_every_kernel_follows_the_policy():
    assert kernels.POLICY == {"cache": True, "nogil": True, "error_model": "numpy"}
    for kernel in kernels.KERNELS:
        assert kernel.targetoptions.get("nogil") is True, kernel
        assert kernel.targetoptions.get("error_model") == "numpy", kernel
        assert type(kernel._cache).__name__ != "NullCache", f"{kernel} is not cached"
        assert kernel.targetoptions.get("parallel") in (None, False), kernel


@st.composite
def stored_data(draw, max_allocated=32):
    allocated = draw(st.sampled_from([a for a in (8, 16, 32) if a <= max_allocated]))
    bits = draw(st.integers(1, allocated))
    signed = draw(st.booleans())
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # full-width random words: junk above Bits Stored must be masked away
    raw = rng.integers(0, 2**allocated, size=n, dtype=np.uint64).astype(RAW_DTYPES[allocated])
    mask = (1 << bits) - 1
    # and the edge values: min, max stored, zero, all ones
    edges = np.array([0, mask, 1 << (bits - 1), (1 << (bits - 1)) - 1, 2**allocated - 1], dtype=np.uint64)
    raw = np.concatenate([raw, edges.astype(RAW_DTYPES[allocated])])
    flip = (1 << (bits - 1)) if signed else 0
    return raw, bits, mask, flip


@settings(max_examples=150, deadline=None)
@given(stored_data(max_allocated=16), st.sampled_from([np.uint8, np.uint16]), st.integers(0, 2**32 - 1))
def test_lut_gather_matches_twin(data, out_dtype, seed):
    raw, bits, mask, flip = data
    table = np.random.default_rng(seed).integers(0, np.iinfo(out_dtype).max + 1, mask + 1).astype(out_dtype)
    got, want = np.empty(raw.shape, out_dtype), np.empty(raw.shape, out_dtype)
    kernels.lut_gather(raw, mask, flip, table, got)
    twins.lut_gather(raw, mask, flip, table, want)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(stored_data(max_allocated=16), st.integers(0, 2**32 - 1))
def test_lut_gather_channels_matches_twin(data, seed):
    raw, bits, mask, flip = data
    table = np.random.default_rng(seed).integers(0, 256, (mask + 1, 3)).astype(np.uint8)
    got, want = np.empty((raw.shape[0], 3), np.uint8), np.empty((raw.shape[0], 3), np.uint8)
    kernels.lut_gather_channels(raw, mask, flip, table, got)
    twins.lut_gather_channels(raw, mask, flip, table, want)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=100, deadline=None)
@given(stored_data())
def test_presence_and_minmax_match_twins(data):
    raw, bits, mask, flip = data
    if bits <= 16:
        got, want = np.zeros(mask + 1, np.bool_), np.zeros(mask + 1, np.bool_)
        kernels.stored_presence(raw, mask, flip, got)
        twins.stored_presence(raw, mask, flip, want)
        np.testing.assert_array_equal(got, want)
    got, want = np.zeros(2, np.int64), np.zeros(2, np.int64)
    kernels.int_minmax(raw, mask, flip, got)
    twins.int_minmax(raw, mask, flip, want)
    np.testing.assert_array_equal(got, want)


windows = st.tuples(
    st.sampled_from([MODE_LINEAR, MODE_LINEAR_EXACT, MODE_SIGMOID, MODE_SCALE]),
    st.floats(-5000, 5000, allow_nan=False),
    st.one_of(st.just(1.0), st.floats(1.0, 10000, allow_nan=False), st.floats(0.001, 1.0)),
)


def _params(mode, p1, p2):
    if mode == MODE_LINEAR and p2 < 1:
        p2 = 1.0
    if mode == MODE_SCALE:
        p1, p2 = p1, p1 + p2
    return mode, p1, p2


@settings(max_examples=200, deadline=None)
@given(
    stored_data(),
    windows,
    st.sampled_from([(1.0, 0.0), (1.0, -1024.0), (0.5, 3.25), (-2.0, 100.0)]),
    st.sampled_from([8, 16]),
    st.booleans(),
)
def test_voi_int_matches_twin(data, window, rescale, depth, invert):
    raw, bits, mask, flip = data
    mode, p1, p2 = _params(*window)
    slope, intercept = rescale
    ymax = float(2**depth - 1)
    out_dtype = np.uint8 if depth == 8 else np.uint16
    lut = np.zeros(1, out_dtype)
    got, want = np.empty(raw.shape, out_dtype), np.empty(raw.shape, out_dtype)
    args = (mask, flip, slope, intercept, mode, p1, p2, ymax, invert, lut, 0)
    kernels.voi_int(raw, *args, got)
    twins.voi_int(raw, *args, want)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-3000, 3000)),
        min_size=1,
        max_size=200,
    ),
    windows,
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
)
def test_voi_float_matches_twin(values, window, dtype, invert):
    raw = np.array(values, dtype=dtype)
    mode, p1, p2 = _params(*window)
    lut = np.zeros(1, np.uint8)
    got, want = np.empty(raw.shape, np.uint8), np.empty(raw.shape, np.uint8)
    args = (1.0, 0.0, mode, p1, p2, 255.0, invert, lut, 0)
    with np.errstate(all="ignore"):
        kernels.voi_float(raw, *args, got)
        twins.voi_float(raw, *args, want)
    np.testing.assert_array_equal(got, want)
    rng_got, rng_want = np.empty(2), np.empty(2)
    kernels.float_minmax(raw, rng_got)
    twins.float_minmax(raw, rng_want)
    np.testing.assert_array_equal(rng_got, rng_want)


@settings(max_examples=60, deadline=None)
@given(stored_data(), st.integers(-100, 100), st.integers(1, 300), st.booleans())
def test_voi_lut_mode_matches_twin(data, first, n, invert):
    raw, bits, mask, flip = data
    lut = np.random.default_rng(n).integers(0, 256, n).astype(np.uint8)
    got, want = np.empty(raw.shape, np.uint8), np.empty(raw.shape, np.uint8)
    args = (mask, flip, 1.0, 0.0, MODE_LUT, 0.0, 0.0, 255.0, invert, lut, first)
    kernels.voi_int(raw, *args, got)
    twins.voi_int(raw, *args, want)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", [MODE_LINEAR, MODE_LINEAR_EXACT, MODE_SIGMOID, MODE_SCALE])
@pytest.mark.parametrize("signed", [False, True])
def test_table_path_equals_arithmetic_path(mode, signed):
    """The table the plan builds (numpy formulas) and the per-pixel kernel agree on every value."""
    bits = 12
    first = -(1 << (bits - 1)) if signed else 0
    stored = np.arange(first, first + (1 << bits))
    mask, flip = (1 << bits) - 1, (1 << (bits - 1)) if signed else 0
    raw = (stored.astype(np.int64) & mask).astype(np.uint32)
    p1, p2 = (40.0, 400.0) if mode != MODE_SCALE else (-1000.0, 2000.0)
    table = quantize(voi_values(stored * 1.0 - 1024.0, mode, p1, p2, 255.0), 255.0, False).astype(np.uint8)
    via_table = np.empty(raw.shape, np.uint8)
    kernels.lut_gather(raw, mask, flip, table, via_table)
    via_arith = np.empty(raw.shape, np.uint8)
    kernels.voi_int(raw, mask, flip, 1.0, -1024.0, mode, p1, p2, 255.0, False, np.zeros(1, np.uint8), 0, via_arith)
    np.testing.assert_array_equal(via_table, via_arith)


def test_linear_window_edges_follow_the_standard():
    """PS3.3 C.11.2.1.2.1 at c=40, w=400: x <= -160 -> 0, x > 239 -> 255, width 1 is a step."""
    x = np.array([-161.0, -160.0, -159.5, 39.5, 40.0, 239.0, 239.5])
    y = quantize(voi_values(x, MODE_LINEAR, 40.0, 400.0, 255.0), 255.0, False)
    assert list(y[:2]) == [0, 0] and y[-1] == 255 and y[-2] == 255
    assert 127 <= y[3] <= 128
    step = quantize(voi_values(np.array([9.4, 9.5, 9.6]), MODE_LINEAR, 10.0, 1.0, 255.0), 255.0, False)
    assert list(step) == [0.0, 0.0, 255.0]


def test_nan_under_a_width_one_window_is_zero_not_an_exception():
    raw = np.array([np.nan, 0.0, 1.0], np.float32)
    out = np.empty(3, np.uint8)
    kernels.voi_float(raw, 1.0, 0.0, MODE_LINEAR, 0.5, 1.0, 255.0, False, np.zeros(1, np.uint8), 0, out)
    assert out.tolist() == [0, 0, 255]


@settings(max_examples=150, deadline=None)
@given(
    stored_data(max_allocated=16),
    st.sampled_from([np.uint8, np.uint16]),
    st.floats(0, 4095),
    st.floats(-300, 300, allow_nan=False, width=32),
    st.floats(-70000, 70000, allow_nan=False, width=32),
)
def test_lut_affine_matches_twin(data, out_dtype, j0, a, b):
    raw, bits, mask, flip = data
    ymax = np.float32(np.iinfo(out_dtype).max)
    narrow = raw.dtype.type
    args = (narrow(mask), narrow(flip), np.float32(round(j0)), np.float32(a), np.float32(b), ymax)
    got, want = np.empty(raw.shape, out_dtype), np.empty(raw.shape, out_dtype)
    kernels.lut_affine(raw, *args, got)
    twins.lut_affine(raw, *args, want)
    np.testing.assert_array_equal(got, want)


def test_exact_halves_round_up():
    """RENDERING.md 2.3: an output of exactly k + 0.5 rounds up in every function.

    LINEAR_EXACT c=0, w=400: x=-80 is exactly 76.5 (the textbook form ((x-c)/w + 0.5) * 255
    computes 76.4999...); LINEAR c=0.5, w=401: x=80 is 178.5; min-max 0..510: x=1 is 0.5.
    """
    assert quantize(voi_values(np.array([-80.0]), MODE_LINEAR_EXACT, 0.0, 400.0, 255.0), 255.0, False)[0] == 77
    assert quantize(voi_values(np.array([80.0]), MODE_LINEAR, 0.5, 401.0, 255.0), 255.0, False)[0] == 179
    assert quantize(voi_values(np.array([1.0]), MODE_SCALE, 0.0, 510.0, 255.0), 255.0, False)[0] == 1
    out = np.empty(1, np.uint8)
    kernels.voi_int(np.array([0], np.uint32), 0xFFFF, 0, 1.0, -80.0, MODE_LINEAR_EXACT, 0.0, 400.0, 255.0, False,
                    np.zeros(1, np.uint8), 0, out)
    assert out[0] == 77


def test_numba_is_imported_by_one_module_only():
    """kernels/jitted.py; everything else reaches the kernels through kernels.impl() (lazily)."""
    import pathlib
    import re

    root = pathlib.Path(kernels.__file__).parent.parent
    importers = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if re.search(r"^\s*(import numba|from numba)", p.read_text(), re.M)
    )
    assert importers == ["kernels/jitted.py"]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3]), st.integers(1, 9),
    st.sampled_from([(np.uint8, 0), (np.uint16, 8)]), st.integers(0, 2**32 - 1),
)
def test_box_shrink_matches_twin(rows, cols, samples, k, kind, seed):
    from fastdcm.kernels import twins

    dtype, shift = kind
    img = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (rows, cols, samples)).astype(dtype)
    shape = (-(-rows // k), -(-cols // k), samples)
    out, want = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    kernels.box_shrink(img, k, shift, np.empty(cols * samples, np.uint32), np.empty(shape[1] * samples, np.int64), out)
    if dtype is np.uint8:  # 16-bit column sums (what thumbs.thumbnail gives 8-bit images): the same means
        out16 = np.zeros(shape, np.uint8)
        kernels.box_shrink(img, k, shift, np.empty(cols * samples, np.uint16), np.empty(shape[1] * samples, np.int64), out16)
        np.testing.assert_array_equal(out16, out)
    twins.box_shrink(img, k, shift, None, None, want)
    np.testing.assert_array_equal(out, want)
    # the block means by hand, for the first block
    block = img[:k, :k].astype(np.int64)
    n = block.shape[0] * block.shape[1]
    assert want[0, 0, 0] == ((2 * block[..., 0].sum() + n) // (2 * n)) >> shift


@settings(max_examples=100, deadline=None)
@given(stored_data(max_allocated=16), st.sampled_from([np.uint8, np.uint16]), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_lut_affine_stack_matches_lut_affine_per_channel(data, out_dtype, channels, seed):
    raw, bits, mask, flip = data
    rng = np.random.default_rng(seed)
    ymax = np.float32(np.iinfo(out_dtype).max)
    narrow = raw.dtype.type
    j0 = np.round(rng.uniform(0, 4095, channels)).astype(np.float32)
    a = rng.uniform(-300, 300, channels).astype(np.float32)
    b = rng.uniform(-70000, 70000, channels).astype(np.float32)
    got = np.empty((raw.shape[0], channels), out_dtype)
    kernels.lut_affine_stack(raw, narrow(mask), narrow(flip), j0, a, b, ymax, got)
    want = np.empty_like(got)
    twins.lut_affine_stack(raw, narrow(mask), narrow(flip), j0, a, b, ymax, want)
    np.testing.assert_array_equal(got, want)
    for c in range(channels):
        one = np.empty(raw.shape[0], out_dtype)
        kernels.lut_affine(raw, narrow(mask), narrow(flip), j0[c], a[c], b[c], ymax, one)
        np.testing.assert_array_equal(got[:, c], one)


@settings(max_examples=60, deadline=None)
@given(stored_data(max_allocated=16), st.sampled_from([1, 2, 4, 7]), st.integers(0, 2**32 - 1))
def test_lut_gather_channels_any_count_matches_twin(data, channels, seed):
    raw, bits, mask, flip = data
    table = np.random.default_rng(seed).integers(0, 65536, (mask + 1, channels)).astype(np.uint16)
    got, want = np.empty((raw.shape[0], channels), np.uint16), np.empty((raw.shape[0], channels), np.uint16)
    kernels.lut_gather_channels(raw, mask, flip, table, got)
    twins.lut_gather_channels(raw, mask, flip, table, want)
    np.testing.assert_array_equal(got, want)


def test_ybr_full_to_rgb_is_pydicoms_on_every_input():
    """Every (Y, Cb, Cr): the kernel equals its twin; and pydicom's float32 matmul conversion, which
    depends on the BLAS numpy uses, within 1 and on all but a few of the 2^24 inputs (exactly here:
    an FMA BLAS, as on the machines fastdcm is measured on)."""
    from pydicom.pixels.processing import _convert_YBR_FULL_to_RGB

    from fastdcm.decoders.backends import _YBR_TO_RGB

    every = np.indices((256, 256, 256), dtype=np.uint8).reshape(3, -1).T.copy()
    got = np.empty_like(every)
    kernels.ybr_full_to_rgb(every, _YBR_TO_RGB, got)
    want = _convert_YBR_FULL_to_RGB(every.reshape(4096, 4096, 3)).reshape(-1, 3)
    diff = np.abs(got.astype(np.int16) - want)
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 64
    part = every[::97]  # the twin (numpy, float64 temporaries) on a sample of 173,000
    twin = np.empty_like(part)
    twins.ybr_full_to_rgb(part, _YBR_TO_RGB, twin)
    assert np.array_equal(twin, got[::97])


@pytest.mark.parametrize("k", range(2, 17))
@pytest.mark.parametrize("samples", [1, 3])
def test_box_shrink_rounds_an_exact_half_up(k, samples):
    """Blocks whose mean is exactly x.5 (n even and not a power of two: 1 / n is not exact, so a
    mean computed as total * (1 / n) can fall just under the half)."""
    from fastdcm.kernels import twins

    rng = np.random.default_rng(k)
    n = k * k
    img = np.zeros((2 * k, 3 * k + 1, samples), np.uint8)
    for br in range(2):
        for bc in range(3):
            for s in range(samples):
                x = int(rng.integers(0, 254))
                total = n * x + n // 2 if n % 2 == 0 else n * x  # mean x.5 (or x for odd n)
                block = np.full(n, total // n, np.int64)
                block[: total - block.sum()] += 1  # spread the rest: the block sums to total
                img[br * k:(br + 1) * k, bc * k:(bc + 1) * k, s] = rng.permutation(block).reshape(k, k)
    shape = (2, 4, samples)
    out, want = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    kernels.box_shrink(img, k, 0, np.empty(img.shape[1] * samples, np.uint16), np.empty(shape[1] * samples, np.int64), out)
    twins.box_shrink(img, k, 0, None, None, want)
    np.testing.assert_array_equal(out, want)


@settings(max_examples=200, deadline=None)
@given(stored_data())
def test_stored_extremes_equal_the_minmax_kernel(data):
    """numpy's reductions where masking changes nothing, the kernel elsewhere: the same answer."""
    import importlib

    render = importlib.import_module("fastdcm.render")
    raw, bits, mask, flip = data
    want = np.zeros(2, np.int64)
    twins.int_minmax(raw, mask, flip, want)
    assert render._stored_extremes(raw, mask, flip, kernels) == (want[0], want[1])
    if raw.dtype.itemsize * 8 == bits or not flip:  # the numpy branch: values within the stored bits
        clean = raw & raw.dtype.type(mask)
        twins.int_minmax(clean, mask, flip, want)
        assert render._stored_extremes(clean, mask, flip, kernels) == (want[0], want[1])


_LAZY_AFTER_WARMUP = r"""
import json, sys
from fastdcm import kernels
kernels.warmup()
k = kernels.compiled()
names = [n for n in k.__all__ if hasattr(getattr(k, n), "signatures")]
before = {n: set(getattr(k, n).signatures) for n in names}
import fastdcm
from fastdcm.run.privacy import NAME_GUARD
from fastdcm.run.tags import extract_from, parse_tags
image = fastdcm.open_image(sys.argv[1])  # a native 16-bit CT slice with a window
image.render_frame(0)
extract_from(image, parse_tags(list(NAME_GUARD), allow_phi=True))  # the name guard's second walk
print(json.dumps({n: [str(s) for s in set(getattr(k, n).signatures) - before[n]] for n in names}))
"""


def test_warmup_loads_what_a_native_ct_slice_uses(tmp_path):
    """The parent's warm-up (before the workers fork) loads the signatures a plain run uses, so no
    worker loads one from the disk cache on its first file: the header walks take the file's bytes
    (read-only views) and a native frame is a read-only view too (the warm-up once passed writable
    arrays, a signature no real call has)."""
    import json
    import subprocess
    import sys

    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    import pydicom

    ds = pydicom.dcmread(ct)
    ds.WindowCenter, ds.WindowWidth = 40, 400  # (a window: the table path's line, as most CT has)
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    run = subprocess.run([sys.executable, "-c", _LAZY_AFTER_WARMUP, str(path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    loaded = {name: sigs for name, sigs in json.loads(run.stdout.strip().splitlines()[-1]).items() if sigs}
    assert loaded == {}, loaded


_COUNT_AFTER_WARMUP = r"""
import json, sys
from fastdcm import kernels
kernels.warmup(full=sys.argv[1] == "full")
k = kernels.compiled()
print(json.dumps(sum(len(getattr(k, n).signatures) for n in k.__all__ if hasattr(getattr(k, n), "signatures"))))
"""


def test_default_warmup_loads_the_core_and_full_loads_every_signature():
    """A run's start-up loads the few signatures nearly every file uses (each costs a few ms from the
    disk cache; all of them ~0.5 s, once more than a short run's whole work), the rest where used."""
    import json
    import subprocess
    import sys

    from fastdcm.kernels.twins import warmup_arrays

    core, every = warmup_arrays(full=False), warmup_arrays(full=True)
    assert [k for k, _ in every[: len(core)]] == [k for k, _ in core] and len(core) <= 8 < len(every)
    counts = {}
    for which in ("core", "full"):
        run = subprocess.run([sys.executable, "-c", _COUNT_AFTER_WARMUP, which], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        counts[which] = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["core"] == len(core) and counts["full"] > 3 * counts["core"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(2, 8))
def test_changed_values_matches_twin_over_a_sequence_of_calls(seed, columns, calls):
    """``changed_values`` (the metadata table's values that differ from the last file's) and its twin,
    called again and again on one state: the same indexes, bytes and (length, code) each time; a
    value left out is the last call's, byte for byte."""
    from fastdcm.kernels import twins

    rng = np.random.default_rng(seed)
    width = 8
    states = [(np.zeros((columns, width), np.uint8), np.full((columns, 2), -3, np.int64), np.zeros(columns, np.int64))
              for _ in range(2)]
    buf = rng.integers(0, 3, 64).astype(np.uint8)  # few symbols: equal values are common
    found = np.zeros((columns, 3), np.int64)
    for _ in range(calls):
        for w in range(columns):
            if rng.random() < 0.5:  # this value as it was (the same bytes, found where they were)
                continue
            kind = rng.integers(0, 5)
            start = int(rng.integers(0, 60))
            length = int(rng.integers(0, 12)) if kind > 1 else -1  # (a length no walk gives: never kept)
            found[w] = (-1, 0, 0) if kind == 1 else (start, length, int(rng.integers(0, 2)))  # absent, longer than width, past the end
        if rng.random() < 0.5:
            buf = buf.copy()
            buf[rng.integers(0, 64)] ^= 1
        got = [kernels.changed_values(buf, found, *states[0]), twins.changed_values(buf, found, *states[1])]
        assert got[0] == got[1]
        for a, b in zip(states[0], states[1]):
            np.testing.assert_array_equal(a[: got[0]] if a.ndim == 1 else a, b[: got[0]] if b.ndim == 1 else b)
        last, seen, _ = states[0]
        for w in range(columns):  # every value that fits is what the state holds now
            s, n = int(found[w, 0]), int(found[w, 1])
            if s >= 0 and 0 <= n <= width and s + n <= 64:
                assert seen[w, 0] == n and last[w, :n].tobytes() == buf[s : s + n].tobytes()
            elif s >= 0:
                assert seen[w, 0] == -2  # never equal: decoded every time
