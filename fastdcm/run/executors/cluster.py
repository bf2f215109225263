"""The Dask executor: batches run on a Dask distributed cluster (``--cluster ADDRESS``).

Dask does the cluster work (scheduling, moving tasks off lost workers, restarting them under
their nannies); this module only maps the executor protocol onto it:

- a :class:`_RunnerPlugin` (a Dask worker plugin) is registered for the run: in ``setup`` it
  loads the Numba kernels on every worker, before any batch, and it holds one runner per worker
  thread (``factory(context, WorkerInfo(slot, own_process=False, stop_signal=None))``, made on
  the thread's first batch and closed when the plugin is removed at the end of the run);
- each batch is one task, ``_run_batch``, that runs the batch with that runner and returns its
  small results; the outputs are written by the worker, not the driver;
- batches are pulled lazily from the input iterable and at most ``depth`` tasks per worker
  thread are in flight, so the driver never holds more than that while discovery streams;
- a worker that dies mid-task (a crash, a kill, its memory limit) makes the scheduler run the task
  again elsewhere; a run of the task after such a loss knows it (an attempt marker the runner
  keeps, :meth:`first_attempt`) and may replace what the lost attempt wrote. When the scheduler
  gives up on a task (``KilledWorker``: it was on ``distributed.scheduler.allowed-failures``
  + 1 workers that died), its items run again each alone; an item that fails so alone, twice, is
  ``worker_crash``, as in the local pool. The scheduler counts a death against every task assigned
  to that worker, running or queued behind another (it gives a one-thread worker up to two), so
  items run alone one at a time in the whole cluster, nothing else in flight: a worker that dies
  then died of that item, never of a neighbour's (an innocent file queued beside a crashing one was
  blamed for it in a test run, 1 of 8). The second chance covers a death from outside (a kill, or
  a timed-out worker ending itself). Batches resume when the lone items are done;
- the per-file deadline (``timeout``) is watched on each worker by a thread of the plugin: an item
  running longer logs an event the driver subscribes to; the driver cancels that task, marks the
  item ``timeout`` and runs the batch's other items again each alone; once the scheduler has let go
  of the task, the watchdog ends the worker process (its nanny starts a new one) since a Python
  thread cannot be stopped. A worker in the driver's own process is never ended (it logs instead).

A stop (Ctrl-C) cancels what has not started and waits ``grace`` seconds for the running batches;
a batch still running after that writes outputs that no record names, which ``--resume`` replaces.
The cluster itself is the user's: it is never shut down; only a client this executor opened from an
address is closed.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable, Iterator, Sequence

from ...errors import MissingDependencyError, Status, describe
from . import Factory, Fault, FaultFn, WorkerInfo
from .heap import keep_heap, restore_heap

__all__ = ["DaskExecutor", "connect"]

log = logging.getLogger(__name__)

_POLL = 0.1
_QUIET = 60.0  # seconds without a finished batch after which the driver logs what the cluster is doing
_KILL_WAIT = 10.0  # seconds a timed-out worker waits for the scheduler to let go of its task


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError(
            "--cluster needs Dask distributed: pip install 'fastdcm[cluster]' (or pip install distributed)"
        ) from None
    return distributed


def connect(cluster: Any) -> tuple[Any, bool]:
    """(a Dask client, whether this call opened it) for ``cluster``: a ``distributed.Client``
    (used as it is), or a scheduler address such as ``tcp://host:8786``."""
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        return cluster, False
    if not isinstance(cluster, str) or not cluster:
        raise TypeError(f"cluster must be a scheduler address or a distributed.Client, not {cluster!r}")
    import dask

    try:  # Dask's connect timeout (distributed.comm.timeouts.connect, 30 s unless configured)
        client = distributed.Client(cluster, set_as_default=False, timeout=dask.config.get("distributed.comm.timeouts.connect"))
    except (OSError, TimeoutError) as exc:
        from ...errors import InvalidOptionError

        raise InvalidOptionError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    return client, True


# --------------------------------------------------------------------------- on a worker


