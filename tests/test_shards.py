"""--container webdataset|parquet (issue 11, requirement 4): shards written atomically, read back
with the webdataset package and pyarrow, resumable by shard, nothing of a failed input in them."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import cli
from fastdcm.errors import Status
from fastdcm.run.sinks.manifest import read_manifest
from fastdcm.run.sinks.shards import shard_member

CT = get_testdata_file("CT_small.dcm")
MULTI = get_testdata_file("emri_small.dcm")  # 10 frames


@pytest.fixture
def archive(tmp_path):
    """Eleven inputs: nine CT slices in two folders (one with a dotted, UID-like name), a
    10-frame MR and a truncated file."""
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    for i in range(4):
        shutil.copy(CT, src / f"a{i}.dcm")
        shutil.copy(CT, src / "b" / f"b{i}.dcm")
    shutil.copy(CT, src / "b" / "1.2.840.99.dcm")
    shutil.copy(MULTI, src / "multi.dcm")
    data = Path(CT).read_bytes()
    (src / "b" / "cut.dcm").write_bytes(data[: len(data) - 5000])
    return src


def _records(out):
    return {os.path.relpath(r.source, out.parent / "src"): r for r in read_manifest(out / "manifest.jsonl")}


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_member_names_keep_one_dot():
    assert shard_member("b/1.2.840.99.png", ".png") == "b/1_2_840_99.png"
    assert shard_member("a0.png", ".png") == "a0.png" and shard_member("x.y/z.npy", ".npy") == "x.y/z.npy"


@pytest.mark.parametrize("workers", [0, 2])
def test_webdataset_shards_read_back_with_the_webdataset_package(archive, tmp_path, workers):
    out = tmp_path / "out"
    code = cli.main(["convert", str(archive), "-o", str(out), "--container", "webdataset", "--shard-size", "4",
                     "--workers", str(workers), "--quiet", "--metadata", "t.parquet", "--allow-phi"])
    assert code == 1  # the truncated file
    records = _records(out)
    assert records["b/cut.dcm"].status is Status.TRUNCATED and records["b/cut.dcm"].shard is None
    converted = {k: r for k, r in records.items() if r.status is Status.CONVERTED}
    assert len(converted) == 10
    shards = sorted(glob.glob(str(out / "shards" / "*.tar")))
    assert {str(out / r.shard) for r in converted.values()} == set(shards)
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.part"))  # no loose files
    members = {}
    for shard in shards:
        members.update(_tar_members(shard))
    # every output of every record is in its shard, with its JSON
    for rel, r in converted.items():
        in_shard = _tar_members(out / r.shard)
        for i, name in enumerate(r.outputs):
            assert name in in_shard
            meta = json.loads(in_shard[name[:-4] + ".json"])
            assert meta["source"] == rel and meta["output"] == name and meta["frame"] == i + 1
            assert meta["metadata"]["Modality"] in ("CT", "MR")
    assert len(members) == 2 * (9 + 10) and "b/1_2_840_99.png" in members
    want = fastdcm.render(CT)
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(members["a0.png"]))), want)

    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("l8"))
    assert len(samples) == 19 and all(set(s) >= {"__key__", "png", "json"} for s in samples)
    assert {s["__key__"] for s in samples} == {name[:-4] for name in members if name.endswith(".png")}
    first = next(s for s in samples if s["__key__"] == "a0")
    assert np.array_equal(first["png"], want) and first["json"]["frame"] == 1
    # the table says where each image is
    from fastdcm.run.sinks.table import read_metadata

    rows = [r for r in read_metadata(out / "t.parquet").to_pylist() if r["status"] == "converted"]
    assert len(rows) == 19 and all(r["shard"] and (out / r["shard"]).exists() for r in rows)


def test_parquet_shards_read_back_with_pyarrow(archive, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "out"
    assert cli.main(["convert", str(archive), "-o", str(out), "--container", "parquet", "--shard-size", "5",
                     "--workers", "0", "--quiet", "--format", "npy", "--windows", "brain,bone"]) == 1
    rows = []
    for shard in sorted(glob.glob(str(out / "shards" / "*.parquet"))):
        rows += pq.read_table(shard).to_pylist()
    assert len(rows) == 19
    a0 = next(r for r in rows if r["__key__"] == "a0")
    assert a0["format"] == "npy" and (a0["rows"], a0["columns"], a0["frame"]) == (128, 128, 1)
    assert np.array_equal(np.load(io.BytesIO(a0["image"])), fastdcm.render(CT, windows="brain,bone"))
    assert json.loads(a0["json"])["voi"] == "windows brain+bone"
    # without --allow-phi no sample names its source (export folders often name the patient)
    assert all(r["source"] is None and "source" not in json.loads(r["json"]) for r in rows)
    multi = sorted((r["frame"], r["__key__"]) for r in rows if r["__key__"].startswith("multi_"))
    assert multi == [(i, f"multi_f{i:02d}") for i in range(1, 11)]


def test_a_crash_leaves_no_partial_shard_and_resume_redoes_missing_shards(archive, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FASTDCM_TEST_FAULTS", "crash:b2.dcm")
    report = fastdcm.convert([str(archive)], out, container="webdataset", shard_size=3, workers=2, quiet=True)
    records = _records(out)
    assert records["b/b2.dcm"].status is Status.WORKER_CRASH and report.converted == 9
    for r in records.values():
        if r.status is Status.CONVERTED:
            assert set(r.outputs) <= set(_tar_members(out / r.shard))  # every shard complete and readable
    monkeypatch.delenv("FASTDCM_TEST_FAULTS")
    # a shard lost (deleted): --resume redoes exactly its inputs, into a new shard
    lost = records["a0.dcm"].shard
    lost_inputs = {k for k, r in records.items() if r.shard == lost}
    (out / lost).unlink()
    report = fastdcm.convert([str(archive)], out, container="webdataset", shard_size=3, workers=0, quiet=True, resume=True)
    assert report.converted == len(lost_inputs) + 1  # and b2, which crashed
    after = _records(out)
    assert all((out / r.shard).exists() for r in after.values() if r.status is Status.CONVERTED)
    assert after["a0.dcm"].shard != lost
    # a run into OUT without --resume would write the same keys into new shards: refused
    assert cli.main(["convert", str(archive), "-o", str(out), "--container", "webdataset", "--quiet"]) == 2


def test_a_batch_stopped_part_way_publishes_nothing(tmp_path):
    from fastdcm.options import RenderOptions
    from fastdcm.run.discover import Source
    from fastdcm.run.pipeline import Job, Pipeline
    from fastdcm.run.write import OutputRoot

    root = OutputRoot.create(str(tmp_path / "out"))
    job = Job(out=root.path, render=RenderOptions(), tmp_name=root.tmp_name, container="webdataset")
    sources = [Source(path=CT, rel=f"s{i}.dcm", size=1, mtime_ns=1) for i in range(4)]

    def stop_at(i):
        if i == 2:
            raise KeyboardInterrupt

    with Pipeline(job) as pipeline:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run_batch(sources, progress=stop_at)
        assert not (tmp_path / "out" / "shards").exists()
        assert not [n for n in os.listdir(tmp_path / "out" / root.tmp_name) if n.endswith(".part")]
        results = pipeline.run_batch(sources[:2])
    assert [r.status for r in results] == [Status.CONVERTED] * 2 and results[0].shard == results[1].shard
    assert set(_tar_members(tmp_path / "out" / results[0].shard)) == {"s0.png", "s0.json", "s1.png", "s1.json"}
    root.remove_tmp()


def test_a_shard_that_cannot_be_written_makes_its_inputs_write_errors(archive, tmp_path, monkeypatch):
    from fastdcm.run import write

    def full(self, tmp, name):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write.OutputRoot, "publish", full)
    report = fastdcm.convert([str(archive / "b")], tmp_path / "out", container="webdataset", workers=0, quiet=True)
    records = list(read_manifest(tmp_path / "out" / "manifest.jsonl"))
    assert report.converted == 0
    assert {r.status for r in records} == {Status.WRITE_ERROR, Status.TRUNCATED}
    assert all("No space left" in r.reason for r in records if r.status is Status.WRITE_ERROR)
    assert not list((tmp_path / "out").rglob("*.part"))


def test_gallery_rebuilt_from_shards(archive, tmp_path):
    out = tmp_path / "out"
    fastdcm.convert([str(archive)], out, container="webdataset", workers=0, quiet=True)
    assert cli.main(["gallery", str(out)]) == 0
    assert (out / "gallery" / "index.html").exists() and list((out / "gallery" / "sheets").glob("rebuilt-*.jpg"))


def test_two_inputs_with_one_key_in_a_shard_are_a_name_conflict(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(CT, src / "a.b.dcm")
    shutil.copy(CT, src / "a_b.dcm")  # the same key once the dot is made _
    out = tmp_path / "out"
    report = fastdcm.convert([str(src)], out, container="webdataset", workers=0, quiet=True)
    statuses = sorted(r.status.value for r in read_manifest(out / "manifest.jsonl"))
    assert statuses == ["converted", "name_conflict"] and report.converted == 1
    [shard] = list((out / "shards").iterdir())
    assert sorted(_tar_members(shard)) == ["a_b.json", "a_b.png"]
