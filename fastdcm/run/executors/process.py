"""The process pool: worker processes that survive their faults (the executor protocol is in ``__init__``).

This is the only module that knows about processes. Each worker calls the factory once, with
``WorkerInfo(slot, own_process=True, stop_signal=SIGTERM)``, and runs its batches with the
runner it got. ``progress(i)`` writes (item index, start time) into a shared array, one slot
per worker, so the parent always knows which item each worker is on and since when. That is
how faults stay with the item that caused them:

- a worker that dies (segfault, abort, killed) fails only the item it was on, with
  ``worker_crash`` (``out_of_memory`` if it died of SIGKILL that the pool did not send:
  the kernel's OOM killer); the other items of its batch are retried, each alone;
- an item running longer than ``timeout`` seconds gets its worker killed and is marked
  ``timeout``; the other items of the batch are retried, each alone;
- each worker runs under ``RLIMIT_AS`` = its address space at start + ``memory_limit`` bytes, so an
  allocation of more than ``memory_limit`` raises ``MemoryError`` inside the runner (which reports
  ``out_of_memory`` for that item), whatever the parent had loaded before it forked;
- a dead worker is replaced; the pool never breaks (unlike concurrent.futures').

Start method: ``fork`` when the parent runs a single Python thread (the ``fastdcm``
command, most scripts): workers start in about 10 ms with the parent's Numba kernels
already loaded, where a fork server costs about 0.7 s before the first file (a fresh
interpreter, imports, the kernels loaded again in every worker), a third of the whole
run for 1,000 CT files. With other threads alive (a caller's thread pool, a progress
thread) a forked child could inherit a lock one of them holds and deadlock, so then it
is ``forkserver`` (``spawn`` where that does not exist): a clean single-threaded process
that pre-imports :mod:`fastdcm.run.pipeline`, from which workers (and replacements after a
crash) are forked.

Batches are pulled lazily from the input iterable: at most ``depth`` (2) batches per
worker are in flight, the one it runs and the next one waiting in its pipe so that it
never idles while the parent records results; memory does not grow with the input.

Environment: every ``FASTDCM_*`` variable of the parent at pool start is passed to the
workers (the fork server may be older than the caller's environment). Workers set
``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``NUMBA_NUM_THREADS`` to 1 and ``FASTDCM_DECODE_THREADS`` (a JPEG 2000 frame's decode threads) to their
share of the CPUs unless the caller set it, fix glibc's malloc thresholds so that a file's large
buffers are reused by the next (``heap.py``), ignore SIGINT (the parent owns Ctrl-C) and turn SIGTERM
into a clean exit (status ``interrupted``).
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator, Sequence

from ...errors import Status
from . import Factory, Fault, FaultFn, WorkerInfo
from .heap import keep_heap

__all__ = ["ProcessExecutor", "EXIT_INTERRUPTED", "default_start_method"]

log = logging.getLogger(__name__)

#: Exit code of a worker that was asked to stop (SIGTERM) and cleaned up.
EXIT_INTERRUPTED = 3
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
_POLL = 0.1  # seconds between deadline checks
_MAX_IDLE_DEATHS = 5  # workers dying before any item, in a row: give up (they cannot start)


# --------------------------------------------------------------------------- inside a worker


class _Stop(BaseException):
    """Raised in a worker by SIGTERM: unwinds through ``finally`` blocks (temp files)."""


def _dropped_here(frame) -> bool:
    """Whether an exception raised at ``frame`` would be printed as "Exception ignored" and dropped
    instead of unwinding the stack: inside a finalizer (a ``__del__``: the garbage collector runs
    them anywhere, llvmlite's say), or inside llvmlite, whose ctypes callbacks Numba's cache loader
    runs (a kernel signature a worker loads on its first file: a stop arriving then was lost, 1 run
    of the process-fault tests in 7 beside a CPU hog)."""
    f = frame
    while f is not None:
        code = f.f_code
        if code.co_name == "__del__" or "llvmlite" in code.co_filename:
            return True
        f = f.f_back
    return False


def _on_sigterm(signum, frame):
    # Not where the exception would be dropped, and the stop with it (_dropped_here): asked again
    # 10 ms later (SIGALRM, which comes back here and which the pipeline holds off with SIGTERM
    # while an output is committed), once the finalizer or the callback has returned.
    if _dropped_here(frame):
        signal.setitimer(signal.ITIMER_REAL, STOP_RETRY)
        return
    # Once: a second SIGTERM (the process group's and then the pool's) must not cut short the
    # cleanup the first one started (removing the outputs of unreported inputs).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    raise _Stop()


#: Seconds after which a stop that arrived in a finalizer is raised again (by SIGALRM).
STOP_RETRY = 0.01


def _die_with_parent(parent_pid: int | None) -> None:
    """Make this worker end when the process that started it ends, by any signal, SIGKILL
    included: the kernel's parent-death signal on Linux, else a thread that polls the parent
    id every 0.5 s. A parent gone before this ran is caught by the pid check. (A worker of a
    fork server is the server's child; the server ends with the run's process.)"""
    if parent_pid is None:
        parent_pid = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:
                    os._exit(EXIT_INTERRUPTED)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(EXIT_INTERRUPTED)

    if os.getppid() != parent_pid:
        os._exit(EXIT_INTERRUPTED)
    threading.Thread(target=watch, name="fastdcm-parent-watch", daemon=True).start()


_PR_SET_PDEATHSIG = 1


def _address_space() -> int:
    """This process's address space in bytes (``/proc/self/statm``), 0 where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


def _worker_main(factory, context, conn, slots, slot, memory_limit, env, parent_pid, inherited) -> None:
    try:
        # Everything inside the try: a SIGTERM that arrives while the worker starts is a clean exit.
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGALRM, _on_sigterm)  # a stop deferred out of a finalizer (_on_sigterm)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(parent_pid)
        for fd in inherited:  # the parent's ends of the pipes (forked copies): EOF when the parent dies
            try:
                os.close(fd)
            except OSError:
                pass
        # A crash is reported by the parent, with the item and the signal; a forked worker must not
        # also print the faulthandler traceback it may have inherited (pytest enables one).
        faulthandler.disable()
        os.environ.update(env)
        for var in _THREAD_VARS:
            os.environ[var] = "1"
        keep_heap()  # the frame buffers stay for the next file (heap.py)
        if memory_limit:
            import resource

            # The limit counts what the worker takes beyond the address space it starts with (a fork
            # of a parent that imported pyarrow starts at ~530 MB, one that did not at ~350 MB).
            limit = memory_limit + _address_space()
            try:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            except (ValueError, OSError) as exc:  # e.g. a lower hard limit: keep it
                log.warning("cannot set the worker memory limit: %s", exc)
        base = _SLOT * slot

        def progress(i: int) -> None:
            slots[base + 2] = time.monotonic()
            slots[base + 1] = i

        runner = factory(context, WorkerInfo(slot=slot, own_process=True, stop_signal=signal.SIGTERM))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            batch_id, items, retry = msg
            slots[base + 1] = -1
            slots[base] = batch_id
            results = runner.run_batch(items, progress, retry)
            # The batch is done and its outputs are on disk: its results must reach the parent
            # whole, so a SIGTERM now waits until they are sent (then the worker exits).
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            slots[base + 1] = -1
            conn.send((batch_id, results))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    except _Stop:
        sys.exit(EXIT_INTERRUPTED)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass


