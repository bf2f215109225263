"""One batch inside a worker: open, render, encode, write atomically, report. Never raises.

:func:`process_batch` is the batch function the executors of :mod:`fastdcm.schedule` run.
It takes :class:`~fastdcm.discover.Source` records and a :class:`Job` and returns one small
:class:`Result` per source (status, reason, output names, frames, transfer syntax, VOI step,
timings per stage). An input either converts completely or leaves no output of this
attempt behind: every output goes through the atomic writer (``writer.py``: directory fds,
no symlink followed, a file appears complete or not at all); if a later frame fails, the
frames already written for that input are removed, and a worker stopped by SIGTERM removes
the outputs of every input whose result it has not sent.

Fault injection (tests only)
----------------------------
``FASTDCM_TEST_FAULTS`` (read only here, by the worker) is a comma-separated list of
``ACTION:TEXT``: the worker does ACTION when it starts an input whose path contains TEXT.
Actions: ``crash`` (SIGSEGV to itself), ``abort`` (``os.abort``), ``hang`` (sleep for an
hour), ``oom`` (allocate without end: ``MemoryError`` under the worker's RLIMIT_AS),
``raise`` (an unexpected ``RuntimeError``). The scheduler passes ``FASTDCM_*`` variables
on to workers. It is deliberately not a command-line option.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from .errors import EncodeError, FastDcmError, InvalidPixelModuleError, Status, from_dependency
from .naming import output_name
from .options import Frames, OnExists, RenderOptions
from .render import open_image
from .writer import Exists, OutputRoot, root_for

__all__ = ["Job", "Result", "process_batch", "initialize", "fault_result"]

log = logging.getLogger(__name__)

_FAULTS_VAR = "FASTDCM_TEST_FAULTS"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the sources; small and picklable."""

    out: str  # the output root (absolute, existing)
    render: RenderOptions
    format: str = "png"
    quality: int = 90
    name: str | None = None
    on_exists: OnExists = OnExists.ERROR
    frames: Frames = Frames.ALL
    fsync: bool = False
    run_start_ns: int = 0  # outputs newer than this were written by this run
    tmp_name: str | None = None  # this run's temporary folder in ``out`` (writer.OutputRoot.create)


@dataclass
class Result:
    """The outcome of one source (becomes one manifest record in the parent)."""

    status: Status
    reason: str = ""
    outputs: list[str] = field(default_factory=list)
    frames: int | None = None
    transfer_syntax: str | None = None
    voi: str | None = None
    decoder: str | None = None  # the backend that decoded the frames (several: comma-separated)
    shape: list[int] | None = None  # rows, columns of the output images
    blocked: list[str] = field(default_factory=list)  # an output name that exists and was not replaced
    reduce: int | None = None  # the reduce=k level the outputs were made at (None: full size)
    timings: dict[str, float] = field(default_factory=dict)


def fault_result(source: Any, fault: Any) -> Result:
    """The result of a source whose worker died (used by the scheduler, in the parent)."""
    return Result(status=fault.status, reason=fault.reason)


def initialize() -> None:
    """Worker initializer: load the Numba kernels from the disk cache before the first file,
    and silence pydicom's per-file warnings (the manifest holds each file's outcome)."""
    import warnings

    from . import kernels

    global _IN_WORKER
    _IN_WORKER = hasattr(signal, "pthread_sigmask")
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    logging.getLogger("pydicom").setLevel(logging.ERROR)

    kernels.warmup()


# --------------------------------------------------------------------------- faults (tests)


def _faults() -> list[tuple[str, str]]:
    spec = os.environ.get(_FAULTS_VAR, "")
    pairs = []
    for item in spec.split(","):
        action, _, text = item.partition(":")
        if action and text:
            pairs.append((action.strip(), text))
    return pairs


def _inject(path: str, faults: list[tuple[str, str]]) -> None:
    for action, text in faults:
        if text not in path:
            continue
        if action == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(5)
        elif action == "abort":
            os.abort()
        elif action == "hang":
            time.sleep(3600)
        elif action == "oom":
            hoard = []
            while True:
                hoard.append(bytearray(64 << 20))
        elif action == "raise":
            raise RuntimeError(f"injected fault for {path}")


# --------------------------------------------------------------------------- writing


