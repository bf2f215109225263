"""The default image sink: every image a file under OUT, written by the atomic writer.

Names come from the pipeline (``naming.py``); each is written through :mod:`..write`
(directory fds from the output root, no symlink followed, a file appears complete or not at
all). ``--on-exists`` decides what a name in the way means:

- ``error``: ``write_error`` if the file was there before the run, ``name_conflict`` if another
  input of this run wrote it (its modification time is after the run's start);
- ``skip``: the input is ``skipped`` when all its outputs exist;
- ``overwrite``: files from before the run are replaced, never one this run wrote.

A retried input (its worker died) may replace what its own earlier attempt wrote, and a resumed
input the outputs its own earlier record names (``source.replace``).
"""

from __future__ import annotations

from typing import Any, Sequence

from ...errors import Status
from ...options import OnExists
from ..storage import open_root
from ..write import Exists
from . import Blocked

__all__ = ["FilesSink"]

_HINT = " (use --on-exists skip or overwrite, or --resume)"


class FilesSink:
    """Image files under the output root; one per worker, holding the root's open fds."""

    def __init__(self, out: str, tmp_name: str | None, *, on_exists: OnExists, fsync: bool, run_start_ns: int,
                 storage_options: dict | None = None, fresh: bool = False) -> None:
        self.root = open_root(out, tmp_name, storage_options)  # a folder, or a prefix on an object store
        self.on_exists = on_exists
        self.fsync = fsync
        self.run_start_ns = run_start_ns
        # An output folder that held nothing when the run began: a name in the way can only be another
        # input's of this run (or a concurrent run's), found where the write's link refuses it (it never
        # replaces) with the same status and reason; no existence check before each input (20 us an input).
        self.fresh = fresh
        self.pending: list[str] = []  # what the input in progress put

    @classmethod
    def for_job(cls, job: Any) -> "FilesSink":
        return cls(job.out, job.tmp_name, on_exists=job.on_exists, fsync=job.fsync, run_start_ns=job.run_start_ns,
                   storage_options=job.storage_options, fresh=job.fresh)

    def _who_wrote(self, name: str) -> str:
        """Why ``name`` is in the way: written during this run means another input of this run
        claimed the same name (a name conflict); older means it was there before the run."""
        mtime = self.root.mtime_ns(name)
        if mtime is not None and mtime >= self.run_start_ns:
            return "written by another input of this run"
        return "exists"

    def _blocked(self, name: str, why: str) -> Blocked:
        if "another input" in why:
            return Blocked(Status.NAME_CONFLICT, f"output {name} {why}", [name])
        return Blocked(Status.WRITE_ERROR, f"output {name} {why}{_HINT}", [name])

    def begin(self, source: Any, names: Sequence[str], retry: bool) -> None:
        self.pending.clear()
        self.root.hold()  # one walk to the input's folder for its checks and frames (released at the end)
        if retry or self.fresh:
            return
        if self.on_exists is OnExists.SKIP and all(self.root.exists(name) for name in names):
            raise Blocked(Status.SKIPPED, "outputs exist")
        if self.on_exists is OnExists.ERROR:
            # Names in the way, found before any frame is rendered (a resumed input may replace
            # its own stale outputs, never another input's). An object store that creates names
            # only if free finds them at the write: one request less per image (a HEAD: a sixth of
            # what an image costs on S3), unless the input is resumed (its stale names all at once).
            own = getattr(source, "replace", ())
            if not own and getattr(self.root, "creates_if_free", False):
                return
            blocked = [name for name in names if name not in own and self.root.exists(name)]
            if blocked:
                exc = self._blocked(blocked[0], self._who_wrote(blocked[0]))
                exc.names = blocked
                raise exc

    def put(self, source: Any, name: str, data: bytes, retry: bool) -> None:
        replace = self.on_exists is OnExists.OVERWRITE or retry or name in getattr(source, "replace", ())
        try:
            # A retry replaces its own earlier attempt; an overwrite replaces only files from before
            # this run (a newer one belongs to another input of this run: a name conflict).
            self.root.write(
                name, data, replace=replace, fsync=self.fsync, replace_older_than=None if retry else self.run_start_ns
            )
        except Exists:
            why = self._who_wrote(name)
            if self.on_exists is OnExists.SKIP and why == "exists":
                raise Blocked(Status.SKIPPED, f"output {name} exists") from None
            raise self._blocked(name, why) from None
        self.pending.append(name)

    def accept(self, source: Any, result: Any) -> None:
        self.pending.clear()
        self.root.release()

    def discard(self) -> None:
        self.withdraw(self.pending)
        self.pending.clear()
        self.root.release()

    def withdraw(self, names: Sequence[str]) -> None:
        for name in list(names):
            self.root.remove(name)

    def end_batch(self, results: Sequence[Any]) -> None:
        """Nothing to do: every file appeared when it was put."""

    def remove(self, name: str) -> None:
        self.root.remove(name)

    def close(self) -> None:
        self.root.close()