class _RunnerPlugin:
    """Made a subclass of Dask's WorkerPlugin at registration (``_plugin_class``): one per run."""

    def __init__(self, name: str, factory: Factory, context: Any, timeout: float | None, driver_pid: int, topic: str) -> None:
        self.name = name
        self.factory = factory
        self.context = context
        self.timeout = timeout
        self.driver_pid = driver_pid
        self.topic = topic

    def setup(self, worker: Any) -> None:
        from ... import kernels

        self.worker = worker
        self._local = threading.local()
        self._lock = threading.Lock()
        self._runners: list[Any] = []
        self.running: dict[int, tuple[str, int, str, float]] = {}  # thread -> (task key, item, path, start)
        self._done = threading.Event()
        # The deadline's watchdog first: Dask keeps a plugin whose setup raised and runs its tasks,
        # so nothing below may leave a hanging file unwatched.
        if self.timeout:
            threading.Thread(target=self._watch, name="fastdcm-deadline", daemon=True).start()
        self._malloc = keep_heap()  # (heap.py: Dask's nanny turns glibc's growing mmap threshold off)
        # one thread per frame's decode: the worker's own threads fill the machine's cores (restored in teardown)
        from ...decoders.backends import THREADS_ENV

        self._threads_env = os.environ.get(THREADS_ENV)
        if self._threads_env is None:
            os.environ[THREADS_ENV] = "1"
        # pydicom logs each damaged file's warnings besides warning: the manifest holds each file's
        # outcome, the worker's log is not flooded (as in a local worker); restored in teardown.
        pydicom_log = logging.getLogger("pydicom")
        self._pydicom_level = pydicom_log.level
        pydicom_log.setLevel(max(logging.ERROR, pydicom_log.level))
        kernels.warmup()  # compiled or loaded from the disk cache before the first batch

    def teardown(self, worker: Any) -> None:
        self._done.set()
        if getattr(self, "_malloc", False):
            restore_heap()
        if hasattr(self, "_pydicom_level"):
            logging.getLogger("pydicom").setLevel(self._pydicom_level)
        if hasattr(self, "_threads_env") and self._threads_env is None:
            from ...decoders.backends import THREADS_ENV

            os.environ.pop(THREADS_ENV, None)
        with self._lock:
            runners, self._runners = self._runners, []
        for runner in runners:
            close = getattr(runner, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # a worker going away must not fail on a cleanup
                    log.debug("closing a runner: %s", exc)

    def runner(self) -> Any:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            with self._lock:
                slot = len(self._runners)
                tag = f"{secrets.token_hex(3)}-{slot}"  # pids repeat across machines, threads share one
                runner = self.factory(self.context, WorkerInfo(slot=slot, own_process=False, stop_signal=None, tag=tag))
                self._runners.append(runner)
            self._local.runner = runner
        return runner

    def run(self, key: str, items: Sequence[Any], retry: bool) -> list:
        runner = self.runner()
        first = getattr(runner, "first_attempt", None)
        if not retry and first is not None and not first(key):
            retry = True  # the scheduler runs this task again after a worker died in it
        me = threading.get_ident()

        def progress(i: int) -> None:
            self.running[me] = (key, i, str(getattr(items[i], "path", items[i])), time.monotonic())

        try:
            return runner.run_batch(items, progress, retry)
        finally:
            self.running.pop(me, None)

    def _watch(self) -> None:
        """Deadlines, also after the run ended (the plugin removed): a file still hanging in a
        task thread then ends its worker too, rather than holding that thread for good."""
        step = min(1.0, self.timeout / 10)
        while True:
            if self._done.is_set():
                if not self.running:
                    return
                time.sleep(step)
            else:
                self._done.wait(step)
            now = time.monotonic()
            for key, index, path, start in list(self.running.values()):
                if now - start > self.timeout:
                    self._expire(key, index, path)
                    return

    def _expire(self, key: str, index: int, path: str) -> None:
        """Tell the driver, give the scheduler a moment to let go of the task, end the process:
        whatever fails on the way (the worker reconnecting, its state changing under this
        thread), the process still ends, and the hanging file with it."""
        reason = f"killed after the per-file deadline of {self.timeout:g} s"
        if os.getpid() == self.driver_pid:
            self._log_event(key, index, reason)
            log.warning("%s: over the per-file deadline, but this worker runs in the driver's process: not stopped", path)
            return
        try:
            self._log_event(key, index, reason)
            deadline = time.monotonic() + _KILL_WAIT
            while time.monotonic() < deadline:  # the driver cancels the task: then the scheduler does not run it again
                try:
                    ts = self.worker.state.tasks.get(key)
                    if ts is None or ts.state != "executing":
                        break
                except Exception:  # the worker's state is its event loop's: read from here, it can change mid-read
                    pass
                time.sleep(0.05)
            log.warning("%s: %s; ending this worker process (its nanny starts a new one)", path, reason)
        finally:
            os._exit(1)

    def _log_event(self, key: str, index: int, reason: str) -> None:
        try:
            self.worker.log_event(self.topic, {"key": key, "index": index, "reason": reason})
        except Exception as exc:  # the driver then learns of it as a lost worker (a crash after retries)
            log.warning("could not tell the driver of a file over its deadline: %s", exc)


def _plugin_class():
    return type("FastdcmRunnerPlugin", (_RunnerPlugin, _distributed().WorkerPlugin), {"__module__": __name__})


def _run_batch(name: str, key: str, items: Sequence[Any], retry: bool) -> list:
    """The task: one batch on a worker, with that worker thread's runner."""
    from distributed import get_worker

    plugin = get_worker().plugins[name]
    return plugin.run(key, items, retry)


# --------------------------------------------------------------------------- the driver


class DaskExecutor:
    """Runs batches as tasks on a Dask cluster (see the module docstring)."""

    def __init__(
        self,
        factory: Factory,
        context: Any,
        *,
        cluster: Any,
        on_fault: FaultFn,
        timeout: float | None = None,
        depth: int = 2,
        **_: Any,
    ) -> None:
        self.client, self._own_client = connect(cluster)
        self.on_fault = on_fault
        self.timeout = timeout
        self.depth = max(1, int(depth))
        token = secrets.token_hex(4)
        self.name = f"fastdcm-{os.getpid()}-{token}"
        self._topic = f"{self.name}-deadline"
        self._events: queue.Queue = queue.Queue()  # deadline events, from the client's thread
        # Finished tasks with their results, fetched by the client's own thread as they finish (a
        # result() per batch in this thread was a round trip to the worker each: 0.7 s of 1,000 CT files).
        self._done = _distributed().as_completed(loop=self.client.loop, with_results=True, raise_errors=False)
        self._in_flight: dict[str, tuple[Any, list]] = {}  # key -> (future, items)
        self._retries: deque[tuple[Any, int]] = deque()  # (item, chances used) to run alone
        self._chances: dict[str, int] = {}  # key of a lone task -> its earlier KilledWorker rounds
        self._expired: dict[str, tuple[int, str]] = {}  # key -> (item index, reason)
        self._lost: list[list] = []  # batches a stop gave up on
        self._next_id = 0
        self.crashes = 0
        plugin = _plugin_class()(self.name, factory, context, timeout, os.getpid(), self._topic)
        try:
            self.client.subscribe_topic(self._topic, self._on_event)
            self.client.register_plugin(plugin, name=self.name)  # setup() ran on every worker: kernels loaded
        except BaseException:
            self._release()
            raise

    # -- from the client's event loop thread

    def _on_event(self, event: Any) -> None:
        _, msg = event
        self._events.put(msg)

    def _next_done(self, timeout: float) -> list[tuple[Any, Any]]:
        """The (future, result) pairs finished so far, waiting up to ``timeout`` s for one."""
        ready = self._done.next_batch(block=False)
        if ready:
            return ready
        waiting = getattr(self._done, "queue", None)  # as_completed's own thread-safe queue: wait on it
        if waiting is None:
            time.sleep(min(timeout, 0.005))
            return self._done.next_batch(block=False)
        try:
            ready = [waiting.get(timeout=timeout)]
        except queue.Empty:
            return []
        return ready + self._done.next_batch(block=False)

    # -- in the caller's thread

    def _threads(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def _submit(self, items: list, retry: bool, chances: int = 0) -> None:
        self._next_id += 1
        key = f"{self.name}-{self._next_id}"
        future = self.client.submit(_run_batch, self.name, key, items, retry, key=key, pure=False)
        self._in_flight[key] = (future, items)
        if retry:
            self._chances[key] = chances
        self._done.add(future)

    def map_batches(
        self, batches: Iterable[Sequence[Any]], should_stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Sequence[Any], list]]:
        source: Iterator | None = iter(batches)
        threads = self._threads()
        checked = quiet_since = time.monotonic()
        while True:
            if should_stop is not None and should_stop():
                return
            if time.monotonic() - checked > 5:  # workers join and leave
                threads, checked = self._threads(), time.monotonic()
            # Items alone after a worker loss: one task in the whole cluster (the running batches
            # finish first), so a death is that item's alone (the module docstring).
            capacity = 1 if self._retries or self._chances else self.depth * threads
            while len(self._in_flight) < capacity:
                if self._retries:
                    item, chances = self._retries.popleft()
                    self._submit([item], True, chances)
                    continue
                items = next(source, None) if source is not None else None
                if items is None:
                    source = None
                    break
                self._submit(list(items), False)
            if not self._in_flight:
                if source is None and not self._retries:
                    return
                continue
            yield from self._expire_events()
            done = self._next_done(_POLL)
            for future, result in done:
                yield from self._finished(future.key, result)
            now = time.monotonic()
            if done:
                quiet_since = now
            elif now - quiet_since > _QUIET:  # a cluster that lost its workers waits for them: say so
                self._say_quiet(now - quiet_since)
                quiet_since = now

    def _say_quiet(self, seconds: float) -> None:
        """Log what the run waits on when no batch has finished for a while (a user's cluster may
        have lost its workers, or be waiting for new ones to start)."""
        try:
            workers = len(self.client.nthreads())
            on_workers = sorted(len(keys) for keys in self.client.processing().values())
        except Exception as exc:  # the scheduler cannot say: the log says that instead
            workers, on_workers = "an unknown number of", f"unknown ({describe(exc)})"
        log.warning(
            "no batch has finished for %.0f s: %d in flight (%d files waiting to run alone), %s Dask workers, "
            "tasks on each: %s", seconds, len(self._in_flight), len(self._retries), workers, on_workers,
        )

    def _expire_events(self) -> Iterator[tuple[Sequence[Any], list]]:
        while True:
            try:
                msg = self._events.get_nowait()
            except queue.Empty:
                return
            key = msg.get("key")
            entry = self._in_flight.get(key)
            if entry is None or key in self._expired:
                continue
            future, items = entry
            index = int(msg.get("index", -1))
            if not 0 <= index < len(items):
                continue
            self._expired[key] = (index, str(msg.get("reason", "over the per-file deadline")))
            future.cancel()  # the scheduler lets go of it; the watchdog then ends the worker
            yield from self._finished(key, None)

    def _finished(self, key: str, result: Any) -> Iterator[tuple[Sequence[Any], list]]:
        entry = self._in_flight.pop(key, None)
        if entry is None:
            return
        future, items = entry
        expired = self._expired.pop(key, None)
        if expired is not None:
            index, reason = expired
            self.crashes += 1
            culprit = items[index]
            log.warning("%s: %s", getattr(culprit, "path", culprit), reason)
            self._chances.pop(key, None)
            self._retries.extend((item, 0) for item in items[:index] + items[index + 1 :])
            yield [culprit], [self.on_fault(culprit, Fault(Status.TIMEOUT, reason))]
            return
        chances = self._chances.pop(key, None)
        if future.status == "finished":
            yield items, result
            return
        if self.client.status not in ("running", "connecting"):
            raise RuntimeError(f"the connection to the Dask scheduler is lost ({self.client.status})")
        exc = result if isinstance(result, BaseException) else None
        if len(items) > 1 or chances is None:  # which item brought the workers down is not known: each alone
            self._retries.extend((item, 0) for item in items)
            return
        if chances < 1:  # alone, once more: a death from outside (a kill, a timed-out worker) may have counted
            self._retries.append((items[0], chances + 1))
            return
        self.crashes += 1
        distributed = _distributed()
        if isinstance(exc, distributed.KilledWorker) or exc is None:
            fault = Fault(
                Status.WORKER_CRASH,
                "the Dask workers that ran this file died (a crash, a kill or the worker's memory limit); "
                "the scheduler gave up on it (KilledWorker)",
            )
        else:
            fault = Fault(Status.ERROR, f"the task failed on the cluster: {describe(exc)}")
        culprit = items[0]
        log.warning("%s: %s", getattr(culprit, "path", culprit), fault.reason)
        yield [culprit], [self.on_fault(culprit, fault)]

    def stop(self, grace: float = 5.0) -> Iterator[tuple[Sequence[Any], list]]:
        """Cancel the batches that have not started; yield those that finish within ``grace`` s."""
        running = self._running()
        for key, (future, _) in list(self._in_flight.items()):
            if future.status == "pending" and key not in running:
                future.cancel()
        deadline = time.monotonic() + grace
        while self._in_flight and time.monotonic() < deadline:
            for future, result in self._next_done(max(0.0, min(_POLL, deadline - time.monotonic()))):
                entry = self._in_flight.pop(future.key, None)
                if entry is not None and future.status == "finished":
                    yield entry[1], result
                elif entry is not None:
                    self._lost.append(entry[1])

    def _running(self) -> set[str] | Any:
        """The keys the scheduler has on workers (one request); everything if it cannot say."""
        try:
            return {key for keys in self.client.processing().values() for key in keys}  # worker -> keys
        except Exception:
            return self._in_flight.keys()

    def close(self, *, abort: bool = False) -> list[Sequence[Any]]:
        """Cancel what is in flight; return the batches whose results are lost. The workers stay."""
        lost: list[Sequence[Any]] = self._lost
        self._lost = []
        if self._retries:
            lost.append([item for item, _ in self._retries])
            self._retries.clear()
        self._chances.clear()
        futures = []
        for future, items in self._in_flight.values():
            futures.append(future)
            lost.append(items)
        self._in_flight.clear()
        if futures:
            try:
                self.client.cancel(futures)
            except Exception as exc:
                log.debug("cancelling: %s", exc)
        self._release()
        return lost

    def _release(self) -> None:
        client = self.client
        if client is None:
            return
        self.client = None
        try:
            if client.status == "running":
                client.unsubscribe_topic(self._topic)
                client.unregister_worker_plugin(self.name)  # teardown closes the runners
        except Exception as exc:
            log.debug("unregistering the worker plugin: %s", exc)
        if self._own_client:
            client.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(abort=exc[0] is not None)
