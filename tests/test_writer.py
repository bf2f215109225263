"""The atomic writer under attack: symlinks planted under OUT (before and during a run), two runs
into one OUT. A canary folder outside OUT must stay untouched in every case."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import fastdcm
from fastdcm import cli
from fastdcm.run import write as writer
from .archives import ct_archive as _archive
from fastdcm.errors import InvalidOptionError, Status, UnsafePathError
from fastdcm.run.sinks.manifest import read_manifest
from fastdcm.run.write import Exists, OutputRoot



@pytest.fixture
def canary(tmp_path):
    folder = tmp_path / "canary"
    folder.mkdir()
    (folder / "keep.txt").write_text("canary")
    (folder / "old.part").write_bytes(b"not ours")
    return folder


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_writes_refuse_a_symlink_at_any_depth(tmp_path, canary):
    out = tmp_path / "out"
    root = OutputRoot.create(str(out))
    (out / "a").mkdir()
    os.symlink(canary, out / "a" / "b")
    before = _snapshot(canary)
    for replace in (False, True):
        with pytest.raises(UnsafePathError, match="a/b under the output folder is a symlink"):
            root.write("a/b/c/x.png", b"data", replace=replace)
    os.symlink(canary / "keep.txt", out / "x.png")  # a symlink at the final name
    with pytest.raises(Exists):
        root.write("x.png", b"data", replace=False)
    root.write("x.png", b"new", replace=True)  # replaces the link itself, never writes through it
    assert not (out / "x.png").is_symlink() and (out / "x.png").read_bytes() == b"new"
    root.remove("a/b/keep.txt")  # removal does not go through the link either
    assert _snapshot(canary) == before
    with pytest.raises(UnsafePathError):
        root.write("../escape.png", b"x", replace=False)
    root.remove_tmp()
    root.close()


@pytest.mark.parametrize("fast", [True, False], ids=["openat2", "walk"])
def test_folders_open_in_one_call_or_by_the_walk_alike(tmp_path, canary, monkeypatch, fast):
    """openat2 (where the kernel has it) and the component walk give the same folder and refuse the
    same symlinks, with the same message; the one-call path is the one used when it can be."""
    if fast and writer._load_openat2() is None:
        pytest.skip("no openat2 here (not Linux x86_64/aarch64)")
    calls = []
    if fast:
        real = writer._load_openat2()

        def counted(fd, path):
            calls.append(path)
            return real(fd, path)

        monkeypatch.setattr(writer, "_OPENAT2", counted)
    else:
        monkeypatch.setattr(writer, "_OPENAT2", None)
    out = tmp_path / "out"
    root = OutputRoot.create(str(out))
    root.write("p/s/x.png", b"one", replace=False)  # folders made by the walk
    root.write("p/s/y.png", b"two", replace=False)  # then opened in one call
    assert (out / "p" / "s" / "y.png").read_bytes() == b"two" and root.exists("p/s/x.png")
    assert bool(calls) is fast and (not fast or b"p/s" in calls)
    before = _snapshot(canary)
    os.symlink(canary, out / "p" / "t")
    os.rename(out / "p" / "s", out / "moved")
    os.symlink(canary, out / "p" / "s")  # swapped for a link
    for name in ("p/s/z.png", "p/t/z.png"):
        with pytest.raises(UnsafePathError, match=f"{name[:3]} under the output folder is a symlink"):
            root.write(name, b"three", replace=False)
        assert not root.exists(name)
    os.symlink(canary, out / "q")
    with pytest.raises(UnsafePathError, match="q under the output folder is a symlink"):
        root.write("q/deeper/z.png", b"four", replace=False)
    assert _snapshot(canary) == before
    root.remove_tmp()
    root.close()


def test_a_symlink_at_the_manifest_is_refused_before_any_work(tmp_path, canary):
    src = _archive(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(canary / "keep.txt", out / "manifest.jsonl")
    before = _snapshot(canary)
    with pytest.raises(UnsafePathError, match="manifest.jsonl in the output folder is a symlink"):
        fastdcm.convert([str(src)], str(out), workers=0, quiet=True)
    assert _snapshot(canary) == before
    assert sorted(os.listdir(out)) == ["manifest.jsonl"]  # no image, no temporary folder left
    assert cli.main(["convert", str(src), "-o", str(out), "--quiet", "--workers", "0"]) == 2


def test_planted_temp_folders_are_never_used_or_cleaned(tmp_path, canary):
    src = _archive(tmp_path, 4)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(canary, out / ".fastdcm-tmp")  # the old shared name
    os.symlink(canary, out / f"{writer.TMP_PREFIX}{os.getpid()}-deadbeef")
    before = _snapshot(canary)
    report = fastdcm.convert([str(src)], str(out), workers=0, quiet=True)
    assert report.converted == 4
    assert _snapshot(canary) == before
    assert (out / ".fastdcm-tmp").is_symlink()  # another run's (or an attacker's) name: left alone


def test_a_planted_output_folder_symlink_refuses_its_files_only(tmp_path, canary):
    src = _archive(tmp_path, 8)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(canary, out / "s1")
    before = _snapshot(canary)
    report = fastdcm.convert([str(src)], str(out), workers=2, quiet=True)
    assert _snapshot(canary) == before
    records = {Path(r.source).name: r for r in read_manifest(out / "manifest.jsonl")}
    refused = {n for n, r in records.items() if r.status is Status.REFUSED}
    assert refused == {"f001.dcm", "f005.dcm"} and "s1 under the output folder is a symlink" in records["f001.dcm"].reason
    assert report.converted == 6


def test_output_folders_swapped_for_symlinks_during_a_run(tmp_path, canary):
    src = _archive(tmp_path, 400, folders=8)
    out = tmp_path / "out"
    before = _snapshot(canary)
    done = threading.Event()

    def attack():
        k = 0
        while not done.is_set():
            for i in range(8):
                target = out / f"s{i}"
                try:
                    if target.is_dir() and not target.is_symlink():
                        os.rename(target, out / f"moved-{i}-{k}")
                        os.symlink(canary, target)
                    elif target.is_symlink():
                        target.unlink()  # let the run make a real folder again, then swap it
                except OSError:
                    pass
            k += 1
            time.sleep(0.002)

    thread = threading.Thread(target=attack)
    thread.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastdcm", "convert", str(src), "-o", str(out), "--workers", "2", "--quiet"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        done.set()
        thread.join()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(canary) == before  # not one file written through a swapped-in link
    counts = Counter(r.status for r in read_manifest(out / "manifest.jsonl"))
    assert set(counts) <= {Status.CONVERTED, Status.REFUSED} and sum(counts.values()) == 400
    assert counts[Status.REFUSED] > 0  # the attack did hit the run


def test_two_runs_into_one_output_folder(tmp_path):
    src = _archive(tmp_path, 300)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fastdcm", "convert", str(src), "-o", str(out), "--workers", "1",
            "--on-exists", "overwrite", "--quiet"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for p in (first, second):
        p.communicate(timeout=300)
    records = list(read_manifest(out / "manifest.jsonl", strict=True))  # whole lines from both runs
    counts = Counter(r.status for r in records)
    assert len(records) == 600
    # Each run has its own temporary folder: nothing fails because the other one finished first.
    assert set(counts) <= {Status.CONVERTED, Status.NAME_CONFLICT}, counts
    assert not [n for n in os.listdir(out) if n.startswith(writer.TMP_PREFIX)]
    assert not list(out.rglob("*.part"))
    for png in out.rglob("*.png"):
        with Image.open(png) as im:
            im.verify()


def test_an_output_path_that_is_a_file_or_unwritable_is_a_usage_error(tmp_path, capsys):
    src = _archive(tmp_path, 1)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InvalidOptionError, match="cannot be used: it is a file, not a folder"):
        fastdcm.convert([str(src)], str(afile), workers=0, quiet=True)
    with pytest.raises(InvalidOptionError, match="cannot be used"):  # a component of the path is the file
        fastdcm.convert([str(src)], str(afile / "sub"), workers=0, quiet=True)
    assert cli.main(["convert", str(src), "-o", str(afile), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot be used" in err and "Traceback" not in err
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        assert cli.main(["convert", str(src), "-o", str(ro), "--quiet"]) == 2


def test_a_stop_signal_inside_release_never_closes_the_held_folder_twice(tmp_path, monkeypatch):
    """The pool's stop signal raises inside ``release`` just after the held folder's fd is closed;
    the clean-up that follows releases again and must not close that fd number a second time
    (a CI run printed EBADF from a worker stopped on a full disk)."""
    root = OutputRoot.create(str(tmp_path / "out"))
    root.hold()
    fd, _ = root.folder("a/b/x.png")
    os.close(fd)
    held_fd = root._held[1]
    closed = []
    real_close = os.close

    class Stop(BaseException):
        pass

    def close_then_stop(fd):
        real_close(fd)
        closed.append(fd)
        if len(closed) == 1:
            raise Stop

    monkeypatch.setattr(writer.os, "close", close_then_stop)
    with pytest.raises(Stop):
        root.release()
    root.release()  # the clean-up's second release
    monkeypatch.setattr(writer.os, "close", real_close)
    assert closed == [held_fd]
    root.close()