class _Exists(Exception):
    """The final name exists and must not be replaced."""


def _write(root: OutputRoot, name: str, data: bytes, job: Job, retry: bool, own: tuple[str, ...] = ()) -> None:
    """Write output ``name`` atomically (writer.py); ``_Exists`` when the name is taken.
    ``own``: names this input wrote in an earlier run, which it may replace."""
    replace = job.on_exists is OnExists.OVERWRITE or retry or name in own
    try:
        # A retry replaces its own earlier attempt; an overwrite replaces only files from before
        # this run (a newer one belongs to another input of this run: a name conflict).
        root.write(name, data, replace=replace, fsync=job.fsync, replace_older_than=None if retry else job.run_start_ns)
    except Exists:
        raise _Exists(_who_wrote(root, name, job)) from None


def _who_wrote(root: OutputRoot, name: str, job: Job) -> str:
    """Why ``name`` is in the way: written during this run means another input of this run
    claimed the same name (a name conflict); older means it was there before the run."""
    mtime = root.mtime_ns(name)
    if mtime is not None and mtime >= job.run_start_ns:
        return "written by another input of this run"
    return "exists"


def _remove(root: OutputRoot, names: list[str]) -> None:
    for name in names:
        root.remove(name)


# --------------------------------------------------------------------------- one input


class _LazyFields:
    """``{Keyword}`` values for name templates, from pydicom's dataset parsed on first use."""

    __slots__ = ("_image",)

    def __init__(self, image: Any) -> None:
        self._image = image

    def __call__(self, keyword: str, default: Any = None) -> Any:
        return self._image.dataset.get(keyword, default)

    get = __call__


class _Encoders:
    cache: dict[str, Any] = {}


def _encoder(name: str):
    enc = _Encoders.cache.get(name)
    if enc is None:
        from .encoders import get_encoder

        enc = _Encoders.cache[name] = get_encoder(name)
    return enc


