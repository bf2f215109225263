"""Real process faults against a running ``fastdcm convert``: kill -9 of the parent, a SIGTERM to
one worker, a SIGTERM to the whole process group. Linux (``/proc``) only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .archives import ct_archive as _archive
from fastdcm.errors import Status
from fastdcm.run.sinks.manifest import read_manifest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")



def _start(args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "fastdcm", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, **kw,
    )


def _children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_workers_die_within_2_s_of_a_kill_9_of_their_parent(tmp_path):
    src = _archive(tmp_path, 8)
    out = tmp_path / "out"
    # Both workers hang on their files: they are busy, not waiting on the pipe.
    proc = _start(["convert", str(src), "-o", str(out), "--workers", "2", "--batch-size", "1", "--quiet"],
                  env={"FASTDCM_TEST_FAULTS": "hang:f000,hang:f001"})
    assert _wait_for(lambda: len(_children(proc.pid)) >= 2), proc.stderr.read() if proc.poll() is not None else ""
    time.sleep(1.0)  # the workers are inside their files
    workers = _children(proc.pid)
    assert workers and all(_alive(w) for w in workers)
    proc.kill()
    proc.wait(10)
    killed_at = time.monotonic()
    assert _wait_for(lambda: not any(_alive(w) for w in workers), timeout=5.0), "workers outlived their parent"
    assert time.monotonic() - killed_at < 2.0
    before = sorted(p for p in out.rglob("*.png"))
    time.sleep(1.0)
    assert sorted(p for p in out.rglob("*.png")) == before  # nothing new written after


def test_sigterm_to_one_worker_fails_only_its_file(tmp_path):
    src = _archive(tmp_path, 12)
    out = tmp_path / "out"
    proc = _start(["convert", str(src), "-o", str(out), "--workers", "2", "--batch-size", "1", "--quiet"],
                  env={"FASTDCM_TEST_FAULTS": "hang:f005"})
    manifest = out / "manifest.jsonl"
    # Wait until the hang is reached and the other files are done (but the one queued behind f005).
    assert _wait_for(lambda: manifest.exists() and len(manifest.read_text().splitlines()) >= 10)
    time.sleep(0.5)
    # One worker hangs on f005, the other has nothing left to do: SIGTERM both.
    workers = [w for w in _children(proc.pid) if _alive(w)]
    assert len(workers) == 2
    for w in workers:
        os.kill(w, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    records = {Path(r.source).name: r for r in read_manifest(manifest)}
    assert len(records) == 12, stderr
    assert records["f005.dcm"].status is Status.WORKER_CRASH and "SIGTERM" in records["f005.dcm"].reason
    assert Counter(r.status for r in records.values())[Status.CONVERTED] == 11
    assert proc.returncode == 1, stderr  # one failed input, not an interrupted run
    assert "Traceback" not in stderr


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_to_the_process_group_leaves_no_image_recorded_interrupted(tmp_path, attempt):
    src = _archive(tmp_path, 60)
    out = tmp_path / "out"
    # The last file hangs, so the signal always finds the run going (at different points).
    proc = _start(["convert", str(src), "-o", str(out), "--workers", "2", "--batch-size", "4", "--quiet"],
                  start_new_session=True, env={"FASTDCM_TEST_FAULTS": "hang:f059"})
    manifest = out / "manifest.jsonl"
    assert _wait_for(lambda: manifest.exists() and len(manifest.read_text().splitlines()) >= 4 + 6 * attempt)
    os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = list(read_manifest(manifest))
    assert len({r.source for r in records}) == len(records) <= 60  # one status per discovered input
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    claimed = {n for r in records if r.status is Status.CONVERTED for n in r.outputs}
    assert on_disk == claimed  # every image on disk has its converted record, and no more


def _assert_a_stop_inside_stops(setup: str, trigger: str) -> None:
    """Run ``setup`` then ``trigger`` (which makes the pool's stop arrive somewhere an exception is
    dropped) in a process with the worker's stop handlers; the stop must still end the process with
    ``_Stop`` once that place has returned, and nothing be printed as ignored."""
    script = (
        "import ctypes, os, signal, sys, time\n"
        "from fastdcm.run.executors import process\n"
        "signal.signal(signal.SIGTERM, process._on_sigterm)\n"
        "signal.signal(signal.SIGALRM, process._on_sigterm)\n"
        + setup
        + "try:\n"
        + f"    {trigger}\n"
        + "    deadline = time.monotonic() + 2\n"
        "    while time.monotonic() < deadline:\n"
        "        time.sleep(0.001)\n"
        "    print('not stopped')\n"
        "except process._Stop:\n"
        "    print('stopped')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "stopped", run.stdout + run.stderr
    assert "Exception ignored" not in run.stderr and "Traceback" not in run.stderr, run.stderr


_FINALIZED = r"""
class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the pool's stop, arriving while a finalizer runs
        time.sleep(0.05)
"""


def test_a_stop_that_arrives_in_a_finalizer_still_stops_the_worker():
    """The garbage collector runs ``__del__`` methods anywhere (llvmlite's, in a worker stopped on a
    full disk): the stop raised there was printed as 'Exception ignored ... _Stop' and lost."""
    _assert_a_stop_inside_stops(_FINALIZED, "Finalized()")


# A comparator that libc's qsort calls back, compiled as if it were llvmlite's (whose object-cache
# callbacks Numba's cache loader runs): an exception raised inside is printed and dropped by ctypes.
_LLVMLITE_CALLBACK = r"""
source = (
    "def compare(a, b):\n"
    "    os.kill(os.getpid(), signal.SIGTERM)  # the pool's stop, arriving inside the callback\n"
    "    time.sleep(0.05)\n"
    "    return a[0] - b[0]\n"
)
space = {"os": os, "signal": signal, "time": time}
exec(compile(source, "/site-packages/llvmlite/binding/executionengine.py", "exec"), space)
CMP = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))
libc = ctypes.CDLL(None)
values = (ctypes.c_int * 2)(2, 1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libc's qsort through ctypes")
def test_a_stop_that_arrives_in_a_numba_cache_callback_still_stops_the_worker():
    """A worker loading a kernel from Numba's disk cache runs llvmlite's ctypes callbacks: the stop
    raised inside one was printed as 'Exception ignored on calling ctypes callback function' and lost
    (seen in the process-group SIGTERM test)."""
    _assert_a_stop_inside_stops(
        _LLVMLITE_CALLBACK, 'libc.qsort(values, 2, ctypes.sizeof(ctypes.c_int), CMP(space["compare"]))'
    )


def test_a_commit_holds_off_the_deferred_stop_too(tmp_path):
    """While an output is committed, the pool's stop waits: SIGTERM, and SIGALRM (the stop raised again
    after it first arrived in a finalizer)."""
    from fastdcm.options import RenderOptions
    from fastdcm.run.executors import WorkerInfo
    from fastdcm.run.pipeline import Job, Pipeline

    pipeline = Pipeline(Job(out=str(tmp_path), render=RenderOptions()), WorkerInfo(stop_signal=signal.SIGTERM))
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pipeline._committing():
        held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert {signal.SIGTERM, signal.SIGALRM} <= held
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