# --------------------------------------------------------------------------- the pool

#: Shared doubles per worker: (batch id it is on, item index or -1, when the item started).
_SLOT = 3


class _Worker:
    def __init__(self, pool: "ProcessExecutor", slot: int) -> None:
        self.slot = slot
        parent, child = pool._mp.Pipe(duplex=True)
        self.conn = parent
        # A forked worker inherits the parent's ends of every pipe; it closes them, so that it
        # sees end-of-file when the parent dies (other start methods inherit none).
        inherited = [parent.fileno()] + [w.conn.fileno() for w in pool._workers if w is not None and not w.conn.closed]
        if pool._mp.get_start_method() != "fork":
            inherited = []
        self.process = pool._mp.Process(
            target=_worker_main,
            args=(
                pool.factory, pool.context, child, pool._slots, slot, pool.memory_limit, pool._env,
                os.getpid() if pool._mp.get_start_method() == "fork" else None, inherited,
            ),
            name=f"fastdcm-worker-{slot}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.batches: deque[tuple[int, list, bool]] = deque()  # sent, in order: (id, items, retry)
        self.killed_for_timeout = False

    def send(self, batch_id: int, items: list, retry: bool) -> None:
        self.batches.append((batch_id, items, retry))
        try:
            self.conn.send((batch_id, items, retry))
        except OSError:  # it died: its sentinel fires and _lost requeues the batch
            pass


def default_start_method() -> str:
    """``fork`` when it is safe (one Python thread, Linux), else ``forkserver`` or ``spawn``."""
    methods = mp.get_all_start_methods()
    if "fork" in methods and sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class ProcessExecutor:
    """A pool of worker processes that survives its workers (see the module docstring)."""

    def __init__(
        self,
        factory: Factory,
        context: Any,
        *,
        workers: int,
        on_fault: FaultFn,
        timeout: float | None = None,
        memory_limit: int | None = None,
        start_method: str | None = None,
        depth: int = 2,
    ) -> None:
        if workers < 1:
            raise ValueError("a process pool needs at least one worker")
        method = start_method or default_start_method()
        self._mp = mp.get_context(method)
        if method == "forkserver":
            self._mp.set_forkserver_preload(["fastdcm.run.pipeline"])
        self.factory = factory
        self.context = context
        self.on_fault = on_fault
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.depth = max(1, int(depth))
        self._env = {k: v for k, v in os.environ.items() if k.startswith("FASTDCM_")}
        # each worker's share of the CPUs for one frame's decode (JPEG 2000), unless the caller set it
        from ...decoders.backends import THREADS_ENV, decode_threads

        self._env.setdefault(THREADS_ENV, str(max(1, decode_threads() // workers)))
        self._slots = self._mp.RawArray("d", _SLOT * workers)
        for i in range(_SLOT * workers):
            self._slots[i] = -1
        self._workers: list[_Worker | None] = [None] * workers
        self._retries: deque[Any] = deque()  # items to run again, each alone
        self._requeue: deque[list] = deque()  # whole batches a dead worker never started
        self._next_id = 0
        self.crashes = 0
        self._idle_deaths = 0  # workers in a row that died before starting any item
        t0 = time.perf_counter()
        for slot in range(workers):
            self._workers[slot] = _Worker(self, slot)
        log.debug("started %d %s workers in %.3f s", workers, method, time.perf_counter() - t0)

    def _next_work(self, source: Iterator[Sequence[Any]]) -> tuple[list, bool] | None:
        if self._retries:
            return [self._retries.popleft()], True
        if self._requeue:
            return self._requeue.popleft(), False
        if source is None:
            return None
        items = next(source, None)
        return (list(items), False) if items is not None else None

    def map_batches(
        self, batches: Iterable[Sequence[Any]], should_stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Sequence[Any], list]]:
        """Yield ``(items, results)`` as batches finish (not in input order). Items that were
        retried alone come back as batches of one. Each worker holds at most ``depth``
        batches (the one it runs and the next, so it never waits for the parent).
        ``should_stop`` is asked at least every 0.1 s; once it says True, this returns (the
        batches in flight are for :meth:`stop`)."""
        source: Iterator | None = iter(batches)
        while True:
            if should_stop is not None and should_stop():
                return
            # Breadth first: every worker gets a batch to run before any gets one to queue,
            # so a handful of long inputs (mammograms) spreads over all the workers.
            for level in range(1, self.depth + 1):
                for worker in self._workers:
                    if worker is None or len(worker.batches) >= level:
                        continue
                    work = self._next_work(source)
                    if work is None:
                        source = None
                        break
                    worker.send(self._new_id(), *work)
            busy = [w for w in self._workers if w is not None and w.batches]
            if not busy:
                if source is None and not self._retries and not self._requeue:
                    return
                continue
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_POLL)
            if should_stop is not None and should_stop():
                return  # a SIGTERM to the process group reaches the workers too: not crashes
            for worker in busy:
                if worker.conn in ready:
                    try:
                        batch_id, results = worker.conn.recv()
                    except (EOFError, OSError):
                        yield from self._lost(worker)
                        continue
                    sent_id, items, _ = worker.batches.popleft()
                    self._idle_deaths = 0
                    assert sent_id == batch_id, "a worker answered out of order"
                    yield items, results
                elif worker.process.sentinel in ready:
                    yield from self._lost(worker)
            if self.timeout:
                now = time.monotonic()
                for worker in busy:
                    if not worker.batches or not worker.process.is_alive():
                        continue
                    base = _SLOT * worker.slot
                    if self._slots[base + 1] >= 0 and now - self._slots[base + 2] > self.timeout:
                        worker.killed_for_timeout = True
                        worker.process.kill()

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _lost(self, worker: _Worker) -> Iterator[tuple[Sequence[Any], list]]:
        """A worker died: fault the item it was on, retry the rest of that batch item by
        item, and requeue the batches it had not started."""
        worker.process.join(5)
        code = worker.process.exitcode
        base = _SLOT * worker.slot
        on_batch, index = int(self._slots[base]), int(self._slots[base + 1])
        batches = list(worker.batches)
        worker.batches.clear()
        timed_out = worker.killed_for_timeout
        self._replace(worker)
        if not batches:
            return
        current_id, items, _ = batches[0]
        rest = batches[1:]
        self._requeue.extend(b[1] for b in rest)
        if current_id != on_batch or not 0 <= index < len(items):
            self._requeue.appendleft(items)  # died between items: nobody to blame
            self._idle_deaths += 1
            if self._idle_deaths >= _MAX_IDLE_DEATHS:
                raise RuntimeError(
                    f"{self._idle_deaths} worker processes in a row died before starting any file "
                    f"(last exit code {code}); they cannot start here (see the errors above)"
                )
            return
        self._idle_deaths = 0
        self.crashes += 1
        if timed_out:
            fault = Fault(Status.TIMEOUT, f"killed after the per-file deadline of {self.timeout:g} s")
        elif code == -signal.SIGKILL:
            fault = Fault(Status.OUT_OF_MEMORY, "the worker was killed by SIGKILL (probably the kernel's OOM killer)")
        elif code == EXIT_INTERRUPTED:  # the pool sends SIGTERM only when it stops: someone else did
            fault = Fault(Status.WORKER_CRASH, "the worker was stopped by a SIGTERM from outside the run on this file")
        elif code is not None and code < 0:
            fault = Fault(Status.WORKER_CRASH, f"the worker died of signal {signal.Signals(-code).name} on this file")
        else:
            fault = Fault(Status.WORKER_CRASH, f"the worker exited unexpectedly (exit code {code}) on this file")
        culprit = items[index]
        log.warning("%s: %s", getattr(culprit, "path", culprit), fault.reason)
        self._retries.extend(items[:index])
        self._retries.extend(items[index + 1 :])
        yield [culprit], [self.on_fault(culprit, fault)]

    def _replace(self, worker: _Worker) -> None:
        worker.conn.close()
        base = _SLOT * worker.slot
        self._slots[base] = self._slots[base + 1] = -1
        self._workers[worker.slot] = _Worker(self, worker.slot)

    def stop(self, grace: float = 5.0) -> Iterator[tuple[Sequence[Any], list]]:
        """The run is interrupted: SIGTERM every worker and yield the batches they had finished
        (their outputs are on disk and their results already sent, or being sent: a worker
        finishes sending before it exits). What is still in flight is lost; ``close`` follows."""
        workers = [w for w in self._workers if w is not None]
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + grace
        for w in workers:
            while w.batches:
                try:
                    if not w.conn.poll(max(0.0, deadline - time.monotonic())):
                        break
                    batch_id, results = w.conn.recv()
                except (EOFError, OSError):
                    break
                sent_id, items, _ = w.batches.popleft()
                if sent_id != batch_id:
                    break
                yield items, results

    def close(self, *, abort: bool = False) -> list[Sequence[Any]]:
        """Stop the workers. ``abort=True`` (Ctrl-C): SIGTERM them, so each removes its
        temporary file, then SIGKILL after 5 s. Returns the batches that were in flight or
        waiting for a retry, whose results are lost (the caller records them)."""
        lost: list[Sequence[Any]] = []
        if self._retries:
            lost.append(list(self._retries))
            self._retries.clear()
        lost.extend(self._requeue)
        self._requeue.clear()
        workers = [w for w in self._workers if w is not None]
        for w in workers:
            lost.extend(b[1] for b in w.batches)
            w.batches.clear()
            if abort:
                if w.process.is_alive():
                    w.process.terminate()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers = [None] * len(self._workers)
        return lost

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(abort=exc[0] is not None)
