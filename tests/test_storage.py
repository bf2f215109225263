"""Object storage through fsspec: bucket to bucket on a local S3-compatible server (moto's server
mode, started here on 127.0.0.1), resume there, and credentials kept out of every record."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

import fastdcm  # noqa: E402
from fastdcm.errors import InvalidOptionError, Status  # noqa: E402

from .archives import ct_archive, png_image  # noqa: E402

KEY, SECRET = "AKIAFASTDCMTESTKEY01", "fastdcm-test-secret-value-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server; yields (storage options, an s3fs file system on it)."""
    with _moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@contextlib.contextmanager
def _moto(folder):
    """Start moto's S3 server on a free port of 127.0.0.1 (its log in ``folder``)."""
    import s3fs

    log = folder / "moto.log"
    deadline = time.monotonic() + 60
    for _ in range(3):  # a free port picked here can be taken before the server binds it: another port
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    proc.terminate()
                    pytest.fail("moto server did not start:\n" + log.read_text()[-2000:])
                time.sleep(0.2)
        if proc.poll() is None:
            break
    else:
        pytest.fail("moto server did not start:\n" + log.read_text()[-2000:])
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    try:
        fs = s3fs.S3FileSystem(use_listings_cache=False, **options)
        yield options, fs
    finally:
        proc.terminate()
        proc.wait(10)


def _bucket(fs, name: str) -> str:
    fs.call_s3("create_bucket", Bucket=name)
    fs.invalidate_cache()
    return name


def _upload(fs, src, url: str) -> int:
    n = 0
    for path in sorted(src.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{url}/{path.relative_to(src).as_posix()}")
            n += 1
    return n


def _manifest(fs, url: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat_file(f"{url}/manifest.jsonl").decode().splitlines()]


def test_bucket_to_bucket_equals_a_local_run_then_resumes(s3, tmp_path, caplog):
    options, fs = s3
    src = ct_archive(tmp_path, 12)
    (src / "s0" / "README.txt").write_text("not an image")  # not an input: counted, not converted
    _bucket(fs, "archive")
    _bucket(fs, "png")
    _upload(fs, src, "archive/ct")
    local = fastdcm.convert([str(src)], str(tmp_path / "local"), quiet=True, workers=0)
    caplog.set_level(logging.DEBUG)
    report = fastdcm.convert(["s3://archive/ct"], "s3://png/run", quiet=True, workers=2,
                             storage_options=json.dumps(options))
    assert report.converted == 12 and report.failed == 0
    assert report.ignored_non_dicom == 1
    for png in sorted((tmp_path / "local").rglob("*.png")):
        rel = png.relative_to(tmp_path / "local").as_posix()
        assert png_image(fs.cat_file(f"png/run/{rel}")) == png_image(png.read_bytes()), rel  # pool vs this process
    records = _manifest(fs, "png/run")
    assert {r["rel"] for r in records} == {f"s{i % 4}/f{i:03}.dcm" for i in range(12)}
    assert all(r["source"].startswith("s3://archive/ct/") and r["status"] == "converted" for r in records)
    assert all(r["size"] == 39206 and r["mtime_ns"] > 0 for r in records)
    assert local.converted == 12
    # nothing of the run's own left in the bucket, nothing outside the output prefix
    assert not [p for p in fs.ls("png/run") if ".fastdcm-tmp" in p]
    assert sorted(fs.ls("png")) == ["png/run"]
    # credentials: not in the manifest, the report, the resume command or the log
    text = fs.cat_file("png/run/manifest.jsonl").decode() + report.resume_command + caplog.text
    assert KEY not in text and SECRET not in text
    assert "YOUR-STORAGE-OPTIONS" in report.resume_command

    fs.rm_file("png/run/s1/f001.png")
    again = fastdcm.convert(["s3://archive/ct"], "s3://png/run", quiet=True, workers=2,
                            storage_options=json.dumps(options), resume=True)
    assert again.converted == 1 and again.counts[Status.SKIPPED] == 11
    assert fs.exists("png/run/s1/f001.png")
    assert len(_manifest(fs, "png/run")) == 13  # one new record, appended to the old ones


def test_existing_objects_are_not_replaced_and_metadata_goes_to_the_bucket(s3, tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    options, fs = s3
    src = ct_archive(tmp_path, 4, folders=1)
    _bucket(fs, "in2")
    _bucket(fs, "out2")
    _upload(fs, src, "in2/a")
    fs.pipe_file("out2/x/s0/f000.png", b"earlier")
    report = fastdcm.convert(["s3://in2/a"], "s3://out2/x", quiet=True, workers=0, storage_options=options,
                             metadata="table.parquet")
    assert report.converted == 3
    assert fs.cat_file("out2/x/s0/f000.png") == b"earlier"  # --on-exists error: never replaced
    by_rel = {r["rel"]: r for r in _manifest(fs, "out2/x")}
    assert by_rel["s0/f000.dcm"]["status"] == "write_error" and "exists" in by_rel["s0/f000.dcm"]["reason"]
    with fs.open("out2/x/table.parquet", "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == 4 and sorted(table.column("status").to_pylist()) == ["converted"] * 3 + ["write_error"]


def test_missing_objects_and_bad_options_are_clear_errors(s3, tmp_path):
    options, fs = s3
    with pytest.raises(InvalidOptionError, match="no object at or under"):
        fastdcm.convert(["s3://archive/nothing-here"], str(tmp_path / "out"), quiet=True, storage_options=options)
    with pytest.raises(InvalidOptionError, match="JSON object"):
        fastdcm.convert(["s3://archive/ct"], str(tmp_path / "out"), quiet=True, storage_options="{" + SECRET)
    with pytest.raises(InvalidOptionError, match="--gallery"):
        fastdcm.convert(["s3://archive/ct"], "s3://png/g", quiet=True, storage_options=options, gallery=True)
    assert not (tmp_path / "out").exists()


def test_the_command_line_reads_a_bucket_into_a_folder(s3, tmp_path):
    options, fs = s3
    src = ct_archive(tmp_path, 3, folders=1)
    _bucket(fs, "cli")
    _upload(fs, src, "cli/in")
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps(options))
    proc = subprocess.run(
        [sys.executable, "-m", "fastdcm", "convert", "s3://cli/in", "-o", str(tmp_path / "out"), "--quiet",
         "--storage-options", f"@{opts}", "--workers", "1"],
        capture_output=True, text=True, env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "s0").iterdir()) == ["f000.png", "f001.png", "f002.png"]
    assert SECRET not in proc.stdout + proc.stderr


def test_webdataset_shards_into_a_bucket(s3, tmp_path):
    import io
    import tarfile

    options, fs = s3
    src = ct_archive(tmp_path, 6, folders=2)
    _bucket(fs, "shards-in")
    _bucket(fs, "shards-out")
    _upload(fs, src, "shards-in/a")
    report = fastdcm.convert(["s3://shards-in/a"], "s3://shards-out/ds", quiet=True, workers=0, storage_options=options,
                             container="webdataset", shard_size=4)
    assert report.converted == 6
    shards = sorted(p for p in fs.ls("shards-out/ds/shards") if p.endswith(".tar"))
    assert len(shards) == 2
    members = []
    for shard in shards:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(shard))) as tar:
            members += [m.name for m in tar.getmembers() if m.name.endswith(".png")]
    assert len(members) == 6
    again = fastdcm.convert(["s3://shards-in/a"], "s3://shards-out/ds", quiet=True, workers=0, storage_options=options,
                            container="webdataset", shard_size=4, resume=True)
    assert again.converted == 0 and again.counts[Status.SKIPPED] == 6


