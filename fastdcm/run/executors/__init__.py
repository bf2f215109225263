"""Executors: run batches of small items where the work happens, and bring the results back.

The unit of work is a *batch*: a list of small picklable items (:class:`~fastdcm.run.discover.Source`).
An executor is given a *factory* and a picklable *context*; it calls ``factory(context, worker)``
once in every worker it starts (once in this process for :class:`SerialExecutor`) and gets a
*runner*, the object that holds that worker's state (open directory fds, encoders, caches),
then calls ``runner.run_batch(items, progress, retry)`` for each batch. A runner never raises
for an item: it returns one small result per item, in order.

- ``progress(i)`` is called by the runner before it starts item ``i`` (the pool uses it to
  know which item a dead or hung worker was on);
- ``retry`` is True when the items run again, each alone, after their batch's worker died:
  an item may then find outputs its own earlier attempt wrote.

The executor decides how a run is stopped: ``worker.stop_signal`` names the signal that stops
a worker process (SIGTERM in the pool), which the runner holds off while it commits an output;
None where nothing is delivered to the runner's process (this process, a cluster).

A new executor (a cluster, threads) implements :class:`Executor` and is added to
:func:`make_executor`; the pipeline does not change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from ...errors import Status

__all__ = ["Executor", "Runner", "WorkerInfo", "Fault", "make_executor", "worker_label"]


@dataclass(frozen=True)
class WorkerInfo:
    """What a runner is told about the worker it runs in."""

    slot: int = 0  # 0 .. workers-1
    own_process: bool = False  # a process of its own (the runner may set process-wide state)
    stop_signal: int | None = None  # the signal that stops it (held off while an output is committed)
    tag: str = ""  # with several runners in a process, or processes on several machines: tells them apart in file names


@dataclass(frozen=True)
class Fault:
    """What an executor knows about an item whose result was lost: its status and why."""

    status: Status
    reason: str


class Runner(Protocol):
    """The per-worker object an executor's factory returns."""

    def run_batch(self, items: Sequence[Any], progress: Callable[[int], None], retry: bool) -> list: ...


def worker_label(tag: str = "") -> str:
    """This process in the names of the files its runner makes (shards, thumbnail sheets): its pid,
    and the runner's :attr:`WorkerInfo.tag` where runners share a process or pids repeat."""
    return f"{os.getpid()}-{tag}" if tag else str(os.getpid())


Factory = Callable[[Any, WorkerInfo], Runner]
FaultFn = Callable[[Any, Fault], Any]


class Executor(Protocol):
    """Runs batches and yields ``(items, results)`` as they finish."""

    def map_batches(
        self, batches: Iterable[Sequence[Any]], should_stop: Callable[[], bool] | None = None
    ) -> Iterator[tuple[Sequence[Any], list]]:
        """Pull batches lazily; yield each with its results (in any order). ``should_stop`` is
        asked at least every 0.1 s; once it says True this returns (what is in flight is for
        :meth:`stop`)."""

    def stop(self, grace: float = 5.0) -> Iterator[tuple[Sequence[Any], list]]:
        """The run is interrupted: stop the workers, yield the batches they had finished."""

    def close(self, *, abort: bool = False) -> list[Sequence[Any]]:
        """Release the workers; return the batches whose results are lost."""

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: object) -> None: ...


def make_executor(factory: Factory, context: Any, *, workers: int, cluster: Any = None, **kwargs: Any) -> Executor:
    """``cluster`` (a Dask scheduler address or ``distributed.Client``): a
    :class:`~.cluster.DaskExecutor` (``on_fault``, ``timeout``, ``depth``); else ``workers=0``: a
    :class:`~.serial.SerialExecutor` (this process); otherwise a :class:`~.process.ProcessExecutor`
    with that many worker processes (``on_fault``, ``timeout``, ``memory_limit``,
    ``start_method``, ``depth``: see its docstring)."""
    if cluster is not None:
        from .cluster import DaskExecutor

        kwargs.pop("memory_limit", None)  # the workers' own --memory-limit holds on a cluster
        return DaskExecutor(factory, context, cluster=cluster, **kwargs)
    if workers == 0:
        from .serial import SerialExecutor

        return SerialExecutor(factory, context)
    from .process import ProcessExecutor

    return ProcessExecutor(factory, context, workers=workers, **kwargs)
