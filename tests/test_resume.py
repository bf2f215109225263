"""--resume by outputs and options: what is skipped, what is redone, whose names are protected."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm.errors import Status
from fastdcm.run.sinks.manifest import read_manifest

CT = get_testdata_file("CT_small.dcm")
MR = get_testdata_file("MR_small.dcm")


def _src(tmp_path, n=4):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(n):
        shutil.copy(CT if i % 2 == 0 else MR, src / f"im{i}.dcm")
    return src


def _latest(out):
    latest = {}
    for r in read_manifest(out / "manifest.jsonl"):
        latest[Path(r.source).name] = r
    return latest


def _convert(src, out, **kw):
    kw.setdefault("workers", 0)
    return fastdcm.convert([str(src)], str(out), quiet=True, **kw)


def test_resume_twice_converts_nothing_the_second_time(tmp_path):
    src, out = _src(tmp_path), tmp_path / "out"
    assert _convert(src, out).converted == 4
    again = _convert(src, out, resume=True)
    assert again.converted == 0 and again.counts[Status.SKIPPED] == 4
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4  # skipped inputs get no new record
    assert all(json.loads(line)["fingerprint"] for line in lines)


def test_resume_with_other_output_options_redoes_the_inputs(tmp_path):
    src, out = _src(tmp_path), tmp_path / "out"
    _convert(src, out, format="jpeg")
    report = _convert(src, out, format="png", resume=True)  # the issue: this wrote nothing
    assert report.converted == 4 and len(list(out.glob("*.png"))) == 4
    window = _convert(src, out, format="png", window=(40, 400), resume=True)  # same names, other pixels
    assert window.converted == 4
    assert _convert(src, out, format="png", window=(40, 400), resume=True).converted == 0


def test_resume_recreates_outputs_deleted_by_hand(tmp_path):
    src, out = _src(tmp_path), tmp_path / "out"
    _convert(src, out)
    (out / "im1.png").unlink()
    report = _convert(src, out, resume=True)
    assert report.converted == 1 and (out / "im1.png").exists()
    with Image.open(out / "im1.png") as im:
        im.verify()


def test_resume_replaces_a_stale_output_nobody_claims(tmp_path):
    """A crash after an image was written and before its record: the image is stale."""
    src, out = _src(tmp_path), tmp_path / "out"
    _convert(src, out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    kept = [line for line in lines if "im2.dcm" not in line]
    (out / "manifest.jsonl").write_text("\n".join(kept) + "\n")  # its record was never written
    (out / "im2.png").write_bytes(b"half an image")
    report = _convert(src, out, resume=True)
    assert report.converted == 1 and report.failed == 0
    with Image.open(out / "im2.png") as im:
        im.verify()


def test_resume_never_overwrites_another_inputs_name(tmp_path):
    """Two inputs map to one --name: the second is a name_conflict, and stays one on resume."""
    src, out = _src(tmp_path, 2), tmp_path / "out"
    first = _convert(src, out, name="same")
    assert Counter(r.status for r in _latest(out).values()) == {Status.CONVERTED: 1, Status.NAME_CONFLICT: 1}
    owner = next(n for n, r in _latest(out).items() if r.status is Status.CONVERTED)
    before = (out / "same.png").read_bytes()
    for options in ({}, {"on_exists": "overwrite"}):
        report = _convert(src, out, name="same", resume=True, **options)
        latest = _latest(out)
        assert latest[owner].status is Status.CONVERTED  # untouched record
        other = next(r for n, r in latest.items() if n != owner)
        assert other.status is Status.NAME_CONFLICT and "another input" in other.reason
        assert (out / "same.png").read_bytes() == before  # the owner's image was not replaced
        assert report.converted == 0
    assert first.failed == 1


def test_resume_after_a_changed_source_redoes_it(tmp_path):
    src, out = _src(tmp_path), tmp_path / "out"
    _convert(src, out)
    shutil.copy(MR, src / "im0.dcm")  # another picture under the same name
    os.utime(src / "im0.dcm", ns=(1, 1))
    report = _convert(src, out, resume=True)
    assert report.converted == 1 and _latest(out)["im0.dcm"].size == os.path.getsize(src / "im0.dcm")


def test_resume_with_the_pool(tmp_path):
    src, out = _src(tmp_path, 8), tmp_path / "out"
    _convert(src, out, workers=2, format="jpeg")
    (out / "im3.jpg").unlink()
    report = _convert(src, out, workers=2, format="jpeg", resume=True)
    assert report.converted == 1 and report.counts[Status.SKIPPED] == 7


def test_the_resume_command_of_a_python_call_parses_back_to_its_options():
    """``fastdcm.convert`` takes tuples and lists where the command line takes text: the resume
    command it prints must be one the command line reads as the same options."""
    import shlex

    from fastdcm.cli import _options, _parser
    from fastdcm.options import ConvertOptions, RenderOptions
    from fastdcm.run.convert import _resume_command

    given = {"size": (64, 32), "fit": "crop", "windows": [(40, 80), "bone", (-600.5, 1500)], "window": None,
             "max_size": None, "decoder": {"jpeg2000": "pylibjpeg", "rle": "pydicom"}, "frames": "every:2",
             "format": "jpeg", "quality": 85, "tags": ["Modality", "0018,0050"], "workers": 0}
    words = shlex.split(_resume_command(["in"], "out", given))
    args = _parser().parse_args(words[1:])
    parsed = _options(args, ConvertOptions, RenderOptions)
    expected = {k: v for k, v in given.items() if v is not None}
    assert RenderOptions(**{k: v for k, v in parsed.items() if k in RenderOptions.__dataclass_fields__}) == \
        RenderOptions(**{k: v for k, v in expected.items() if k in RenderOptions.__dataclass_fields__})
    from fastdcm.run.tags import parse_tags

    assert parse_tags(parsed.pop("tags")) == parse_tags(expected.pop("tags"))  # (text or a list: the same columns)
    expected["resume"] = True
    assert ConvertOptions(**{k: v for k, v in parsed.items() if k in ConvertOptions.__dataclass_fields__}) == \
        ConvertOptions(**{k: v for k, v in expected.items() if k in ConvertOptions.__dataclass_fields__})