def test_object_names_stay_under_the_output_prefix(s3):
    from fastdcm.errors import UnsafePathError
    from fastdcm.run.storage import ObjectRoot

    options, fs = s3
    _bucket(fs, "names")
    root = ObjectRoot("s3://names/out", options=options)
    for bad in ("../escape.png", "a/../../b.png", "/abs.png", "a//b.png", ""):
        with pytest.raises(UnsafePathError):
            root.write(bad, b"x", replace=False)
    assert fs.ls("names") == []
    root.write("a/b.png", b"x", replace=False)
    from fastdcm.run.write import Exists

    with pytest.raises(Exists):
        root.write("a/b.png", b"y", replace=False)
    assert fs.cat_file("names/out/a/b.png") == b"x"


def test_missing_credentials_are_a_usage_error_not_a_traceback(tmp_path):
    """No key anywhere (a clean environment and home): exit 2 with the store's reason, before any work."""
    src = ct_archive(tmp_path, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    options = json.dumps({"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}})
    for args in ([str(src), "-o", "s3://nobucket/x"], ["s3://nobucket/x", "-o", str(tmp_path / "out")]):
        proc = subprocess.run([sys.executable, "-m", "fastdcm", "convert", *args, "--quiet", "--storage-options", options],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "credentials" in proc.stderr.lower()
    assert not (tmp_path / "out").exists()


def test_frames_of_a_large_object_are_read_alone(s3, tmp_path, monkeypatch):
    """--frames first of a multi-frame object: its header and that frame are read, not the rest,
    and the image equals a local run's."""
    from pydicom.data import get_testdata_file

    from fastdcm.run import storage

    options, fs = s3
    _bucket(fs, "frames")
    native = get_testdata_file("emri_small.dcm")  # 10 frames of 64 x 64, 16-bit, native
    fs.put_file(native, "frames/in/mr.dcm")
    size = os.path.getsize(native)
    read = []
    original = storage.read_range

    def counted(url, opts, start, end):
        data = original(url, opts, start, end)
        read.append(len(data))
        return data

    monkeypatch.setattr(storage, "RANGED_ABOVE", 0)  # (the test file is small: so is the first read)
    monkeypatch.setattr(storage, "_HEAD", 4096)
    monkeypatch.setattr(storage, "read_range", counted)
    for frames in ("first", "last", "3:4"):
        read.clear()
        report = fastdcm.convert(["s3://frames/in"], f"s3://frames/out-{frames.replace(':', '-')}", quiet=True, workers=0,
                                 storage_options=options, frames=frames)
        assert report.converted == 1
        local = fastdcm.convert([native], str(tmp_path / f"local-{frames.replace(':', '-')}"), quiet=True, workers=0,
                                frames=frames)
        assert local.converted == 1
        for png in sorted((tmp_path / f"local-{frames.replace(':', '-')}").rglob("*.png")):
            name = png.name.replace("emri_small", "mr")
            assert fs.cat_file(f"frames/out-{frames.replace(':', '-')}/{name}") == png.read_bytes(), (frames, name)
        wanted = 2 if frames == "3:4" else 1
        # the first 4 KiB (the header, 2,336 bytes, and the start of frame 1), then each frame wanted
        assert sum(read) <= 4096 + wanted * 64 * 64 * 2 and sum(read) < size / 3, (frames, read)
