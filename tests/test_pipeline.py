"""The pipeline in this process: statuses, atomic writes, on_exists, names inside the root."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm.run.discover import Source
from fastdcm.errors import Status
from fastdcm.options import Frames, OnExists, RenderOptions
from fastdcm.run import write as writer
from fastdcm.run.pipeline import Job, Pipeline
from fastdcm.run.write import OutputRoot

CT = get_testdata_file("CT_small.dcm")
MULTI = get_testdata_file("emri_small.dcm")  # 10 frames


@pytest.fixture(autouse=True, params=["unnamed", "named"])
def write_path(request, monkeypatch):
    """Every test here runs with both ways of writing atomically: an unnamed file linked into
    place (O_TMPFILE + linkat, the default on Linux) and a named temp file renamed into place."""
    if request.param == "unnamed" and not writer._TMPFILE:
        pytest.skip("O_TMPFILE + linkat are not available here")
    monkeypatch.setattr(writer, "_TMPFILE", writer._TMPFILE if request.param == "unnamed" else 0)
    return request.param


def test_unnamed_files_are_used_and_leave_nothing_behind(tmp_path, write_path):
    out = tmp_path / "out"
    results = process_batch([source(CT), source(MULTI)], job(out))
    assert [r.status for r in results] == [Status.CONVERTED, Status.CONVERTED]
    assert bool(writer._TMPFILE) is (write_path == "unnamed")  # not switched off by a refusal
    assert os.listdir(out / tmp_dir(out)) == [] and no_temp_files(out)


def process_batch(sources, job):
    """One batch through a pipeline of its own, as a worker runs it."""
    with Pipeline(job) as pipeline:
        return pipeline.run_batch(sources)


def source(path, rel=None):
    st = os.stat(path)
    return Source(path=str(path), rel=rel or os.path.basename(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


def job(out, **kw):
    """A Job as convert makes one: the output root with this run's temporary folder."""
    root = OutputRoot.create(str(out))
    kw.setdefault("run_start_ns", root.start_time())
    root.close()
    return Job(out=str(out), render=kw.pop("render", RenderOptions()), tmp_name=root.tmp_name, **kw)


def tmp_dir(out):
    [name] = [n for n in os.listdir(out) if n.startswith(writer.TMP_PREFIX)]
    return name


def no_temp_files(out):
    return not any(f.endswith(".part") for _, _, fs in os.walk(out) for f in fs)


def test_converts_and_reports(tmp_path):
    out = tmp_path / "out"
    [r] = process_batch([source(CT)], job(out, format="npy"))
    assert r.status is Status.CONVERTED, r.reason
    assert r.outputs == ["CT_small.npy"] and r.frames == 1
    assert r.transfer_syntax == "1.2.840.10008.1.2.1"
    assert r.voi and set(r.timings) == {"read", "render", "encode", "write"}
    np.testing.assert_array_equal(np.load(out / "CT_small.npy"), fastdcm.render(CT))
    assert no_temp_files(out)


def test_multiframe_all_and_first(tmp_path):
    [r] = process_batch([source(MULTI)], job(tmp_path / "a"))
    assert r.status is Status.CONVERTED and r.frames == 10
    assert r.outputs[0] == "emri_small_f01.png" and r.outputs[-1] == "emri_small_f10.png"
    [r] = process_batch([source(MULTI)], job(tmp_path / "b", frames=Frames.FIRST))
    assert r.outputs == ["emri_small.png"]


def test_failures_are_results_not_exceptions(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    missing = tmp_path / "gone.dcm"
    shutil.copy(CT, missing)
    s_missing = source(missing)
    missing.unlink()
    results = process_batch([source(junk), s_missing, source(CT)], job(tmp_path / "out"))
    assert [r.status for r in results] == [Status.NOT_DICOM, results[1].status, Status.CONVERTED]
    assert results[1].status is not Status.CONVERTED and results[1].reason


@pytest.mark.parametrize(
    "policy,status", [(OnExists.ERROR, Status.WRITE_ERROR), (OnExists.SKIP, Status.SKIPPED), (OnExists.OVERWRITE, Status.CONVERTED)]
)
def test_on_exists(tmp_path, policy, status):
    out = tmp_path / "out"
    out.mkdir()
    (out / "CT_small.png").write_bytes(b"old")
    [r] = process_batch([source(CT)], job(out, on_exists=policy))
    assert r.status is status, r.reason
    data = (out / "CT_small.png").read_bytes()
    assert (data == b"old") == (policy is not OnExists.OVERWRITE)
    assert no_temp_files(out)


def test_overwrite_refuses_a_file_written_in_this_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "CT_small.png").write_bytes(b"from another input of this run")
    [r] = process_batch([source(CT)], job(out, on_exists=OnExists.OVERWRITE, run_start_ns=0))
    assert r.status is Status.NAME_CONFLICT


def test_same_name_twice_in_a_batch_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    a, b = process_batch([source(CT, "x/CT.dcm"), source(MULTI, "x/CT.dcm")], job(out, frames=Frames.FIRST))
    assert a.status is Status.CONVERTED
    assert b.status is Status.NAME_CONFLICT  # two inputs of one run, one name: never overwritten
    assert "another input of this run" in b.reason


def test_multiframe_failure_leaves_no_partial_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "emri_small_f05.png").write_bytes(b"old")  # frame 5 cannot be written
    [r] = process_batch([source(MULTI)], job(out))
    assert r.status is Status.WRITE_ERROR
    assert sorted(os.listdir(out)) == sorted([tmp_dir(out), "emri_small_f05.png"])


def test_names_never_leave_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "link")
    [r] = process_batch([source(CT, "link/CT.dcm")], job(out))
    assert r.status is Status.REFUSED
    assert os.listdir(elsewhere) == []


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_name_template_with_hostile_values(tmp_path):
    import pydicom

    ds = pydicom.dcmread(CT)
    ds.PatientID = "../../" + "x" * 300 + "\x00/abs"
    path = tmp_path / "hostile.dcm"
    ds.save_as(path)
    out = tmp_path / "out"
    [r] = process_batch([source(path)], job(out, name="{PatientID}/{stem}"))
    assert r.status is Status.CONVERTED, r.reason
    real_out = os.path.realpath(out)
    for name in r.outputs:
        full = os.path.realpath(os.path.join(out, name))
        assert full.startswith(real_out + os.sep) and os.path.exists(full)
    assert sorted(os.listdir(tmp_path)) == ["hostile.dcm", "out"]


def test_injected_raise_is_an_error_record(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTDCM_TEST_FAULTS", "raise:CT_small")
    results = process_batch([source(CT), source(MULTI)], job(tmp_path / "out", frames=Frames.FIRST))
    assert results[0].status is Status.ERROR and "injected" in results[0].reason
    assert results[1].status is Status.CONVERTED


def test_two_pipelines_in_one_process_keep_their_own_output_roots(tmp_path):
    """Per-worker state lives in the Pipeline, not in module globals: two runs' pipelines
    interleaved in one process (threads, a cluster worker) each write into their own OUT."""
    a, b = Pipeline(job(tmp_path / "a", frames=Frames.FIRST)), Pipeline(job(tmp_path / "b", frames=Frames.FIRST))
    with a, b:
        for i in range(3):
            for p in (a, b):
                [r] = p.run_batch([source(CT, f"{i}/CT.dcm")])
                assert r.status is Status.CONVERTED, r.reason
    for out in (tmp_path / "a", tmp_path / "b"):
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["0/CT.png", "1/CT.png", "2/CT.png"]
