"""--size / --fit / --max-size (issue 11, requirement 1): the geometry, the filter held to OpenCV and
Pillow on every test file, 8-bit, 16-bit and colour, and the mapping in the manifest and the table."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image as PILImage
from pydicom.data import get_testdata_file, get_testdata_files

import fastdcm
from fastdcm import RenderOptions, cli, kernels
from fastdcm.errors import FastDcmError, InvalidOptionError
from fastdcm.kernels import twins
from fastdcm.render import open_image
from fastdcm.resize import Fit, apply, parse_geometry, resize_plan

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))


def _first_frame(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = open_image(path)
            return image, image.render_frame(0).array
        except FastDcmError:
            return None, None


def _renderable():
    """(path, image, its first frame rendered at full size) of every test file fastdcm renders."""
    for path in FILES:
        image, full = _first_frame(path)
        if image is not None:
            yield path, image, full


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 60), st.integers(1, 60), st.integers(1, 60), st.integers(1, 60), st.sampled_from([1, 3]),
    st.sampled_from([np.uint8, np.uint16]), st.integers(0, 2**32 - 1),
)
def test_resample_kernel_matches_its_twin(rows, cols, out_rows, out_cols, samples, dtype, seed):
    ymax = np.iinfo(dtype).max
    img = np.random.default_rng(seed).integers(0, ymax, (rows, cols, samples), endpoint=True).astype(dtype)
    plan = resize_plan(rows, cols, (out_cols, out_rows), Fit.STRETCH, None)
    ry, rx = plan.rows, plan.cols
    tx, wx = rx.flat_taps(samples, cols)
    got = np.empty((out_rows, out_cols, samples), dtype)
    want = np.empty_like(got)
    args = (img, ry.starts, ry.counts, ry.weights, tx, wx, np.float32(ymax))
    kernels.resample(*args, np.empty(cols * samples, np.float32), np.empty(tx.shape[1], np.float32), got)
    twins.resample(*args, None, None, want)
    assert np.array_equal(got, want)
    if (out_rows <= rows and out_cols <= cols) or (out_rows >= rows and out_cols >= cols):
        shrink = out_rows <= rows and out_cols <= cols
        ref = cv2.resize(img if samples == 3 else img[:, :, 0], (out_cols, out_rows),
                         interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        assert np.abs(ref.reshape(got.shape).astype(np.int64) - got).max() <= 1


@pytest.mark.parametrize("size", [64, 200, "300x120"])
def test_every_test_file_within_1_of_opencv(size):
    """Shrinking: OpenCV's INTER_AREA; enlarging: INTER_LINEAR, on the image render gives at
    full size; 8-bit and 16-bit. Every transfer syntax (JPEG 2000 included) gives the same."""
    checked = 0
    for path, image, full in _renderable():
        rows, cols = full.shape[:2]
        for depth in (8, 16):
            if depth == 16:
                full = image.render_frame(0, RenderOptions(depth=16)).array
            got = image.render_frame(0, RenderOptions(size=size, fit="stretch", depth=depth)).array
            out_rows, out_cols = got.shape[:2]
            shrink, grow = out_rows <= rows and out_cols <= cols, out_rows >= rows and out_cols >= cols
            if not (shrink or grow):
                continue
            ref = cv2.resize(full, (out_cols, out_rows), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            assert got.dtype == full.dtype and got.shape == ref.shape, path
            diff = np.abs(ref.astype(np.int64) - got.astype(np.int64)).max()
            assert diff <= 1, f"{os.path.basename(path)} {depth}-bit: {diff}"
            checked += 1
    assert checked > 150


def test_whole_factors_equal_pillows_reduce_within_1():
    checked = 0
    for path in FILES:
        image, full = _first_frame(path)
        if image is None or full.dtype != np.uint8 or min(full.shape[:2]) < 64:
            continue
        rows, cols = full.shape[:2]
        factor = 4
        got = image.render_frame(0, RenderOptions(size=f"{-(-cols // factor)}x{-(-rows // factor)}", fit="stretch")).array
        if rows % factor or cols % factor:
            continue
        ref = np.asarray(PILImage.fromarray(full).reduce(factor))
        assert np.abs(ref.astype(np.int64) - got).max() <= 1, path
        checked += 1
    assert checked > 40


def test_longest_side_keeps_the_aspect_ratio_and_max_size_only_shrinks():
    ct = get_testdata_file("CT_small.dcm")  # 128 x 128
    mr = get_testdata_file("MR_small.dcm")  # 64 x 64
    us = get_testdata_file("US1_J2KR.dcm")  # 480 rows x 640 columns, colour
    assert fastdcm.render(ct, size=32).shape == (32, 32)
    assert fastdcm.render(mr, size=256).shape == (256, 256)  # size enlarges
    assert fastdcm.render(us, size=320).shape == (240, 320, 3)
    assert fastdcm.render(us, max_size=320).shape == (240, 320, 3)
    assert fastdcm.render(mr, max_size=256).shape == (64, 64)  # never enlarges
    assert np.array_equal(fastdcm.render(mr, max_size=64), fastdcm.render(mr))


def test_pad_crop_and_stretch_into_a_box():
    us = get_testdata_file("US1_J2KR.dcm")  # 480 x 640 (rows x columns)
    full = fastdcm.render(us)
    image = open_image(us)

    pad = image.render_frame(0, RenderOptions(size="256x256", fit="pad"))
    assert pad.array.shape == (256, 256, 3)
    assert pad.mapping == {"scale": [0.4, 0.4], "offset": [32, 0]}  # 192 rows centred: 32 above, 32 below
    assert not pad.array[:32].any() and not pad.array[-32:].any() and pad.array[32:224].any()
    inner = cv2.resize(full, (256, 192), interpolation=cv2.INTER_AREA)
    assert np.abs(inner.astype(int) - pad.array[32:224]).max() <= 1

    crop = image.render_frame(0, RenderOptions(size="256x256", fit="crop"))
    assert crop.array.shape == (256, 256, 3)
    # 640 * 256/480 = 341.3 -> 341 columns, of which 42 are cut at the left and 43 at the right
    assert crop.mapping == {"scale": [round(256 / 480, 9), round(341 / 640, 9)], "offset": [0, -42]}
    cover = cv2.resize(full, (341, 256), interpolation=cv2.INTER_AREA)
    assert np.abs(cover[:, 42:298].astype(int) - crop.array).max() <= 1
    # the mapping: a pixel at the frame's centre lands at the output's centre
    (sr, sc), (orow, ocol) = crop.mapping["scale"], crop.mapping["offset"]
    assert abs(240 * sr + orow - 128) < 1 and abs(320 * sc + ocol - 128) < 1.5

    stretch = image.render_frame(0, RenderOptions(size="100x300", fit="stretch"))
    assert stretch.array.shape == (300, 100, 3) and stretch.mapping == {"scale": [0.625, 0.15625], "offset": [0, 0]}


def test_pad_is_black_after_monochrome1_inversion():
    mono1 = get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    image = open_image(mono1)
    rows, cols = image.spec.rows, image.spec.columns
    arr = image.render_frame(0, RenderOptions(size=f"{cols * 2}x{rows}", fit="pad")).array
    assert arr.shape == (rows, cols * 2) and not arr[:, : cols // 2 - 1].any()


def test_reduce_then_size_maps_to_the_full_frame():
    path = get_testdata_file("CT_small.dcm")
    rendered = open_image(path).render_frame(0, RenderOptions(reduce=1, size=32))
    assert rendered.array.shape == (32, 32) and rendered.mapping == {"scale": [0.25, 0.25], "offset": [0, 0]}


@pytest.mark.parametrize(
    "kwargs",
    [{"size": "0"}, {"size": "abc"}, {"size": "512x"}, {"size": 70000}, {"size": True}, {"size": (1, 2, 3)},
     {"max_size": "512x512"}, {"fit": "squash"}, {"size": 64, "max_size": 64}],
)
def test_bad_geometry_is_a_typed_error(kwargs):
    with pytest.raises(InvalidOptionError):
        RenderOptions(**kwargs)


def test_geometry_parsing():
    assert parse_geometry("512") == 512 and parse_geometry(" 512 x 384 ") == (512, 384)
    assert parse_geometry((64, 32)) == (64, 32) and parse_geometry(None) is None


def test_apply_leaves_an_image_of_that_size_alone():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plan = resize_plan(3, 4, (4, 3), Fit.STRETCH, None)
    assert plan.identity and apply(img, plan, 255) is img


def test_convert_records_size_and_mapping_in_the_manifest_and_the_table(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("CT_small.dcm", "US1_J2KR.dcm"):
        (src / name).write_bytes(open(get_testdata_file(name), "rb").read())
    out = tmp_path / "out"
    code = cli.main(["convert", str(src), "-o", str(out), "--size", "96x64", "--fit", "pad", "--workers", "0",
                     "--quiet", "--metadata", "table.parquet"])
    assert code == 0
    records = {os.path.basename(r["source"]): r for r in map(json.loads, open(out / "manifest.jsonl"))}
    assert records["CT_small.dcm"]["shape"] == [64, 96]
    assert records["CT_small.dcm"]["resize"] == {"scale": [0.5, 0.5], "offset": [0, 16]}
    # 480 x 640 into 96 x 64: 64 rows, 85 columns, 5 columns of black at the left
    assert records["US1_J2KR.dcm"]["resize"] == {"scale": [round(64 / 480, 9), 85 / 640], "offset": [0, 5]}
    with PILImage.open(out / "CT_small.png") as im:
        assert im.size == (96, 64)
    table = pq.read_table(out / "table.parquet").to_pylist()
    ct = next(r for r in table if r["source"].endswith("CT_small.dcm"))
    assert (ct["rows"], ct["columns"], ct["scale_rows"], ct["offset_columns"]) == (64, 96, 0.5, 16)
    # another size is another output: --resume redoes the inputs
    code = cli.main(["convert", str(src), "-o", str(out), "--size", "48", "--workers", "0", "--quiet",
                     "--resume", "--on-exists", "overwrite"])
    assert code == 0
    with PILImage.open(out / "CT_small.png") as im:
        assert im.size == (48, 48)


def test_the_one_pass_path_gives_the_two_steps_image():
    """Grey frames whose VOI is a proven line are windowed and resized in one pass
    (kernels.resample_affine): the same image, bit for bit, as the window then the resize."""
    from fastdcm.plan import build_plan

    fused = 0
    for path in FILES:
        image, full = _first_frame(path)
        if image is None or full.ndim != 2:
            continue
        for depth, size in ((8, 100), (16, "64x200")):
            options = RenderOptions(size=size, fit="crop", depth=depth)
            plan = build_plan(image._header.attrs, image.spec, 0, options)
            got = image.render_frame(0, options).array
            whole = image.render_frame(0, RenderOptions(depth=depth)).array
            resize = resize_plan(*whole.shape, parse_geometry(size), Fit.CROP, None)
            assert np.array_equal(got, apply(whole, resize, (1 << depth) - 1)), path
            fused += plan is not None and plan.affine is not None
    assert fused > 20  # the one-pass path was taken


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from([np.uint8, np.uint16]), st.integers(0, 2**32 - 1))
def test_resample_affine_kernel_matches_its_twin(rows, cols, out_rows, out_cols, out_dtype, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 4096, (rows, cols)).astype(np.uint16)
    ymax = np.float32(np.iinfo(out_dtype).max)
    j0, a, b = np.float32(rng.integers(0, 4096)), np.float32(rng.uniform(-3, 3)), np.float32(rng.uniform(0, float(ymax)))
    plan = resize_plan(rows, cols, (out_cols, out_rows), Fit.STRETCH, None)
    ry, rx = plan.rows, plan.cols
    tx, wx = rx.flat_taps(1, cols)
    got, want = np.empty((out_rows, out_cols, 1), out_dtype), np.empty((out_rows, out_cols, 1), out_dtype)
    args = (raw, np.uint16(4095), np.uint16(0), j0, a, b, ymax, ry.starts, ry.counts, ry.weights, tx, wx)
    kernels.resample_affine(*args, np.empty(cols, np.float32), np.empty(tx.shape[1], np.float32), got)
    twins.resample_affine(*args, None, None, want)
    assert np.array_equal(got, want)


def _general(plan):
    """The same plan without its block-mean path: ``resample`` with area weights."""
    return dataclasses.replace(plan, block=None)


def test_whole_power_of_two_factors_take_block_means():
    assert resize_plan(512, 512, 256, Fit.PAD, None).block == (2, 2)
    assert resize_plan(510, 512, 256, Fit.PAD, None).block == (2, 2)  # 255 x 256
    assert resize_plan(4096, 3328, 1024, Fit.PAD, None).block == (4, 4)  # 1024 x 832
    padded = resize_plan(512, 384, (256, 256), Fit.PAD, None)  # 256 x 192, centred on 256 x 256
    assert padded.block == (2, 2) and padded.pad == (0, 32)
    assert resize_plan(512, 512, (512, 128), Fit.STRETCH, None).block == (4, 1)
    assert resize_plan(256, 256, 16, Fit.PAD, None).block == (16, 16)  # 256 pixels a block: the most
    for rows, cols, size, fit in [(512, 512, 200, Fit.PAD),  # not a whole factor
                                  (768, 768, 256, Fit.PAD),  # 3: not a power of two
                                  (4096, 4096, 128, Fit.PAD),  # 32 x 32 = 1024 pixels a block: past MAX_BLOCK
                                  (512, 384, (128, 128), Fit.CROP),  # cropped
                                  (256, 256, 512, Fit.PAD)]:  # enlarged
        assert resize_plan(rows, cols, size, fit, None).block is None, (rows, cols, size)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.sampled_from([(1, 2), (2, 1), (2, 2), (4, 4), (8, 2), (2, 8), (16, 16), (1, 16)]),
       st.sampled_from([1, 3, 4]), st.sampled_from([np.uint8, np.uint16]), st.booleans(), st.integers(0, 2**32 - 1))
def test_block_mean_is_resample_exactly_and_matches_its_twin(out_rows, out_cols, block, samples, dtype, extreme, seed):
    """For whole power-of-two factors the block means are resample's own numbers (its float32 sums
    are exact there), with the largest values too (every sample at the maximum, 16 x 16 blocks)."""
    ky, kx = block
    rows, cols = out_rows * ky, out_cols * kx
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    img = (np.full((rows, cols, samples), top, dtype) if extreme
           else rng.integers(0, top, (rows, cols, samples), endpoint=True).astype(dtype))
    got, want = np.empty((out_rows, out_cols, samples), dtype), np.empty((out_rows, out_cols, samples), dtype)
    shift = (ky * kx).bit_length() - 1
    kernels.block_mean(img, ky, kx, shift, np.empty(cols * samples, np.uint32), got)
    twins.block_mean(img, ky, kx, shift, None, want)
    assert np.array_equal(got, want)
    plan = resize_plan(rows, cols, (out_cols, out_rows), Fit.STRETCH, None)
    assert plan.block == (ky, kx) or (ky, kx) == (1, 1)
    image = img if samples != 1 else img[:, :, 0]
    general = apply(image, _general(plan), int(top))
    assert np.array_equal(apply(image, plan, int(top)), general)
    assert np.array_equal(general.reshape(got.shape), got)


def test_block_means_on_every_test_file_are_the_general_paths_image():
    """render(size=...) with whole power-of-two factors (block means after the VOI kernel) gives, bit for
    bit, what the general resample gives, and the fused one-pass path where it applies; 8 and 16 bits."""
    checked = 0
    for path, image, full in _renderable():
        rows, cols = full.shape[:2]
        for k in (2, 4):
            if rows % k or cols % k or min(rows, cols) < 2 * k:
                continue
            for depth in (8, 16):
                options = RenderOptions(size=f"{cols // k}x{rows // k}", fit="stretch", depth=depth)
                plan = image._resize_plan(options)
                assert plan.block == (k, k), path
                got = image.render_frame(0, options).array
                whole = image.render_frame(0, RenderOptions(depth=depth)).array
                assert np.array_equal(got, apply(whole, _general(plan), (1 << depth) - 1)), (path, k, depth)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize("flags", [["--size", "256", "--fit", "pad"], ["--max-size", "256", "--fit", "crop"], ["--fit", "stretch"]])
def test_a_fit_that_would_do_nothing_is_a_usage_error(tmp_path, capsys, flags):
    """--fit fills a WIDTHxHEIGHT box; with --size N (the longest side, aspect kept), --max-size or no
    size it would change nothing, and a user who asked for --size 256 --fit pad expects squares: the
    command refuses it and says how to get them, before anything is written (convert and render)."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), "-o", str(out), "--workers", "0", "--quiet", *flags]) == 2  # usage
    err = capsys.readouterr().err
    assert "WIDTHxHEIGHT" in err and not out.exists()
    if flags[:2] == ["--size", "256"]:
        assert "--size 256x256 --fit pad" in err
    code = cli.main(["render", str(src / "ct.dcm"), "-o", str(tmp_path / "one.png"), *flags])
    assert code == 2 and "WIDTHxHEIGHT" in capsys.readouterr().err and not (tmp_path / "one.png").exists()
    with pytest.raises(InvalidOptionError, match="WIDTHxHEIGHT"):
        fastdcm.render(get_testdata_file("CT_small.dcm"), **{f[2:].replace("-", "_"): v for f, v in zip(flags[::2], flags[1::2])})
    # with a box it is what it says; the Python API's RenderOptions(size=N) keeps taking (and ignoring) a fit
    assert fastdcm.render(get_testdata_file("CT_small.dcm"), size="64x32", fit="pad").shape == (32, 64)
    assert RenderOptions(size=64, fit="crop").size == 64
