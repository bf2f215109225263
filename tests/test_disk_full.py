"""The run's own faults: a manifest that cannot be written (disk full) ends the run cleanly."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import fastdcm
from fastdcm import cli
from fastdcm.run.sinks import manifest
from fastdcm.errors import Status
from fastdcm.run.sinks.manifest import read_manifest

CT = get_testdata_file("CT_small.dcm")


def _src(root: Path, n: int) -> Path:
    src = root / "src"
    src.mkdir()
    for i in range(n):
        shutil.copy(CT, src / f"f{i:03}.dcm")
    return src


def test_a_failing_manifest_write_stops_the_run_with_its_own_exit_code(tmp_path, monkeypatch, capsys):
    src = _src(tmp_path, 12)
    out = tmp_path / "out"
    real = manifest.ManifestWriter.write_lines  # (write_batch goes through it too)
    calls = []

    def failing(self, lines):
        calls.append(1)
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, lines)

    monkeypatch.setattr(manifest.ManifestWriter, "write_lines", failing)
    code = cli.main(["convert", str(src), "-o", str(out), "--workers", "0", "--batch-size", "2", "--quiet"])
    err = capsys.readouterr()
    assert code == cli.EXIT_MANIFEST == 3
    assert "No space left on device" in err.err and "To resume: " in err.err and "Traceback" not in err.err
    assert err.err.count("To resume") == 1
    assert "total" in err.out  # the summary so far
    monkeypatch.setattr(manifest.ManifestWriter, "write_lines", real)
    resume = err.err.split("To resume: ")[1].split()[2:]  # after "fastdcm convert"
    assert cli.main(["convert", *resume]) == 0
    records = {Path(r.source).name: r for r in read_manifest(out / "manifest.jsonl")}
    assert len(records) == 12 and all(r.status is Status.CONVERTED for r in records.values())


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    except OSError:
        return False
    return done.returncode == 0


def test_a_full_file_system(tmp_path):
    """A real full disk: a 400 KiB tmpfs for the outputs and the manifest."""
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    if not _mount_tmpfs(disk, "400k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        src = _src(tmp_path, 60)
        out = disk / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "fastdcm", "convert", str(src), "-o", str(out), "--workers", "2", "--quiet"],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode in (1, 3), proc.stderr  # images failing (write_error) or the manifest itself
        assert "Traceback" not in proc.stderr
        if proc.returncode == 3:
            assert "No space left on device" in proc.stderr and "To resume" in proc.stderr
        # Every line that made it is whole or is the one torn tail a resume repairs.
        records = list(read_manifest(out / "manifest.jsonl"))
        assert {r.status for r in records} <= {Status.CONVERTED, Status.WRITE_ERROR}
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        again = fastdcm.convert([str(src)], str(out), resume=True, workers=2, quiet=True)
        assert again.failed == 0
        latest = {}
        for r in read_manifest(out / "manifest.jsonl"):
            latest[r.source] = r.status
        assert len(latest) == 60 and set(latest.values()) == {Status.CONVERTED}
        assert len(list(out.glob("*.png"))) == 60
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
