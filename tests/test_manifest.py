"""manifest.py: JSON-lines records, crash tolerance, the resume index, the summary."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from fastdcm.run.discover import Rejected, Source
from fastdcm.errors import Status
from fastdcm.run.naming import owner_key
from fastdcm.run.sinks.manifest import (
    ManifestWriter,
    dumps,
    loads,
    Record,
    resume_index,
    format_summary,
    read_manifest,
    summarize,
)


def full_record(i: int = 0, **kw) -> Record:
    base = dict(
        source=f"/archive/p{i}/IM{i:04d}",
        status=Status.CONVERTED,
        reason="",
        size=1000 + i,
        mtime_ns=1_700_000_000_000_000_000 + i,
        rel=f"p{i}/IM{i:04d}",
        outputs=[f"p{i}/IM{i:04d}_f1.png", f"p{i}/IM{i:04d}_f2.png"],
        frames=2,
        transfer_syntax="1.2.840.10008.1.2.1",
        voi="window",
        timings={"read": 0.001, "render": 0.0002, "encode": 0.003},
        time=1_700_000_000.5,
    )
    base.update(kw)
    return Record(**base)


def test_record_round_trip():
    rec = full_record(3)
    line = rec.to_json()
    assert "\n" not in line
    assert json.loads(line)["status"] == "converted"
    assert Record.from_json(line) == rec


def test_record_odd_paths_round_trip():
    for path in ["/data/Müller/患者/IM1", "/data/\udcff\udcfebytes", 'quote"and\\backslash']:
        rec = full_record(source=path)
        line = rec.to_json()
        line.encode("ascii")  # ASCII-only: valid UTF-8 whatever the names
        assert Record.from_json(line).source == path


@pytest.mark.parametrize(
    "data",
    [
        {"source": "/a/b.dcm", "status": "converted", "timings": {"read": 5e-05, "write": 0.000269}, "time": 1796634213.384},
        {"source": "/data/Müller/患者/IM1", "status": "error"},  # beyond ASCII: escaped, as the stdlib does
        {"source": "/data/\udcff\udcfebytes", "status": "error"},  # lone surrogates: orjson refuses them
        {"source": "/nullable/x", "gallery": {"windows": [None, [40.0, 400.0]]}},  # a real null
        {"source": "x", "size": 1 << 70},  # beyond 64 bits
        {"source": "x", "status": Status.CONVERTED, "window": np.float64(40.5), "shape": (512, 512)},  # a float subclass
    ],
)
def test_lines_are_the_stdlibs_json(data):
    """orjson writes the common record; whatever it would write otherwise goes through the stdlib:
    every line ASCII, parsed back the same by the stdlib and by :func:`loads`."""
    line = dumps(data)
    line.encode("ascii")
    want = json.loads(json.dumps(data))
    assert json.loads(line) == want and loads(line) == want and loads(line.encode()) == want


def test_a_nan_is_refused_as_before():
    with pytest.raises(ValueError):
        dumps({"source": "x", "time": float("nan")})


def test_loads_takes_what_only_the_stdlib_reads():
    assert loads('{"source": "x", "v": NaN}')["source"] == "x"
    with pytest.raises(ValueError):
        loads('{"source": "x"')


def test_record_statuses_accept_strings_and_reject_unknown():
    assert Record(source="x", status="not_dicom").status is Status.NOT_DICOM
    with pytest.raises(ValueError):
        Record(source="x", status="bogus")


def test_record_keeps_unknown_keys():
    rec = Record.from_json('{"source":"a","status":"refused","worker":7}')
    assert rec.extra == {"worker": 7}
    assert json.loads(rec.to_json())["worker"] == 7


def test_record_minimal_and_invalid():
    rec = Record.from_json('{"source":"a","status":"timeout"}')
    assert rec.outputs == [] and rec.timings == {} and rec.size is None
    for bad in ['{"status":"converted"}', "[]", '{"source":"a","status":"converted"', "garbage"]:
        with pytest.raises(ValueError):
            Record.from_json(bad)


def test_record_from_source_and_rejected():
    s = Source(path="/a/IM1", rel="IM1", size=5, mtime_ns=6)
    rec = Record.from_source(s, "converted", outputs=["IM1.png"])
    assert (rec.source, rec.size, rec.mtime_ns, rec.rel, rec.outputs) == ("/a/IM1", 5, 6, "IM1", ["IM1.png"])
    r = Rejected(path="/cd/../x", status=Status.REFUSED, reason="outside")
    rec = Record.from_source(r, r.status, r.reason)
    assert rec.status is Status.REFUSED and rec.size is None


# --------------------------------------------------------------------------- writing and reading


def test_writer_round_trip(tmp_path):
    path = tmp_path / "manifest.jsonl"
    records = [full_record(i) for i in range(5)]
    with ManifestWriter(path) as writer:
        writer.write_batch(records[:3])
        writer.write(records[3])
        writer.write(records[4])
    assert writer.closed and writer.count == 5
    assert list(read_manifest(path)) == records
    assert len(path.read_text().splitlines()) == 5


def test_write_batch_is_flushed_before_close(tmp_path):
    path = tmp_path / "m.jsonl"
    writer = ManifestWriter(path)
    writer.write_batch([full_record(1), full_record(2)])
    assert len(list(read_manifest(path))) == 2  # visible to a reader (or after a crash)
    writer.close()


def test_close_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    with ManifestWriter(tmp_path / "m.jsonl") as writer:
        writer.write(full_record())
    assert len(calls) == 1


def test_appends_to_an_existing_manifest(tmp_path):
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.write(full_record(1))
    with ManifestWriter(path) as w:
        w.write(full_record(2))
    assert [r.source for r in read_manifest(path)] == [full_record(1).source, full_record(2).source]


def test_truncated_last_line_is_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.write_batch([full_record(i) for i in range(3)])
    line = full_record(9).to_json()
    with open(path, "a", encoding="ascii") as f:
        f.write(line[: len(line) // 2])  # a crash mid-write
    assert [r.source for r in read_manifest(path)] == [full_record(i).source for i in range(3)]
    assert len(list(read_manifest(path, strict=True))) == 3  # a cut last line is expected

    # the next run appends: its first record must not be glued to the fragment
    with ManifestWriter(path) as w:
        w.write(full_record(4))
    assert [r.source for r in read_manifest(path)] == [full_record(i).source for i in (0, 1, 2, 4)]
    with pytest.raises(ValueError, match="bad manifest line"):
        list(read_manifest(path, strict=True))  # now a bad line in the middle


def test_complete_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(full_record(1).to_json() + "\n" + full_record(2).to_json())
    assert len(list(read_manifest(path))) == 2


# --------------------------------------------------------------------------- resume


def _done(index, record, size=None, mtime_ns=None, fingerprint="fp"):
    prev = index.get(owner_key(record.source))
    size = record.size if size is None else size
    mtime_ns = record.mtime_ns if mtime_ns is None else mtime_ns
    return prev is not None and prev.done(size, mtime_ns, fingerprint)


def test_resume_index_honours_size_mtime_and_fingerprint(tmp_path):
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.write_batch(
            [
                full_record(1, fingerprint="fp"),
                full_record(2, status=Status.DECODE_ERROR, reason="bad", fingerprint="fp"),
                full_record(3, status=Status.SKIPPED, fingerprint="fp"),
                full_record(4, status=Status.NOT_DICOM),
                full_record(5, fingerprint="other"),
            ]
        )
    index = resume_index(path)
    r1 = full_record(1)
    assert _done(index, r1)
    assert not _done(index, r1, size=r1.size + 1)  # changed size: redo
    assert not _done(index, r1, mtime_ns=r1.mtime_ns + 1)  # touched: redo
    assert not _done(index, r1, fingerprint="png-now")  # other options: redo
    assert not _done(index, full_record(2)) and _done(index, full_record(3))
    assert not _done(index, full_record(4)) and not _done(index, full_record(5))
    assert index[owner_key(r1.source)].outputs == tuple(r1.outputs)


def test_resume_index_latest_record_wins(tmp_path):
    path = tmp_path / "m.jsonl"
    rec = full_record(1, fingerprint="fp")
    with ManifestWriter(path) as w:
        w.write(rec)
        w.write(full_record(1, status=Status.WRITE_ERROR))  # a later overwrite failed
    assert not _done(resume_index(path), rec)
    with ManifestWriter(path) as w:
        w.write(rec)
    assert _done(resume_index(path), rec)


def test_resume_index_missing_manifest_and_records_without_outputs(tmp_path):
    assert resume_index(tmp_path / "none.jsonl") == {}
    path = tmp_path / "m.jsonl"
    with ManifestWriter(path) as w:
        w.write(Record(source="/missing", status=Status.CONVERTED, fingerprint="fp"))  # no size, no outputs
    prev = resume_index(path)[owner_key("/missing")]
    assert not prev.done(0, 0, "fp")


# --------------------------------------------------------------------------- the summary


def test_summarize_and_format():
    records = [full_record(i) for i in range(7)]
    records += [full_record(8, status=Status.NOT_DICOM), full_record(9, status=Status.WORKER_CRASH)]
    counter = summarize(records)
    assert counter == Counter({Status.CONVERTED: 7, Status.NOT_DICOM: 1, Status.WORKER_CRASH: 1})
    assert summarize(["converted", Status.TIMEOUT]) == Counter({Status.CONVERTED: 1, Status.TIMEOUT: 1})
    table = format_summary(counter, discovered=9)
    lines = table.splitlines()
    assert lines[0].split() == ["status", "count", "share"]
    body = [line.split() for line in lines[2:-2]]
    assert body == [["converted", "7", "77.8%"], ["not_dicom", "1", "11.1%"], ["worker_crash", "1", "11.1%"]]
    assert lines[-1].split() == ["total", "9"]
    assert "MISMATCH" not in table


def test_format_summary_shows_a_broken_invariant():
    table = format_summary(Counter({Status.CONVERTED: 3}), discovered=4)
    assert "MISMATCH: 4 inputs discovered but 3 statuses recorded" in table


def test_format_summary_empty():
    assert format_summary(Counter()).splitlines()[-1].split() == ["total", "0"]


def test_the_direct_line_is_the_records_line(monkeypatch):
    """ManifestSink writes Record.line_of(...): the very line Record.from_result(...).to_json()
    gives, for converted, failed and gallery/shard/resize results."""
    import time as time_module

    from fastdcm.errors import Status
    from fastdcm.run.discover import Source
    from fastdcm.run.pipeline import Result
    from fastdcm.run.sinks.manifest import Record

    monkeypatch.setattr(time_module, "time", lambda: 1234.5678)
    source = Source(path="/data/a/1.dcm", rel="a/1.dcm", size=10, mtime_ns=20)
    results = [
        Result(status=Status.CONVERTED, outputs=["a/1.png"], frames=1, transfer_syntax="1.2", voi="window",
               decoder="native", shape=[4, 4], timings={"read": 0.001, "encode": 0.0}, windows=[(40.0, 400.0)],
               gallery={"Modality": "CT", "SeriesNumber": None}, thumbs=[[0, 0, 4, 4]], sheet="gallery/sheets/x.jpg",
               resize={"scale": [0.5, 0.5], "offset": [0, 3]}, frame_numbers=[2], shard="shards/x.tar", reduce=1),
        Result(status=Status.TRUNCATED, reason="cut \u00e9 short"),
        Result(status=Status.SKIPPED, reason="outputs exist", outputs=["a/1.png"]),
    ]
    for result in results:
        for fingerprint in (None, "abc"):
            assert Record.line_of(source, result, fingerprint) == Record.from_result(source, result, fingerprint).to_json()
