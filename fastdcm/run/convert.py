"""The wiring: discover -> executor(pipeline) -> sinks. ``fastdcm.convert`` lives here.

The parent process streams :func:`~fastdcm.run.discover.iter_sources` into batches, hands them
to an executor (:mod:`.executors`) whose workers each run a :class:`~fastdcm.run.pipeline.Pipeline`,
and feeds every input's final result to the parent's sinks (the manifest, :mod:`.sinks.manifest`)
and to the :class:`~fastdcm.run.progress.Report`, one flush per batch. Every discovered input gets
exactly one status in the report: ``discovered == sum(counts.values())``, also when the run is
interrupted (inputs not finished are ``interrupted``) and when ``resume`` finds inputs already
done (they count as ``skipped`` and get no new manifest line).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shlex
import signal
import threading
import time
from contextlib import contextmanager
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import FastDcmError, InvalidOptionError, Status, UnsafePathError
from ..options import (
    Container,
    ConvertOptions,
    OnExists,
    RenderOptions,
    explicit_window_problem,
    fit_problem,
    option_flag,
    output_fingerprint,
    split_options,
)
from .discover import DiscoveryStats, Rejected, Source, check_inputs, iter_sources
from .executors import make_executor
from .naming import NameConflictError, NameRegistry, compile_template, owner_key
from .pipeline import Job, Pipeline, Result, fault_result, warm
from .progress import Progress, Report
from .sinks import Sink, SinkFailed
from .privacy import NAME_GUARD, Pseudonymizer, check_fields, load_key
from .tags import parse_tags
from .sinks.manifest import DONE_STATUSES, MANIFEST_NAME, ManifestSink, ManifestWriter, Previous, resume_index
from .storage import create_root, is_url, join, parse_storage_options
from .write import OutputRoot

__all__ = ["convert", "Report"]

log = logging.getLogger(__name__)


def _resume_command(sources: list[str], out: str, given: dict[str, Any]) -> str:
    words = ["fastdcm", "convert", *sources, "-o", out]
    for name, value in given.items():
        if name in ("resume",) or value is None or value is False:
            continue
        if name == "cluster" and not isinstance(value, str):  # a distributed.Client: its address
            value = getattr(getattr(value, "scheduler", None), "address", None)
            if not value:
                continue
        flag = option_flag(name)
        if value is True:
            words.append(flag)
        else:
            words += [flag, _flag_text(name, value)]
    words.append("--resume")
    return shlex.join(words)


def _flag_text(name: str, value: Any) -> str:
    """An option's value as its flag takes it: a Python caller gives tuples and lists where the
    command line takes text (``size=(64, 32)`` is ``--size 64x32``, a window ``(40, 80)`` in
    ``windows`` is ``40/80``, ``decoder={"rle": "pydicom"}`` is ``--decoder rle=pydicom``)."""
    def text(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else str(getattr(x, "value", x))

    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, (tuple, list)):
        return text(value)
    if name in ("size", "max_size") and len(value) == 2:
        return "x".join(map(text, value))
    if name == "window" and len(value) == 2:
        return ",".join(map(text, value))
    sep = "=" if name == "decoder" else "/"  # (a decoder's family=backend; a stack's CENTER/WIDTH)
    return ",".join(sep.join(map(text, v)) if isinstance(v, (tuple, list)) else text(v) for v in value)


def _open_manifest(root: OutputRoot, path: str) -> ManifestWriter:
    """The manifest: in the output folder it is opened through the root's fd without following
    a symlink (writer.py); elsewhere (``--manifest``), by its path, not following one at its name."""
    if os.path.dirname(path) == root.path:
        return ManifestWriter(path, file=root.open_append(os.path.basename(path)))
    if is_url(path):
        raise InvalidOptionError(f"manifest {path}: on an object store it must be in the output prefix {root.path}")
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise InvalidOptionError(f"manifest {path} cannot be opened: {exc.strerror}") from None
    return ManifestWriter(path, file=os.fdopen(fd, "a+b"))


#: Inputs per batch on a cluster when --batch-size is not given (a local worker's is 16).
CLUSTER_BATCH_SIZE = 64


#: The first and the largest window of inputs :func:`_largest_first` orders, and how long a window
#: may take to fill and the next still be larger (seconds).
FIRST_WINDOW, LARGEST_WINDOW, WINDOW_FILL = 16, 256, 0.05


def _largest_first(items: Iterator[Source], clock: Callable[[], float] = time.monotonic) -> Iterator[Source]:
    """``items`` in windows of 16, 32, ... up to 256 as discovered, the largest files of each
    window first (ties and sizes not known keep their order). A window that took longer than
    :data:`WINDOW_FILL` to fill (paths fed slowly on stdin, a slow network file system) makes the
    next one 16 again, so inputs that come slowly are not held back for 256 to gather. A file's
    size stands for its work well enough to keep a heavy file from starting last: the mixed
    archive's two JPEG 2000 CR files (4.3 MB, 0.29 s each) and its ultrasound cine (6.1 MB) ran
    at the end, alone on one worker for the last ~0.4 s while the other had finished (1.86
    against 1.45 s). Ordered so, ``fastdcm convert`` of that archive (JPEG, 2 workers, a fresh
    process each run, 6 alternated runs, medians) took 2.27 against 2.54 s; 1,000 CT slices 1.03
    against 1.16 s (noise: they are all one size). The first window is small so that the workers
    start after a few files' discovery, not 256's."""
    width = FIRST_WINDOW
    while True:
        start = clock()
        window = list(islice(items, width))
        if not window:
            return
        slow = clock() - start > WINDOW_FILL  # (the time to find them, not the time to convert them)
        window.sort(key=lambda source: -(source.size or 0))
        yield from window
        width = FIRST_WINDOW if slow else min(2 * width, LARGEST_WINDOW)


def _batches(items: Iterator[Source], size: int, ramp: bool = True) -> Iterator[list[Source]]:
    """Batches of ``size`` items, after a ramp of 1, 2, 4, ...: a run of a few large files
    (four mammograms) is spread over the workers instead of landing in one batch, and a
    large run reaches full batches after a handful. Shards (batches too) start full: no ramp."""
    step = 1 if ramp else size
    while True:
        batch = list(islice(items, min(step, size)))
        if not batch:
            return
        yield batch
        step *= 2


def convert(sources: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, **options: Any) -> Report:
    """Convert every DICOM image found in ``sources`` into ``out``; return a :class:`Report`.

    ``sources`` are files, folders, glob patterns, ``@list.txt`` or ``-`` (stdin), and
    DICOMDIR files (see :func:`fastdcm.run.discover.iter_sources`). Keyword options are the
    fields of :class:`~fastdcm.options.ConvertOptions` (format, quality, name, on_exists,
    frames, workers, batch_size, timeout, memory_limit, resume, manifest, fsync, quiet) and
    of :class:`~fastdcm.options.RenderOptions` (window, voi, invert, depth, ...). Invalid
    options raise ``ValueError``/``TypeError`` before anything is written. Ctrl-C and
    SIGTERM stop the run cleanly: the report has ``interrupted=True`` and the command
    that resumes it.
    """
    with _collector_set_for_the_run():
        return _convert(sources, out, options)


#: The young generation's threshold during a run (Python's default is 700 allocations): a run with
#: --metadata and --gallery makes ~40 container objects an input in the parent and the worker (rows,
#: records, dicts of values), so at 700 the collector ran every ~50 inputs, 0.3 ms each: 5.8-6.3 -> 1.4-2.0 us
#: an input at 5,000 and none left at 20,000 (1,000 CT slices in one process, gc.callbacks). At 10,000
#: the young objects between two passes hold a few MB at most.
RUN_GEN0_THRESHOLD = 10_000


@contextmanager
def _collector_set_for_the_run() -> Iterator[None]:
    """The objects that exist when a run starts (the imported modules: numba's, pydicom's,
    pyarrow's, some 130,000 of them) kept out of the garbage collector's full passes for the run.
    A run keeps a record per input for the gallery and the table's buffered rows; once those
    outgrow a quarter of the heap, Python's full collection walks every object, the modules'
    too: 59 ms in the parent of a 2,000-file run with --gallery and --metadata (3 % of its wall
    time, measured with gc.callbacks), none without them. Forked workers inherit the frozen
    heap, so their collections skip it and leave its pages shared (as the gc module's docs
    advise for fork). Cycles made during the run are collected as usual, the young ones after
    :data:`RUN_GEN0_THRESHOLD` allocations (the workers inherit that too); the heap is thawed and
    the thresholds are the caller's again when the run ends. A caller that froze its heap itself
    keeps it as it is."""
    thresholds = gc.get_threshold()
    if thresholds[0]:  # (0: the caller turned automatic collection off)
        gc.set_threshold(max(thresholds[0], RUN_GEN0_THRESHOLD), *thresholds[1:])
    try:
        if gc.get_freeze_count():
            yield
            return
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
    finally:
        gc.set_threshold(*thresholds)


def _convert(sources: Iterable[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, options: dict[str, Any]) -> Report:
    given = dict(options)
    stdin = options.pop("stdin", None)
    copts, rest = split_options(ConvertOptions, options)
    ropts, rest = split_options(RenderOptions, rest)
    if rest:
        raise TypeError(f"unknown option(s) for convert: {', '.join(sorted(rest))}")
    problem = fit_problem(given)
    if problem:
        raise InvalidOptionError(problem)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.fspath(s) for s in sources]
    pseudonymizer = Pseudonymizer(load_key(copts.pseudonymize)) if copts.pseudonymize else None
    if copts.name is not None:
        template = compile_template(copts.name)  # ValueError with a clear message, before any work
        check_fields(list(template.keywords), "--name", allow_phi=copts.allow_phi, pseudonymize=pseudonymizer is not None)
    from ..encoders import check_depth, get_encoder

    if copts.cluster is not None and "memory_limit" in given and str(copts.memory_limit).lower() != "auto":
        raise InvalidOptionError(
            "--memory-limit limits local worker processes; on a cluster it is the Dask workers' own "
            "(dask worker --memory-limit): leave it out with --cluster"
        )
    storage_options = parse_storage_options(copts.storage_options)  # InvalidOptionError, the text never echoed
    remote = is_url(os.fspath(out))
    if remote and copts.gallery:
        raise InvalidOptionError(
            "--gallery writes a page to open from a disk: not with an object-store output "
            "(copy the outputs and run fastdcm gallery on them)"
        )
    if copts.manifest and is_url(copts.manifest) and not remote:
        raise InvalidOptionError("--manifest on an object store needs the output there too")
    check_inputs(sources, storage_options)  # a missing path, an empty glob, an empty prefix: usage errors naming them
    encoder = get_encoder(copts.format)  # InvalidOptionError / MissingDependencyError, before any work
    check_depth(encoder, ropts.depth)
    problem = explicit_window_problem(ropts)
    if problem:
        raise InvalidOptionError(problem)
    out = os.fspath(out).rstrip("/") if remote else os.path.abspath(os.fspath(out))
    tags = table_name = None
    if copts.metadata is not None:
        from .sinks.table import _pa, check_table_name

        table_name = check_table_name(out, copts.metadata)
        # InvalidOptionError naming a bad or identifying item
        tags = parse_tags(copts.tags, allow_phi=copts.allow_phi, pseudonymize=pseudonymizer is not None)
        _pa()  # MissingDependencyError naming pyarrow's pip install, before any work
    elif copts.tags is not None:
        raise InvalidOptionError("--tags chooses the columns of the metadata table: add --metadata FILE")
    gallery_tags = None
    if copts.gallery:
        from ..gallery import GALLERY_TAGS

        gallery_tags = parse_tags(list(GALLERY_TAGS), pseudonymize=pseudonymizer is not None)

    sharded = copts.container is not Container.FILES
    if copts.container is Container.PARQUET:
        from .sinks.table import _pa

        _pa()  # MissingDependencyError naming pyarrow's pip install, before any work
    try:
        root = create_root(out, storage_options)  # the output folder (or prefix) and this run's own temporary folder
    except (OSError, UnsafePathError) as exc:
        reason = exc.reason if isinstance(exc, UnsafePathError) else (exc.strerror or str(exc))
        raise InvalidOptionError(f"output folder {out} cannot be used: {reason}") from None
    if sharded and not copts.resume:
        from .sinks.shards import SHARDS, existing_shards

        earlier = existing_shards(root)
        if earlier:
            root.remove_tmp()
            root.close()
            raise InvalidOptionError(
                f"{os.path.join(out, SHARDS)} holds {len(earlier)} shard(s) of an earlier run: add --resume to "
                "convert what they do not hold, or choose another output folder"
            )
    if copts.manifest:
        manifest_path = copts.manifest.rstrip("/") if is_url(copts.manifest) else os.path.abspath(copts.manifest)
    else:
        manifest_path = join(out, MANIFEST_NAME) if remote else os.path.join(out, MANIFEST_NAME)
    report = Report(out=out, manifest=manifest_path)
    given.pop("stdin", None)
    report.phi_allowed = copts.allow_phi
    if copts.pseudonymize and copts.pseudonymize != "env" and not copts.pseudonymize.startswith("@"):
        given["pseudonymize"] = "YOUR-KEY"  # the key itself is never printed
    if copts.storage_options is not None and not str(copts.storage_options).startswith("@"):
        given["storage_options"] = "YOUR-STORAGE-OPTIONS"  # they may hold credentials: never printed
    report.resume_command = _resume_command(sources, out, given)
    fingerprint = output_fingerprint(copts, ropts)
    if pseudonymizer is not None:  # other keys give other names: another fingerprint
        fingerprint = f"{fingerprint}-{pseudonymizer.fingerprint()}"
    try:
        previous = resume_index(manifest_path, storage_options) if copts.resume else {}
    except OSError as exc:
        root.remove_tmp()
        root.close()
        raise InvalidOptionError(f"the manifest {manifest_path} cannot be read for --resume: {exc.strerror or exc}") from None
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
        tags=tags,
        pseudonymizer=pseudonymizer,
        burned_in=copts.burned_in,
        gallery_tags=gallery_tags,
        name_guard=None if copts.allow_phi else parse_tags(list(NAME_GUARD), allow_phi=True),
        container=copts.container.value,
        storage_options=storage_options,
        fresh=bool(getattr(root, "was_empty", False)),
    )
    if copts.resume and copts.on_exists is OnExists.OVERWRITE:
        # A resumed run replaces names one by one, never another input's (see _Resume).
        job = dataclasses.replace(job, on_exists=OnExists.ERROR)

    stats = DiscoveryStats()
    progress = Progress(not copts.quiet)
    registry = NameRegistry()
    resume = _Resume(previous, registry, root, fingerprint) if copts.resume else None
    table = None
    start = time.monotonic()
    walking = [True]
    in_flight: dict[int, Source] = {}
    sinks: list[Sink] = []

    def finish(source: Any, result: Result) -> None:
        """One input's final result: to the report and to every sink."""
        report.add(source.path, result.status, result.reason, result.frames)
        if result.burned_in:
            report.add_burned_in(source.path)
        for sink in sinks:
            sink.accept(source, result)

    def flush() -> None:
        for sink in sinks:
            sink.flush()

    def todo() -> Iterator[Source]:
        for item in iter_sources(sources, stdin=stdin, stats=stats, null=copts.null, storage_options=storage_options,
                                 exclude=() if remote else (out,)):  # (an output folder inside an input: not walked)
            report.discovered += 1
            if isinstance(item, Rejected):
                finish(item, Result(status=item.status, reason=item.reason))
                continue
            if resume is not None:
                item = resume.todo(item)
                if item is None:  # converted before with these options, its outputs there
                    report.add("", Status.SKIPPED)
                    continue
            in_flight[id(item)] = item
            yield item
        walking[0] = False

    if copts.cluster is None:  # (a cluster's workers load the kernels themselves: its worker plugin)
        from .. import kernels

        kernels.warmup()  # compile or load once here, so workers only load the disk cache
        if copts.workers > 0:
            from .executors.process import default_start_method

            if default_start_method() == "fork":  # (forked workers have what this process loaded)
                warm(job)
    try:
        # --gallery: the manifest sink keeps what the page needs of its records, and the page
        # is built from them, not from the file parsed back (a serial tail of the run)
        manifest_sink = ManifestSink(_open_manifest(root, manifest_path), fingerprint, keep=bool(copts.gallery))
        sinks.append(manifest_sink)  # refused: nothing started
        if table_name is not None:
            from .sinks.table import MetadataSink

            table = MetadataSink(root, table_name, tags)
            sinks.append(table)
            if resume is not None:
                resume.has_rows = table.has_rows
        executor = make_executor(
            Pipeline,
            job,
            workers=copts.workers,
            cluster=copts.cluster,
            on_fault=fault_result,
            timeout=copts.timeout or None,
            memory_limit=copts.memory_limit_bytes(),
        )
    except BaseException:
        _close_sinks(sinks, report)
        root.remove_tmp()
        root.close()
        raise
    interrupted = False
    ran = False  # the run went to its end or was stopped cleanly (not an unexpected exception)
    stop = _StopRequest(pool=copts.workers > 0 or copts.cluster is not None)

    def record_batch(batch: Sequence[Source], results: list[Result], again: list[Source] | None) -> None:
        for source, result in zip(batch, results):
            in_flight.pop(id(source), None)
            if again is not None and resume is not None:
                retry = resume.blocked(source, result)
                if retry is not None:  # its own stale outputs in the way: once more, leave to replace them
                    in_flight[id(retry)] = retry
                    again.append(retry)
                    continue
            finish(source, _settle(source, result, registry))
        flush()
        progress.update(report, walking[0])

    try:
        with stop:
            try:
                again: list[Source] = []
                batch_size = copts.shard_size if sharded else copts.batch_size  # a shard is a batch
                if copts.cluster is not None and not sharded and "batch_size" not in given:
                    # A task costs the scheduler, the driver and the worker ~10 ms of CPU between
                    # them: 4,000 CT files on 2 local workers took 8-9 s in batches of 16, 6.2-6.5 s
                    # in batches of 64 (the pool: 5.8-6.5 s); 128 was no better.
                    batch_size = CLUSTER_BATCH_SIZE
                for batch, results in executor.map_batches(
                    # (a shard's inputs are its batch, in the order found: sharded runs are not reordered)
                    _batches(todo() if sharded else _largest_first(todo()), batch_size, ramp=not sharded),
                    should_stop=lambda: stop.requested,
                ):
                    record_batch(batch, results, again)
                if again and not stop.requested:
                    for batch, results in executor.map_batches(
                        _batches(iter(again), batch_size, ramp=not sharded), should_stop=lambda: stop.requested
                    ):
                        record_batch(batch, results, None)
                if stop.requested:
                    raise KeyboardInterrupt("stop requested")
                flush()
            except SinkFailed as exc:
                # Nothing more can be recorded: stop the workers; what they finished is on disk
                # without a record (a later --resume replaces it), the rest is not done.
                report.manifest_error = exc.reason
                interrupted = True
                for _ in executor.stop():
                    pass
                executor.close(abort=True)
                for source in in_flight.values():
                    report.add(source.path, Status.INTERRUPTED)
            except KeyboardInterrupt:
                interrupted = True
                # Batches the workers finished before they stopped: their images are complete.
                for batch, results in executor.stop():
                    for source, result in zip(batch, results):
                        in_flight.pop(id(source), None)
                        finish(source, _settle(source, result, registry))
                executor.close(abort=True)
                for source in in_flight.values():
                    finish(source, Result(status=Status.INTERRUPTED, reason="the run was interrupted"))
                try:
                    flush()
                except SinkFailed as exc:
                    report.manifest_error = exc.reason
            finally:
                executor.close(abort=True)
        ran = True
    finally:
        # The table's end (its Parquet coded by pyarrow, which lets go of the GIL) runs in a thread
        # beside the gallery's page build: both are the run's serial tail, its workers idle.
        beside = [table] if table is not None and copts.gallery and ran else []
        _close_sinks([sink for sink in sinks if sink not in beside], report)
        try:
            if beside:
                table.settle()  # (the rows' conversion holds the GIL: here, before the thread starts)
            with _closing_beside(beside, report):
                if copts.gallery and ran:
                    report.gallery = _gallery(out, manifest_path, root, job.run_start_ns, manifest_sink.latest())
        finally:
            root.remove_tmp()
            root.close()
    report.elapsed = time.monotonic() - start
    report.interrupted = interrupted
    report.ignored_non_dicom = stats.non_dicom
    progress.update(report, False, final=True)
    # The command line prints these once (report.manifest_error / interrupted / resume_command).
    if report.manifest_error:
        log.info("%s; the run stopped. To resume: %s", report.manifest_error, report.resume_command)
    elif interrupted:
        log.info("interrupted; the manifest is complete up to here. To resume: %s", report.resume_command)
    return report


def _gallery(out: str, manifest: str, root: OutputRoot, run_start_ns: int, records: dict | None) -> str:
    """``--gallery``: the page built from the manifest just written (``records``: its latest
    records, as the manifest sink kept them; None: read the file); what it shows, or why not.
    A gallery that cannot be written costs no input its status (``fastdcm gallery OUT`` again)."""
    from ..gallery import build_gallery

    try:
        from .thumbs import sheet_prefix

        return build_gallery(
            out, manifest=manifest, root=root, run_prefix=sheet_prefix(run_start_ns), records=records
        ).summary()
    except (OSError, FastDcmError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        log.warning("the gallery cannot be written: %s (fastdcm gallery %s tries again)", reason, out)
        return f"gallery: not written: {reason}"


def _close_sinks(sinks: list[Sink], report: Report) -> None:
    for sink in sinks:
        try:
            sink.close()
        except SinkFailed as exc:
            report.manifest_error = report.manifest_error or exc.reason


@contextmanager
def _closing_beside(sinks: list[Sink], report: Report) -> Iterator[None]:
    """Close ``sinks`` in a thread of their own while the body runs; the thread is joined when the
    body ends (also when it raises), and what the closing raised is raised then, as a close in line
    would have raised it."""
    if not sinks:
        yield
        return
    failed: list[BaseException] = []

    def close() -> None:
        try:
            _close_sinks(sinks, report)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=close, name="fastdcm-close-sinks")
    thread.start()
    try:
        yield
    finally:
        thread.join()
        if failed:
            raise failed[0]


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
        self.has_rows: Any = None  # with a metadata table: whether a source has rows there
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
        if (
            prev.done(source.size, source.mtime_ns, self.fingerprint)
            and all(self.root.exists(n) for n in ((prev.shard,) if prev.shard else prev.outputs))
            and (self.has_rows is None or self.has_rows(source.path))
        ):
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


def _settle(source: Source, result: Result, registry: NameRegistry) -> Result:
    """A worker's result made final in the parent: converted outputs claim their names (two
    inputs whose names differ only in case both exist on this file system: a name conflict)."""
    if result.status is Status.CONVERTED and result.outputs:
        try:
            registry.claim(result.outputs, path=source.path, owner=owner_key(source.path))
        except NameConflictError as exc:
            result.status, result.reason = exc.status, exc.reason
    return result


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


