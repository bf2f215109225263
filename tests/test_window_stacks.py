"""--windows (issue 11, requirement 2): one channel per window, each the single window's image bit
for bit, from one pass over the stored values; RGB, .npy or one image per window on disk."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import simplejpeg
from PIL import Image as PILImage
from pydicom.data import get_testdata_file, get_testdata_files

import fastdcm
from fastdcm import RenderOptions, cli
from fastdcm.errors import FastDcmError, InvalidOptionError
from fastdcm.options import WINDOW_PRESETS, window_label
from fastdcm.plan import build_stack
from fastdcm.render import open_image

FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))
STACK = "brain,subdural,bone"
BRAIN_SUBDURAL_BONE = [(40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)]


def _grey(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = open_image(path)
            image.render_frame(0)
        except FastDcmError:
            return None
    return image if image.spec.is_grayscale and not image.spec.is_palette else None


@pytest.mark.parametrize("depth", [8, 16])
def test_every_channel_is_its_single_window_on_every_grey_test_file(depth):
    kinds = set()
    checked = 0
    for path in FILES:
        image = _grey(path)
        if image is None:
            continue
        frame = image.n_frames - 1  # the last frame: per-frame attributes count
        windows = [(40.0, 80.0), (-600.0, 1500.0), (1000.0, 3000.0), (2.5, 7.0)]
        got = image.render_frame(frame, RenderOptions(windows=windows, depth=depth))
        assert got.array.shape == (image.spec.rows, image.spec.columns, 4), path
        for c, window in enumerate(windows):
            single = image.render_frame(frame, RenderOptions(window=window, depth=depth)).array
            assert np.array_equal(got.array[..., c], single), f"{os.path.basename(path)} channel {c}"
        kinds.add(build_stack(image._header.attrs, image.spec, frame, RenderOptions(windows=windows, depth=depth)).kind)
        checked += 1
    assert checked > 60
    assert kinds == {"affine", "table", "channels"}  # every path of the stack taken


def test_presets_and_their_labels():
    options = RenderOptions(windows=STACK)
    assert options.windows == tuple(BRAIN_SUBDURAL_BONE)
    assert RenderOptions(windows=["lung", (40, 400), "-100/50"]).windows == ((-600.0, 1500.0), (40.0, 400.0), (-100.0, 50.0))
    assert [window_label(w) for w in ((40, 80), (40, 400), (-100, 50.5))] == ["brain", "w40_400", "w-100_50.5"]
    assert set(WINDOW_PRESETS) >= {"brain", "subdural", "bone", "lung", "mediastinum", "abdomen", "liver", "stroke"}


@pytest.mark.parametrize(
    "kwargs",
    [{"windows": "brian"}, {"windows": "40"}, {"windows": "40/0"}, {"windows": "40/0.5"}, {"windows": ""},
     {"windows": ",".join(["brain"] * 65)}, {"windows": STACK, "window": (40, 80)}, {"windows": STACK, "voi": "minmax"}],
)
def test_bad_stacks_are_typed_errors(kwargs):
    with pytest.raises(InvalidOptionError):
        RenderOptions(**kwargs)


def test_a_narrow_window_with_linear_exact():
    ct = get_testdata_file("CT_small.dcm")
    got = fastdcm.render(ct, windows="40/0.5,40/80", voi_function="LINEAR_EXACT")
    assert np.array_equal(got[..., 0], fastdcm.render(ct, window=(40, 0.5), voi_function="LINEAR_EXACT"))


def test_colour_images_refuse_a_stack():
    with pytest.raises(InvalidOptionError, match="grayscale"):
        fastdcm.render(get_testdata_file("US1_J2KR.dcm"), windows=STACK)


def test_stack_then_resize():
    ct = get_testdata_file("CT_small.dcm")
    got = fastdcm.render(ct, windows=STACK, size=64)
    assert got.shape == (64, 64, 3)
    assert np.array_equal(got[..., 2], fastdcm.render(ct, window=(600, 2800), size=64))


def _convert(tmp_path, *args):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for name in ("CT_small.dcm", "US1_J2KR.dcm"):
        (src / name).write_bytes(open(get_testdata_file(name), "rb").read())
    out = tmp_path / "out"
    code = cli.main(["convert", str(src), "-o", str(out), "--workers", "0", "--quiet", *args])
    assert code == cli.EXIT_OK  # (the colour image a stack cannot take is skipped, not a failure)
    records = {os.path.basename(r["source"]): r for r in map(json.loads, open(out / "manifest.jsonl"))}
    return out, records


def test_three_windows_make_one_rgb_png(tmp_path):
    out, records = _convert(tmp_path, "--windows", STACK)
    ct = records["CT_small.dcm"]
    assert ct["status"] == "converted" and ct["outputs"] == ["CT_small.png"]
    assert ct["voi"] == "windows brain+subdural+bone"
    with PILImage.open(out / "CT_small.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), fastdcm.render(get_testdata_file("CT_small.dcm"), windows=STACK))
    us = records["US1_J2KR.dcm"]  # RGB: skipped, with the reason (as an input without the --frames asked for)
    assert us["status"] == "skipped" and "grayscale" in us["reason"] and "--windows" in us["reason"]
    assert not us.get("outputs")


def test_three_windows_in_jpeg_are_not_chroma_subsampled(tmp_path):
    out, records = _convert(tmp_path, "--windows", STACK, "--format", "jpeg", "--quality", "95")
    from fastdcm.encoders import get_encoder

    stack = fastdcm.render(get_testdata_file("CT_small.dcm"), windows=STACK)
    got = simplejpeg.decode_jpeg((out / "CT_small.jpg").read_bytes()).astype(int)
    subsampled = simplejpeg.decode_jpeg(get_encoder("jpeg").encode(stack, quality=95)).astype(int)
    error, error_420 = np.abs(got - stack).mean(), np.abs(subsampled - stack).mean()
    assert error < 0.8 * error_420, (error, error_420)  # 4:2:0 blurs each window into the others


@pytest.mark.parametrize("quality", [75, 90, 95])
def test_each_channel_of_a_jpeg_stack_is_as_faithful_as_its_window_alone(tmp_path, quality):
    """The channels are stored as they are (an RGB JPEG: no YCbCr transform, each channel coded as
    a grey image is), so no window's error leaks into the others and none is quantized as coarsely
    as a colour's chroma: every channel decodes within the error of that window's grey JPEG, by
    every common reader (libjpeg-turbo through simplejpeg, Pillow and OpenCV)."""
    cv2 = pytest.importorskip("cv2")
    out, records = _convert(tmp_path, "--windows", STACK, "--format", "jpeg", "--quality", str(quality))
    data = (out / "CT_small.jpg").read_bytes()
    stack = fastdcm.render(get_testdata_file("CT_small.dcm"), windows=STACK).astype(int)
    with PILImage.open(out / "CT_small.jpg") as im:
        assert im.mode == "RGB"
        pil = np.asarray(im).astype(int)
    decoded = {
        "simplejpeg": simplejpeg.decode_jpeg(data).astype(int),
        "pillow": pil,
        "opencv": cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(int),
    }
    for c in range(3):
        window = np.ascontiguousarray(stack[..., c], dtype=np.uint8)
        alone = simplejpeg.decode_jpeg(simplejpeg.encode_jpeg(window[..., None], quality=quality, colorspace="GRAY"))
        grey_error = np.abs(alone[..., 0].astype(int) - window).mean()
        for reader, got in decoded.items():
            error = np.abs(got[..., c] - window).mean()
            assert error <= 1.05 * grey_error, (reader, c, error, grey_error)


def test_other_counts_make_one_image_per_window_or_one_npy(tmp_path):
    pytest.importorskip("pyarrow")
    from fastdcm.run.sinks.table import read_metadata

    out, records = _convert(tmp_path, "--windows", "brain,lung", "--metadata", "t.parquet")
    ct = records["CT_small.dcm"]
    assert ct["outputs"] == ["CT_small_brain.png", "CT_small_lung.png"] and ct["frame_numbers"] == [1, 1]
    with PILImage.open(out / "CT_small_lung.png") as im:
        assert np.array_equal(np.asarray(im), fastdcm.render(get_testdata_file("CT_small.dcm"), window=(-600, 1500)))
    rows = [r for r in read_metadata(out / "t.parquet").to_pylist() if r["status"] == "converted"]
    assert [(r["frame"], r["window_center"], r["window_width"]) for r in rows] == [(1, 40.0, 80.0), (1, -600.0, 1500.0)]

    out2 = tmp_path / "npy"
    assert cli.main(["convert", str(tmp_path / "in" / "CT_small.dcm"), "-o", str(out2), "--workers", "0", "--quiet",
                     "--windows", "brain,lung", "--format", "npy"]) == 0
    stack = np.load(out2 / "CT_small.npy")
    assert stack.shape == (128, 128, 2)
    assert np.array_equal(stack, fastdcm.render(get_testdata_file("CT_small.dcm"), windows="brain,lung"))


def test_fastdcm_render_writes_a_stack(tmp_path, capsys):
    ct = get_testdata_file("CT_small.dcm")
    assert cli.main(["render", ct, "-o", str(tmp_path / "s.png"), "--windows", STACK]) == 0
    with PILImage.open(tmp_path / "s.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), fastdcm.render(ct, windows=STACK))
    assert cli.main(["render", ct, "-o", str(tmp_path / "two.png"), "--windows", "brain,lung"]) == 2
    assert ".npy" in capsys.readouterr().err and not (tmp_path / "two.png").exists()
    assert cli.main(["render", ct, "-o", str(tmp_path / "two.npy"), "--windows", "brain,lung"]) == 0
    assert np.load(tmp_path / "two.npy").shape == (128, 128, 2)
