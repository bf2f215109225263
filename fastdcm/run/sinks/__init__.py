"""Sinks: where the results of a run go.

Two kinds, one per side of the process boundary (image bytes never cross it, records do):

- an :class:`ImageSink` runs in the worker, inside the pipeline: it stores the encoded images
  of one input (files under OUT: :mod:`.files`; a batch's images in one shard file: :mod:`.shards`). It is fed
  one input at a time: ``begin`` (the names, before any frame is rendered), ``put`` per image,
  then ``accept`` (the input is converted: its images are its outputs) or ``discard`` (it
  failed or was interrupted: what it put is removed). ``withdraw`` removes outputs of accepted
  inputs whose results will never reach the parent (a worker stopped before sending them).
- a :class:`Sink` runs in the parent: it is fed every input's final result (converted, failed,
  rejected by discovery, interrupted), as each batch comes back, and ``flush``-ed after each
  batch (the manifest: :mod:`.manifest`; a metadata table is another module). A sink that cannot
  keep a record raises :class:`SinkFailed`: the run stops cleanly with that reason.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from ...errors import Status

__all__ = ["Sink", "ImageSink", "Blocked", "SinkFailed"]


class SinkFailed(Exception):
    """A sink of the parent cannot write (disk full, I/O error): the run stops with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Blocked(Exception):
    """An image sink refuses a name that is in the way (status ``write_error`` or
    ``name_conflict``; ``skipped`` when the input's outputs exist and are to be kept)."""

    def __init__(self, status: Status, reason: str, names: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.status, self.reason, self.names = status, reason, list(names)


class Sink(Protocol):
    """A destination for the results of a run, in the parent process."""

    def accept(self, source: Any, result: Any) -> None:
        """One input's final result (``source`` is a Source or a discovery Rejected)."""

    def flush(self) -> None:
        """End of a batch: make what was accepted durable enough (may raise SinkFailed)."""

    def close(self) -> None: ...


class ImageSink(Protocol):
    """Where a worker puts the encoded images of each input."""

    def begin(self, source: Any, names: Sequence[str], retry: bool) -> None:
        """An input is about to be rendered into ``names``; raise Blocked to refuse it now."""

    def put(self, source: Any, name: str, data: bytes, retry: bool) -> None:
        """Store one image atomically (it appears complete or not at all); may raise Blocked."""

    def accept(self, source: Any, result: Any) -> None:
        """The input converted: what it put is its outputs."""

    def discard(self) -> None:
        """The input failed or was interrupted: remove what it put."""

    def withdraw(self, names: Sequence[str]) -> None:
        """Remove accepted outputs whose results will never be recorded."""

    def end_batch(self, results: Sequence[Any]) -> None:
        """The batch is done, its results about to be sent: make what it stored final (a shard
        is published and named in each converted result; if it cannot be, they become
        ``write_error``)."""

    def remove(self, name: str) -> None:
        """Remove a file ``end_batch`` published (the batch was stopped before its results went)."""

    def close(self) -> None: ...
