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
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Any, Iterable, Iterator

from .discover import DiscoveryStats, Rejected, Source, iter_sources
from .errors import Status
from .manifest import MANIFEST_NAME, ManifestWriter, Record, done_index, format_summary, source_key
from .naming import NameConflictError, NameRegistry, compile_template
from .options import ConvertOptions, RenderOptions, option_flag, split_options
from .schedule import make_executor
from .worker import TMP_DIR, Job, Result, fault_result, initialize, process_batch

__all__ = ["convert", "Report"]

log = logging.getLogger(__name__)

#: Statuses that do not make a run fail (exit code 0): nothing was wrong with the input
#: as far as converting images goes.
OK_STATUSES = frozenset({Status.CONVERTED, Status.SKIPPED, Status.NO_IMAGE})


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
        """The table by status, and the totals."""
        text = format_summary(self.counts, discovered=self.discovered)
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


def _file_system_now(folder: str) -> int:
    """A start time, in the file system's own clock, that splits files written before the run
    from files written by it.

    File times come from the kernel's coarse clock (a tick of a few ms, behind
    ``time.time_ns()``): a file written just before the run and one written just after can
    carry the same time. So a first stamp file is written, then a second one until its time
    is past the first's (one tick, a few ms); everything written before the call is older
    than the returned time, everything written after it is not.
    """
    def stamp_time(n: int) -> int:
        path = os.path.join(folder, f"run-{os.getpid()}-{n}.stamp")
        try:
            with open(path, "wb"):
                pass
            return os.stat(path).st_mtime_ns
        finally:
            os.unlink(path)

    try:
        first = stamp_time(0)
        deadline = time.monotonic() + 1.0
        while True:
            now = stamp_time(1)
            if now > first or time.monotonic() > deadline:
                return now
            time.sleep(0.001)
    except OSError:
        return time.time_ns()


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
    from .encoders import get_encoder

    get_encoder(copts.format)  # InvalidOptionError / MissingDependencyError, before any work

    out = os.path.abspath(os.fspath(out))
    os.makedirs(os.path.join(out, TMP_DIR), exist_ok=True)
    manifest_path = os.path.abspath(copts.manifest) if copts.manifest else os.path.join(out, MANIFEST_NAME)
    report = Report(out=out, manifest=manifest_path)
    given.pop("stdin", None)
    report.resume_command = _resume_command(sources, out, given)
    done = done_index(manifest_path) if copts.resume else set()
    job = Job(
        out=out,
        render=ropts,
        format=copts.format,
        quality=copts.quality,
        name=copts.name,
        on_exists=copts.on_exists,
        frames=copts.frames,
        fsync=copts.fsync,
        run_start_ns=_file_system_now(os.path.join(out, TMP_DIR)),
    )
    if copts.resume:
        # Inputs redone by --resume had no successful record: outputs they left are stale.
        job = Job(**{**{f.name: getattr(job, f.name) for f in fields(Job)}, "on_exists": type(copts.on_exists)("overwrite")})

    stats = DiscoveryStats()
    progress = _Progress(not copts.quiet)
    registry = NameRegistry()
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
                continue
            if done and source_key(item.path, item.size, item.mtime_ns) in done:
                report.counts[Status.SKIPPED] += 1
                continue
            in_flight[id(item)] = item
            yield item
        walking[0] = False

    from . import kernels

    kernels.warmup()  # compile or load once here, so workers only load the disk cache
    executor = make_executor(
        process_batch,
        job,
        workers=copts.workers,
        on_fault=fault_result,
        initializer=initialize,
        timeout=copts.timeout or None,
        memory_limit=copts.memory_limit_bytes(),
    )
    interrupted = False
    old_term = _install_sigterm()
    try:
        with ManifestWriter(manifest_path) as writer:
            try:
                for batch, results in executor.map_batches(_batches(todo(), copts.batch_size)):
                    records = pending[:]
                    pending.clear()
                    for source, result in zip(batch, results):
                        in_flight.pop(id(source), None)
                        records.append(_record(source, result, registry, report))
                    writer.write_batch(records)
                    progress.update(sum(report.counts.values()), report.failed, report.discovered, walking[0])
                if pending:
                    writer.write_batch(pending)
                    pending.clear()
            except KeyboardInterrupt:
                interrupted = True
                executor.close(abort=True)
                records = pending[:]
                for source in in_flight.values():
                    records.append(Record.from_source(source, Status.INTERRUPTED, "the run was interrupted"))
                    report.counts[Status.INTERRUPTED] += 1
                writer.write_batch(records)
            finally:
                executor.close(abort=True)
    finally:
        _restore_sigterm(old_term)
        _clean_tmp(os.path.join(out, TMP_DIR))
    report.elapsed = time.monotonic() - start
    report.interrupted = interrupted
    report.ignored_non_dicom = stats.non_dicom
    progress.update(sum(report.counts.values()), report.failed, report.discovered, False, final=True)
    if interrupted:
        log.warning("interrupted; the manifest is complete up to here. To resume: %s", report.resume_command)
    return report


def _record(source: Source, result: Result, registry: NameRegistry, report: Report) -> Record:
    status, reason, outputs = result.status, result.reason, result.outputs
    if status is Status.CONVERTED and outputs:
        try:
            registry.claim(outputs, path=source.path)
        except NameConflictError as exc:  # same name up to case: both exist on this file system
            status, reason = exc.status, exc.reason
    report.counts[status] += 1
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
        timings={k: round(v, 6) for k, v in result.timings.items() if v},
    )


def _install_sigterm():
    """SIGTERM stops the run like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(old) -> None:
    if old is not None:
        signal.signal(signal.SIGTERM, old)


def _clean_tmp(folder: str) -> None:
    """Remove temporary files left by killed workers, then the folder."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".part"):
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
        os.rmdir(folder)
    except OSError:
        pass
