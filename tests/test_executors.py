"""The executors with a toy runner: results, laziness, and injected faults."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fastdcm.errors import Status
from fastdcm.run.executors import Fault, WorkerInfo, make_executor
from fastdcm.run.executors.process import ProcessExecutor
from fastdcm.run.executors.serial import SerialExecutor


class Toy:
    """The runner: each item is a string; some names misbehave."""

    def __init__(self, context, worker: WorkerInfo):
        self.context = context
        self.worker = worker

    def run_batch(self, items, progress, retry):
        return toy(items, self.context, progress, retry)


def toy(items, context, progress, retry):
    out = []
    for i, item in enumerate(items):
        progress(i)
        if item == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif item == "abort":
            os.abort()
        elif item == "hang":
            time.sleep(3600)
        elif item == "oom":
            try:
                hoard = []
                while True:
                    hoard.append(bytearray(64 << 20))
            except MemoryError:
                out.append(("oom", item))
                continue
        elif item == "exit":
            os._exit(7)
        elif item == "threads":
            out.append((os.environ.get("FASTDCM_DECODE_THREADS"), item))
            continue
        out.append((f"{context}:{item.upper()}", item))
    return out


def fault(item, f: Fault):
    return (f.status, item)


def run(executor, batches):
    results = {}
    for items, res in executor.map_batches(batches):
        assert len(items) == len(res)
        for item, r in zip(items, res):
            assert item not in results, f"{item} reported twice"
            results[item] = r[0]
    return results


def names(n, prefix="f"):
    return [f"{prefix}{i}" for i in range(n)]


def test_serial_and_pool_agree():
    batches = [names(5, "a"), names(3, "b"), ["c"]]
    with SerialExecutor(Toy, "ctx") as ex:
        serial = run(ex, batches)
    with ProcessExecutor(Toy, "ctx", workers=2, on_fault=fault) as ex:
        pool = run(ex, batches)
    assert serial == pool
    assert serial["a1"] == "ctx:A1"
    assert len(serial) == 9


def test_make_executor_zero_is_serial():
    ex = make_executor(Toy, "x", workers=0, on_fault=fault)
    assert isinstance(ex, SerialExecutor)


@pytest.mark.parametrize("bad,status", [("crash", Status.WORKER_CRASH), ("abort", Status.WORKER_CRASH), ("exit", Status.WORKER_CRASH)])
def test_dead_worker_fails_only_its_item(bad, status):
    batches = [["a", "b", bad, "c", "d"], ["e", "f"], ["g", bad + "x"]]
    # a second batch in flight on the other worker is untouched
    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault) as ex:
        results = run(ex, batches)
        assert ex.crashes == 1
    assert results[bad] == status
    innocent = {k: v for k, v in results.items() if k != bad}
    assert innocent == {k: f"k:{k.upper()}" for k in innocent}
    assert len(results) == 9


def test_crash_reason_names_the_signal():
    with ProcessExecutor(Toy, "k", workers=1, on_fault=lambda item, f: (f.reason, item)) as ex:
        results = run(ex, [["a", "crash"]])
    assert "SIGSEGV" in results["crash"]


def test_two_crashes_in_one_batch():
    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault) as ex:
        results = run(ex, [["a", "crash", "b", "crash2", "c"]])
    # "crash2" is a normal item; only exact "crash" crashes
    assert results["crash"] == Status.WORKER_CRASH
    assert results["a"] == "k:A" and results["c"] == "k:C"


def test_hang_is_killed_after_the_deadline():
    start = time.monotonic()
    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault, timeout=1.0) as ex:
        results = run(ex, [["a", "hang", "b"], ["c", "d"]])
    assert time.monotonic() - start < 20
    assert results["hang"] == Status.TIMEOUT
    assert results["a"] == "k:A" and results["b"] == "k:B" and results["c"] == "k:C"


def test_memory_limit_gives_memory_error_and_the_run_goes_on():
    with ProcessExecutor(Toy, "k", workers=1, on_fault=fault, memory_limit=2 << 30) as ex:
        results = run(ex, [["a", "oom", "b"]])
    assert results == {"a": "k:A", "oom": "oom", "b": "k:B"}


def test_external_sigkill_is_reported_as_out_of_memory():
    import threading

    with ProcessExecutor(Toy, "k", workers=1, on_fault=fault, timeout=30) as ex:
        pid = ex._workers[0].process.pid
        # what the kernel's OOM killer does, while the worker is on "hang"
        timer = threading.Timer(1.5, os.kill, (pid, signal.SIGKILL))
        timer.start()
        try:
            results = run(ex, [["a", "hang", "b"]])
        finally:
            timer.cancel()
    assert results == {"a": "k:A", "hang": Status.OUT_OF_MEMORY, "b": "k:B"}


def test_batches_are_pulled_lazily():
    pulled = []

    def batches():
        for i in range(50):
            pulled.append(i)
            yield [f"x{i}"]

    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault) as ex:
        done = 0
        for _items, _res in ex.map_batches(batches()):
            done += 1
            assert len(pulled) - done <= 4  # at most two batches per worker in flight
    assert done == 50


def test_close_abort_returns_in_flight_batches():
    def batches():
        yield ["hang"]
        yield ["a"]

    ex = ProcessExecutor(Toy, "k", workers=1, on_fault=fault)
    it = ex.map_batches(batches())
    with pytest.raises(StopIteration):
        # drive the generator until it blocks; a timer interrupts it
        signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        try:
            next(it)
        except KeyboardInterrupt:
            lost = ex.close(abort=True)
            assert lost[0] == ["hang"] and all(b in (["hang"], ["a"]) for b in lost)
            raise StopIteration
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_batches_queued_behind_a_crash_are_requeued():
    # one worker holds two batches; it dies on the first; the second was never started
    with ProcessExecutor(Toy, "k", workers=1, on_fault=fault, depth=2) as ex:
        results = run(ex, [["a", "crash", "b"], ["c", "d"], ["e"]])
    assert results == {"a": "k:A", "crash": Status.WORKER_CRASH, "b": "k:B", "c": "k:C", "d": "k:D", "e": "k:E"}


@pytest.mark.parametrize("depth", [1, 3])
def test_depth(depth):
    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault, depth=depth) as ex:
        results = run(ex, [names(3, f"d{i}_") for i in range(7)])
    assert len(results) == 21


class Broken(Toy):
    def __init__(self, context, worker):
        os._exit(9)


def test_workers_that_cannot_start_stop_the_run_with_an_error():
    with ProcessExecutor(Broken, "k", workers=2, on_fault=fault) as ex:
        with pytest.raises(RuntimeError, match="before starting any file"):
            run(ex, [["a"], ["b"]])


class WhereAmI(Toy):
    def run_batch(self, items, progress, retry):
        return [((self.worker.slot, self.worker.own_process, self.worker.stop_signal, id(self), os.getpid()), i) for i in items]


def test_each_worker_gets_its_own_runner_from_the_factory():
    with ProcessExecutor(WhereAmI, "k", workers=2, on_fault=fault) as ex:
        seen = set(run(ex, [[f"x{i}"] for i in range(8)]).values())
    assert {s[0] for s in seen} == {0, 1} and all(s[1] is True and s[2] == signal.SIGTERM for s in seen)
    assert len({(s[3], s[4]) for s in seen}) == 2  # one runner per worker process, kept for its batches
    with SerialExecutor(WhereAmI, "k") as ex:
        seen = set(run(ex, [["a"], ["b"]]).values())
    [(slot, own, stop, _, pid)] = seen  # one runner, in this process, told that nothing signals it
    assert (slot, own, stop, pid) == (0, False, None, os.getpid())


@pytest.mark.parametrize("given", [None, "3"])
def test_workers_get_their_share_of_the_cpus_for_a_decode(monkeypatch, given):
    """Each worker's JPEG 2000 decode threads: the CPUs over the workers, or what the caller set."""
    from fastdcm.decoders.backends import decode_threads

    monkeypatch.delenv("FASTDCM_DECODE_THREADS", raising=False)
    share = str(max(1, decode_threads() // 2))
    if given:
        monkeypatch.setenv("FASTDCM_DECODE_THREADS", given)
    with ProcessExecutor(Toy, "k", workers=2, on_fault=fault) as ex:
        assert run(ex, [["threads"]]) == {"threads": given or share}
