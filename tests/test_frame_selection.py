"""--frames all|first|middle|last|N|A:B|every:K (issue 11, requirement 3), in convert and iter_frames."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import cli
from fastdcm.errors import InvalidOptionError
from fastdcm.options import ConvertOptions, Frames

MULTI = get_testdata_file("emri_small.dcm")  # 10 frames
SINGLE = get_testdata_file("CT_small.dcm")


@pytest.mark.parametrize(
    "text, n, numbers",
    [
        ("all", 10, list(range(1, 11))), ("first", 10, [1]), ("middle", 10, [5]), ("middle", 9, [5]),
        ("middle", 1, [1]), ("last", 10, [10]), ("3", 10, [3]), ("11", 10, []), ("2:4", 10, [2, 3, 4]),
        (":3", 10, [1, 2, 3]), ("8:", 10, [8, 9, 10]), ("9:20", 10, [9, 10]), ("12:14", 10, []),
        ("every:4", 10, [1, 5, 9]), ("every:1", 3, [1, 2, 3]), (" Every:3 ", 1, [1]), ("first", 0, []),
    ],
)
def test_selection(text, n, numbers):
    assert [i + 1 for i in Frames(text).indexes(n)] == numbers


@pytest.mark.parametrize("text", ["none", "0", "-1", "5:3", "every:0", "every:x", "1:-2", "a:b", ""])
def test_bad_selections_are_typed_errors(text):
    with pytest.raises(InvalidOptionError, match="frames must be"):
        Frames(text)
    with pytest.raises(ValueError):
        ConvertOptions(frames=text)


def test_selection_equality_and_its_text_in_the_fingerprint():
    assert Frames("every:2") == Frames(" EVERY:2") and Frames("first") == Frames.FIRST and str(Frames("2:4")) == "2:4"
    assert ConvertOptions(frames="all").frames is not None and ConvertOptions().frames == Frames.ALL


def test_iter_frames_selects_like_convert():
    every = list(fastdcm.iter_frames(MULTI, frames="every:3"))
    assert len(every) == 4
    for got, number in zip(every, (1, 4, 7, 10)):
        assert np.array_equal(got, fastdcm.render(MULTI, frame=number - 1))
    assert len(list(fastdcm.iter_frames(MULTI))) == 10
    assert list(fastdcm.iter_frames(SINGLE, frames=4)) == []
    with pytest.raises(InvalidOptionError):
        list(fastdcm.iter_frames(MULTI, frames="0"))


def test_render_frame_out_of_range_says_frame_is_an_index():
    with pytest.raises(InvalidOptionError) as info:
        fastdcm.render(MULTI, frame=10)  # 10 frames: indexes 0 to 9
    assert "frame=10" in info.value.reason and "0 to 9" in info.value.reason, info.value.reason
    with pytest.raises(InvalidOptionError, match="frame=0 only"):
        fastdcm.render(SINGLE, frame=1)


def test_convert_writes_the_selected_frames_and_skips_inputs_without_any(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "multi.dcm").write_bytes(open(MULTI, "rb").read())
    (src / "single.dcm").write_bytes(open(SINGLE, "rb").read())
    out = tmp_path / "out"
    assert cli.main(["convert", str(src), "-o", str(out), "--frames", "middle", "--workers", "0", "--quiet"]) == 0
    records = {os.path.basename(r["source"]): r for r in map(json.loads, open(out / "manifest.jsonl"))}
    assert records["multi.dcm"]["outputs"] == ["multi_f05.png"] and records["multi.dcm"]["frame_numbers"] == [5]
    assert records["single.dcm"]["outputs"] == ["single.png"] and records["single.dcm"]["frames"] == 1

    out2 = tmp_path / "out2"
    assert cli.main(["convert", str(src), "-o", str(out2), "--frames", "9:", "--workers", "0", "--quiet"]) == 0
    records = {os.path.basename(r["source"]): r for r in map(json.loads, open(out2 / "manifest.jsonl"))}
    assert records["multi.dcm"]["outputs"] == ["multi_f09.png", "multi_f10.png"]
    assert records["single.dcm"]["status"] == "skipped"
    assert records["single.dcm"]["reason"] == "no frame selected by --frames 9: (the object has 1 frame(s))"
    assert not (out2 / "single.png").exists()
