"""Wiring: discover -> schedule(worker) -> manifest. ``fastdcm.convert`` lives here.

The parent process streams :func:`~fastdcm.discover.iter_sources` into batches, hands them
to an executor of :mod:`fastdcm.schedule` running :func:`fastdcm.worker.process_batch`,
and appends one manifest record per input as batch results come back (one write and
flush per batch, no fsync until the end). Every discovered input gets exactly one status
in the :class:`Report`: ``discovered == sum(counts.values())``, also when the run is
interrupted (inputs not finished are ``interrupted``) and when ``resume`` finds inputs
already done (they count as ``skipped`` and get no new manifest line).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections import Counter
import dataclasses
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Iterable, Iterator

from .discover import DiscoveryStats, Rejected, Source, check_inputs, iter_sources
from .errors import InvalidOptionError, Status, UnsafePathError
from .manifest import DONE_STATUSES, MANIFEST_NAME, ManifestWriter, Previous, Record, format_summary, resume_index
from .naming import NameConflictError, NameRegistry, compile_template, owner_key
from .options import (
    ConvertOptions,
    OnExists,
    RenderOptions,
    explicit_window_problem,
    option_flag,
    output_fingerprint,
    split_options,
)
from .schedule import make_executor
from .worker import Job, Result, fault_result, initialize, process_batch
from .writer import OutputRoot

__all__ = ["convert", "Report"]

log = logging.getLogger(__name__)

#: Statuses that do not make a run fail (exit code 0): nothing was wrong with the input
#: as far as converting images goes.
OK_STATUSES = frozenset({Status.CONVERTED, Status.SKIPPED, Status.NO_IMAGE})
#: Failures the summary names with their reasons (the manifest has them all).
MAX_SHOWN_FAILURES = 5


@dataclass
class Report:
    """What a run did. ``counts`` maps every :class:`Status` that occurred to its count."""

    out: str
    manifest: str
    counts: Counter = field(default_factory=Counter)
    discovered: int = 0
    frames: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    resume_command: str = ""
    manifest_error: str = ""  # the run stopped because the manifest could not be written
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # the first (source, status, reason)
    ignored_non_dicom: int = 0

    @property
    def converted(self) -> int:
        return self.counts.get(Status.CONVERTED, 0)

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in OK_STATUSES)

    @property
    def ok(self) -> bool:
        """True when no input failed and the run was not interrupted."""
        return not self.interrupted and self.failed == 0

    def summary(self) -> str:
        """The table by status, the first failures with their reasons, and the totals."""
        text = format_summary(self.counts, discovered=self.discovered)
        if self.failures:
            shown = len(self.failures)
            more = self.failed - shown
            text += f"\nfirst {'failure' if shown == 1 else f'{shown} failures'}" + (
                f" (of {self.failed}; all in the manifest)" if more > 0 else "") + ":"
            for source, status, reason in self.failures:
                text += f"\n  {status}: {source}: {reason}"
        rate = self.discovered / self.elapsed if self.elapsed > 0 else 0.0
        text += f"\n{self.discovered} inputs, {self.frames} images written in {self.elapsed:.1f} s ({rate:.1f} inputs/s)"
        if self.ignored_non_dicom:
            text += f"; ignored {self.ignored_non_dicom} non-DICOM files met in folders"
        return text


class _Progress:
    """A one-line bar on a terminal (rate, ETA once discovery ended, failures), else a log
    line every 10 s; nothing when quiet."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.interval = 0.2 if self.tty else 10.0

    def update(self, done: int, failed: int, discovered: int, walking: bool, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if walking:
            total, eta = f"{discovered}+", ""
        else:
            left = max(discovered - done, 0)
            total = str(discovered)
            eta = f" ETA {left / rate:.0f} s" if rate > 0 and left else ""
        line = f"{done}/{total} inputs, {rate:.1f}/s, {failed} failed{eta}"
        if self.tty:
            width = 24
            frac = 0.0 if walking or not discovered else min(done / discovered, 1.0)
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            self.stream.write(f"\r[{bar}] {line}\x1b[K" + ("\n" if final else ""))
            self.stream.flush()
        else:
            log.info("progress: %s", line)


def _resume_command(sources: list[str], out: str, given: dict[str, Any]) -> str:
    words = ["fastdcm", "convert", *sources, "-o", out]
    for name, value in given.items():
        if name in ("resume",) or value is None or value is False:
            continue
        flag = option_flag(name)
        if value is True:
            words.append(flag)
        else:
            if isinstance(value, (tuple, list)):
                value = ",".join(str(v) for v in value)
            words += [flag, str(getattr(value, "value", value))]
    words.append("--resume")
    return shlex.join(words)


def _open_manifest(root: OutputRoot, path: str) -> ManifestWriter:
    """The manifest: in the output folder it is opened through the root's fd without following
    a symlink (writer.py); elsewhere (``--manifest``), by its path, not following one at its name."""
    if os.path.dirname(path) == root.path:
        return ManifestWriter(path, file=root.open_append(os.path.basename(path)))
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise InvalidOptionError(f"manifest {path} cannot be opened: {exc.strerror}") from None
    return ManifestWriter(path, file=os.fdopen(fd, "a+b"))


def _batches(items: Iterator[Source], size: int) -> Iterator[list[Source]]:
    """Batches of ``size`` items, after a ramp of 1, 2, 4, ...: a run of a few large files
    (four mammograms) is spread over the workers instead of landing in one batch, and a
    large run reaches full batches after a handful."""
    step = 1
    while True:
        batch = list(islice(items, min(step, size)))
        if not batch:
            return
        yield batch
        step *= 2


def convert(sources: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, **options: Any) -> Report:
    """Convert every DICOM image found in ``sources`` into ``out``; return a :class:`Report`.

    ``sources`` are files, folders, glob patterns, ``@list.txt`` or ``-`` (stdin), and
    DICOMDIR files (see :func:`fastdcm.discover.iter_sources`). Keyword options are the
    fields of :class:`~fastdcm.options.ConvertOptions` (format, quality, name, on_exists,
    frames, workers, batch_size, timeout, memory_limit, resume, manifest, fsync, quiet) and
    of :class:`~fastdcm.options.RenderOptions` (window, voi, invert, depth, ...). Invalid
    options raise ``ValueError``/``TypeError`` before anything is written. Ctrl-C and
    SIGTERM stop the run cleanly: the report has ``interrupted=True`` and the command
    that resumes it.
    """
    given = dict(options)
    stdin = options.pop("stdin", None)
    copts, rest = split_options(ConvertOptions, options)
    ropts, rest = split_options(RenderOptions, rest)
    if rest:
        raise TypeError(f"unknown option(s) for convert: {', '.join(sorted(rest))}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.fspath(s) for s in sources]
    if copts.name is not None:
        compile_template(copts.name)  # ValueError with a clear message, before any work
    from .encoders import check_depth, get_encoder

    check_inputs(sources)  # a missing path, an empty glob: usage errors naming them
    encoder = get_encoder(copts.format)  # InvalidOptionError / MissingDependencyError, before any work
    check_depth(encoder, ropts.depth)
    problem = explicit_window_problem(ropts)
    if problem:
        raise InvalidOptionError(problem)

    out = os.path.abspath(os.fspath(out))
    try:
        root = OutputRoot.create(out)  # the output folder and this run's own temporary folder
    except (OSError, UnsafePathError) as exc:
        reason = exc.reason if isinstance(exc, UnsafePathError) else (exc.strerror or str(exc))
        raise InvalidOptionError(f"output folder {out} cannot be used: {reason}") from None
    manifest_path = os.path.abspath(copts.manifest) if copts.manifest else os.path.join(out, MANIFEST_NAME)
    report = Report(out=out, manifest=manifest_path)
    given.pop("stdin", None)
    report.resume_command = _resume_command(sources, out, given)
    fingerprint = output_fingerprint(copts, ropts)
    previous = resume_index(manifest_path) if copts.resume else {}
    job = Job(
        out=out,
        render=ropts,
        format=copts.format,
        quality=copts.quality,
        name=copts.name,
        on_exists=copts.on_exists,
        frames=copts.frames,
        fsync=copts.fsync,
        run_start_ns=root.start_time(),
        tmp_name=root.tmp_name,
    )
    if copts.resume and copts.on_exists is OnExists.OVERWRITE:
        # A resumed run replaces names one by one, never another input's (see _Resume).
        job = dataclasses.replace(job, on_exists=OnExists.ERROR)

    stats = DiscoveryStats()
    progress = _Progress(not copts.quiet)
    registry = NameRegistry()
    resume = _Resume(previous, registry, root, fingerprint) if copts.resume else None
    start = time.monotonic()
    pending: list[Record] = []  # records of inputs that never reach a worker
    walking = [True]
    in_flight: dict[int, Source] = {}

    def todo() -> Iterator[Source]:
        for item in iter_sources(sources, stdin=stdin, stats=stats):
            report.discovered += 1
            if isinstance(item, Rejected):
                pending.append(Record.from_source(item, item.status, item.reason))
                report.counts[item.status] += 1
                if len(report.failures) < MAX_SHOWN_FAILURES:
                    report.failures.append((item.path, item.status.value, item.reason))
                continue
            if resume is not None:
                item = resume.todo(item)
                if item is None:  # converted before with these options, its outputs there
                    report.counts[Status.SKIPPED] += 1
                    continue
            in_flight[id(item)] = item
            yield item
        walking[0] = False

    from . import kernels

    kernels.warmup()  # compile or load once here, so workers only load the disk cache
    try:
        writer = _open_manifest(root, manifest_path)  # refused (a symlink, unwritable): nothing started
        executor = make_executor(
            process_batch,
            job,
            workers=copts.workers,
            on_fault=fault_result,
            initializer=initialize,
            timeout=copts.timeout or None,
            memory_limit=copts.memory_limit_bytes(),
        )
    except BaseException:
        if "writer" in locals():
            writer.close()
        root.remove_tmp()
        root.close()
        raise
    interrupted = False
    stop = _StopRequest(pool=copts.workers > 0)

    def write(records: list[Record]) -> None:
        try:
            writer.write_batch(records)
        except OSError as exc:  # disk full, I/O error: the run cannot keep its promise, so it stops
            report.manifest_error = f"the manifest {manifest_path} cannot be written: {exc.strerror or exc}"
            raise _ManifestFailed from None

    try:
        with stop, writer:
            try:
                again: list[Source] = []  # resumed inputs whose own stale outputs are in the way

                def record_batch(batch, results, first_pass: bool) -> None:
                    records = pending[:]
                    pending.clear()
                    for source, result in zip(batch, results):
                        in_flight.pop(id(source), None)
                        if first_pass and resume is not None:
                            retry = resume.blocked(source, result)
                            if retry is not None:
                                in_flight[id(retry)] = retry
                                again.append(retry)
                                continue
                        records.append(_record(source, result, registry, report, fingerprint))
                    write(records)
                    progress.update(sum(report.counts.values()), report.failed, report.discovered, walking[0])

                for batch, results in executor.map_batches(
                    _batches(todo(), copts.batch_size), should_stop=lambda: stop.requested
                ):
                    record_batch(batch, results, True)
                if again and not stop.requested:
                    for batch, results in executor.map_batches(
                        _batches(iter(again), copts.batch_size), should_stop=lambda: stop.requested
                    ):
                        record_batch(batch, results, False)
                if stop.requested:
                    raise KeyboardInterrupt("stop requested")
                if pending:
                    write(pending)
                    pending.clear()
            except _ManifestFailed:
                # Nothing more can be recorded: stop the workers; what they finished is on disk
                # without a record (a later --resume replaces it), the rest is not done.
                interrupted = True
                for _ in executor.stop():
                    pass
                executor.close(abort=True)
                report.counts[Status.INTERRUPTED] += len(in_flight) + len(pending)
            except KeyboardInterrupt:
                interrupted = True
                records = pending[:]
                pending.clear()
                # Batches the workers finished before they stopped: their images are complete.
                for batch, results in executor.stop():
                    for source, result in zip(batch, results):
                        in_flight.pop(id(source), None)
                        records.append(_record(source, result, registry, report, fingerprint))
                executor.close(abort=True)
                for source in in_flight.values():
                    records.append(Record.from_source(source, Status.INTERRUPTED, "the run was interrupted"))
                    report.counts[Status.INTERRUPTED] += 1
                try:
                    write(records)
                except _ManifestFailed:
                    pass
            finally:
                executor.close(abort=True)
    finally:
        root.remove_tmp()
        root.close()
    report.elapsed = time.monotonic() - start
    report.interrupted = interrupted
    report.ignored_non_dicom = stats.non_dicom
    progress.update(sum(report.counts.values()), report.failed, report.discovered, False, final=True)
    # The command line prints these once (report.manifest_error / interrupted / resume_command).
    if report.manifest_error:
        log.info("%s; the run stopped. To resume: %s", report.manifest_error, report.resume_command)
    elif interrupted:
        log.info("interrupted; the manifest is complete up to here. To resume: %s", report.resume_command)
    return report


class _ManifestFailed(Exception):
    """A manifest write failed (report.manifest_error says why)."""


class _Resume:
    """``--resume``: which inputs are done, which outputs a redone input may replace.

    An input is skipped when its latest record is converted (or skipped: outputs existed) from
    the same file (size, mtime) with the same options fingerprint and every output it names is
    there. Otherwise it is redone, and may replace the outputs its own earlier record names.
    The name registry starts from the manifest's converted records, so a name another input
    owns is never replaced (a ``name_conflict`` stays one); a name in the way that no record
    claims is a stale output (a crash after the write, before the record): the input is sent
    once more, allowed to replace it."""

    def __init__(self, previous: dict[bytes, Previous], registry: NameRegistry, root: OutputRoot, fingerprint: str) -> None:
        self.previous = previous
        self.registry = registry
        self.root = root
        self.fingerprint = fingerprint
        for owner, prev in previous.items():
            if prev.status in DONE_STATUSES and prev.outputs:
                try:
                    registry.claim(prev.outputs, owner=owner)
                except NameConflictError:
                    pass  # two old records claim one name: the first keeps it

    def todo(self, source: Source) -> Source | None:
        prev = self.previous.get(owner_key(source.path))
        if prev is None:
            return source
        if prev.done(source.size, source.mtime_ns, self.fingerprint) and all(self.root.exists(n) for n in prev.outputs):
            return None
        return dataclasses.replace(source, replace=prev.outputs)

    def blocked(self, source: Source, result: Result) -> Source | None:
        """The source to send again with leave to replace its stale outputs, or None (record
        the result as it is; a name owned by another input's record makes it a name_conflict)."""
        if not result.blocked or result.status not in (Status.WRITE_ERROR, Status.NAME_CONFLICT):
            return None
        mine = owner_key(source.path)
        for name in result.blocked:
            owner = self.registry.owner(name)
            if name in self.registry and owner != mine:
                result.status = Status.NAME_CONFLICT
                result.reason = f"output {name} belongs to another input (its converted record in the manifest)"
                return None
        return dataclasses.replace(source, replace=tuple(source.replace) + tuple(result.blocked))


def _record(source: Source, result: Result, registry: NameRegistry, report: Report, fingerprint: str | None = None) -> Record:
    status, reason, outputs = result.status, result.reason, result.outputs
    if status is Status.CONVERTED and outputs:
        try:
            registry.claim(outputs, path=source.path, owner=owner_key(source.path))
        except NameConflictError as exc:  # same name up to case: both exist on this file system
            status, reason = exc.status, exc.reason
    report.counts[status] += 1
    if status not in OK_STATUSES and len(report.failures) < MAX_SHOWN_FAILURES:
        report.failures.append((source.path, status.value, reason))
    if status is Status.CONVERTED:
        report.frames += result.frames or 0
    return Record.from_source(
        source,
        status,
        reason,
        outputs=outputs,
        frames=result.frames,
        transfer_syntax=result.transfer_syntax,
        voi=result.voi,
        decoder=result.decoder,
        shape=result.shape,
        reduce=result.reduce,
        fingerprint=fingerprint if status is Status.CONVERTED or status is Status.SKIPPED else None,
        timings={k: round(v, 6) for k, v in result.timings.items() if v},
    )


class _StopRequest:
    """Ctrl-C and SIGTERM stop the run (main thread only; elsewhere the caller's handlers stay).

    With worker processes the handler only records the request: the scheduling loop sees it
    within 0.1 s and stops at a point where no result is half recorded (a KeyboardInterrupt
    raised between receiving a batch's results and writing its records lost them, leaving
    complete images whose inputs were recorded ``interrupted``). A second Ctrl-C raises at once.
    In this process (``workers=0``) the request raises KeyboardInterrupt at once: the batch
    being converted unwinds and removes what it wrote."""

    def __init__(self, pool: bool) -> None:
        self.pool = pool
        self.requested = False
        self.old: dict[int, Any] = {}

    def handler(self, signum, frame) -> None:
        if self.pool and not self.requested:
            self.requested = True
            return
        self.requested = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