def convert_one(source: Any, job: Job, retry: bool = False, faults=(), written: list[str] | None = None) -> Result:
    """Convert one source; every failure becomes a Result (MemoryError included).

    ``written`` (the caller's list) receives the paths of the outputs as each is linked into
    place; on success they stay listed for the caller to commit, on failure they are removed."""
    timings = {"read": 0.0, "render": 0.0, "encode": 0.0, "write": 0.0}
    if written is None:
        written = []
    result = Result(status=Status.ERROR, timings=timings)
    try:
        if faults:
            _inject(source.path, faults)
        t0 = time.perf_counter()
        image = open_image(source.path)
        spec = image.spec
        result.transfer_syntax = spec.transfer_syntax_uid
        encoder = _encoder(job.format)
        t1 = time.perf_counter()
        timings["read"] = t1 - t0
        n = image.n_frames
        indexes = range(n) if job.frames is Frames.ALL else range(min(n, 1))
        multi = n > 1 and job.frames is Frames.ALL
        fields = _LazyFields(image)  # the full header is parsed only if the template asks for a keyword
        names = [
            output_name(
                job.name,
                source=source,
                frame=i if multi else None,
                n_frames=n,
                extension=encoder.extension,
                fields=fields,
            )
            for i in indexes
        ]
        root = root_for(job.out, job.tmp_name)
        if job.on_exists is OnExists.SKIP and not retry and all(root.exists(name) for name in names):
            result.status, result.reason, result.outputs = Status.SKIPPED, "outputs exist", names
            return result
        if job.on_exists is OnExists.ERROR and not retry:
            # Names in the way, found before any frame is rendered (the parent may let a resumed
            # input replace them: its own stale outputs, not another input's).
            own = getattr(source, "replace", ())
            blocked = [name for name in names if name not in own and root.exists(name)]
            if blocked:
                result.blocked = blocked
                reason = _who_wrote(root, blocked[0], job)
                status = Status.NAME_CONFLICT if "another input" in reason else Status.WRITE_ERROR
                hint = "" if status is Status.NAME_CONFLICT else " (use --on-exists skip or overwrite, or --resume)"
                raise _Failure(status, f"output {blocked[0]} {reason}{hint}")
        vois, decoders = [], []
        for i, name in zip(indexes, names):
            t0 = time.perf_counter()
            rendered = image.render_frame(i, job.render)
            t1 = time.perf_counter()
            try:
                data = encoder.encode(rendered.array, quality=job.quality)
            except FastDcmError:
                raise
            except (ValueError, TypeError, RuntimeError) as exc:
                raise EncodeError(f"{job.format}: {exc}") from exc
            t2 = time.perf_counter()
            try:
                with _committing():  # a SIGTERM waits until the output is listed in `written`
                    _write(root, name, data, job, retry, getattr(source, "replace", ()))
                    written.append(name)
            except _Exists as exc:
                if job.on_exists is OnExists.SKIP and str(exc) == "exists":
                    result.status, result.reason = Status.SKIPPED, f"output {name} exists"
                    _remove(root, written)
                    written.clear()
                    result.outputs = names
                    return result
                status = Status.NAME_CONFLICT if "another input" in str(exc) else Status.WRITE_ERROR
                result.blocked = [name]
                hint = "" if status is Status.NAME_CONFLICT else " (use --on-exists skip or overwrite, or --resume)"
                raise _Failure(status, f"output {name} {exc}{hint}") from None
            t3 = time.perf_counter()
            timings["render"] += t1 - t0
            timings["encode"] += t2 - t1
            timings["write"] += t3 - t2
            vois.append(rendered.voi)
            if rendered.decoder not in decoders:
                decoders.append(rendered.decoder)
        result.status = Status.CONVERTED
        result.outputs = names
        result.frames = len(names)
        result.voi = vois[0] if len(set(vois)) == 1 else ",".join(vois) if vois else None
        result.decoder = ",".join(decoders) or None
        result.shape = list(rendered.array.shape[:2]) if names else None
        result.reduce = job.render.reduce or None
        return result  # `written` stays listed: the caller commits it with the result
    except FastDcmError as exc:
        result.status, result.reason = exc.status, exc.reason
    except _Failure as exc:
        result.status, result.reason = exc.status, exc.reason
    except MemoryError:
        result.status, result.reason = Status.OUT_OF_MEMORY, "out of memory (the worker's memory limit)"
    except OSError as exc:
        result.status, result.reason = Status.WRITE_ERROR, f"{type(exc).__name__}: {exc}"
    except Exception as exc:
        typed = from_dependency(exc, InvalidPixelModuleError, "a dependency failed on this file")
        if typed is not None:  # raised inside pydicom / numpy / a codec on damaged data: the file's status
            result.status, result.reason = typed.status, typed.reason
        else:  # a bug: reported in the manifest with where it happened
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.status = Status.ERROR
            result.reason = f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:{where.lineno})"
    finally:
        if written and result.status is not Status.CONVERTED:  # failed or interrupted part-way
            _remove(root_for(job.out, job.tmp_name), written)
            written.clear()
    result.outputs = []
    return result


class _Failure(Exception):
    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def process_batch(
    sources: Sequence[Any], job: Job, progress: Callable[[int], None] | None = None, retry: bool = False
) -> list[Result]:
    """Convert every source of a batch; one :class:`Result` each, in order. Never raises
    (except for BaseExceptions such as the SIGTERM that stops a worker)."""
    faults = _faults()
    results: list[Result] = []
    written: list[str] = []  # outputs of the input in progress, linked but not yet in `results`
    try:
        for i, source in enumerate(sources):
            if progress is not None:
                progress(i)
            result = convert_one(source, job, retry, faults, written)
            with _committing():
                results.append(result)
                written.clear()
    except BaseException:
        # Stopped part-way (SIGTERM): the parent never sees these results and records the
        # batch as interrupted, so the outputs its finished inputs wrote must go too.
        root = root_for(job.out, job.tmp_name)
        _remove(root, written)
        for result in results:
            if result.status is Status.CONVERTED:
                _remove(root, result.outputs)
        raise
    return results


@contextlib.contextmanager
def _committing() -> Iterator[None]:
    """SIGTERM (the pool's stop) waits while an output is linked into place and recorded, so
    a stopped worker knows every file it made and removes it. A few microseconds, except
    while the bytes are written."""
    if not _IN_WORKER:
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


#: Set by ``initialize`` in a worker process (SIGTERM is its stop signal there, not in a caller's process).
_IN_WORKER = False
