"""One batch inside a worker: open, render, encode, write atomically, report. Never raises.

:func:`process_batch` is the batch function the executors of :mod:`fastdcm.schedule` run.
It takes :class:`~fastdcm.discover.Source` records and a :class:`Job` and returns one small
:class:`Result` per source (status, reason, output names, frames, transfer syntax, VOI step,
timings per stage). An input either converts completely or leaves no output of this
attempt behind: outputs are written under a temporary name in ``OUT/.fastdcm-tmp/`` and
renamed into place (``os.replace``, or ``os.link`` when an existing file must not be
replaced); if a later frame fails, the frames already written for that input are removed.

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

import errno
import logging
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import EncodeError, FastDcmError, Status
from .naming import output_name, resolve_inside
from .options import Frames, OnExists, RenderOptions
from .render import open_image

__all__ = ["Job", "Result", "process_batch", "initialize", "TMP_DIR", "fault_result"]

log = logging.getLogger(__name__)

#: Folder inside the output root where files are written before their rename.
TMP_DIR = ".fastdcm-tmp"
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


def _write_atomic(data: bytes, final: str, tmp_dir: str, job: Job, retry: bool) -> None:
    """Write ``data`` to ``final`` through a temporary file; never a partial file at ``final``."""
    if _TMPFILE and job.on_exists is not OnExists.OVERWRITE and not retry and _write_unnamed(data, final, job):
        return
    tmp = os.path.join(tmp_dir, f"{os.getpid()}-{time.monotonic_ns()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, data, job.fsync)
        finally:
            os.close(fd)
        if job.on_exists is OnExists.OVERWRITE or retry:
            # Replace files from before this run; a file written during this run belongs to
            # another input (a name conflict), unless this is a retry of our own attempt.
            if not retry and job.on_exists is OnExists.OVERWRITE:
                try:
                    if os.stat(final).st_mtime_ns >= job.run_start_ns:
                        raise _Exists("written by another input of this run")
                except FileNotFoundError:
                    pass
            os.replace(tmp, final)
            return
        try:
            _rename_noreplace(tmp, final)  # atomic, fails if the name exists
        except FileExistsError:
            raise _Exists(_who_wrote(final, job)) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(final):  # no hard links here: check, then rename
                raise _Exists(_who_wrote(final, job)) from None
            os.replace(tmp, final)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


#: O_TMPFILE + linkat work here (Linux, a file system that supports them, /proc mounted);
#: cleared on the first refusal, after which the named temporary file is used.
_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_ROOT_FD: list[int] = []  # an fd of "/": passing it makes os.link call linkat (AT_SYMLINK_FOLLOW)
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.EXDEV, errno.EPERM, errno.ENOENT}


def _write_unnamed(data: bytes, final: str, job: Job) -> bool:
    """Write ``data`` to an unnamed file in ``final``'s folder, then link it to ``final``
    (never replacing a file: ``_Exists`` if one is there). False when this file system or
    kernel does not support it (nothing was written; the caller uses a named temp file)."""
    global _TMPFILE
    try:
        fd = os.open(os.path.dirname(final), os.O_TMPFILE | os.O_WRONLY, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            _TMPFILE = False
            return False
        raise
    try:
        _write_all(fd, data, job.fsync)
        if not _ROOT_FD:
            _ROOT_FD.append(os.open("/", os.O_RDONLY | os.O_DIRECTORY))
        try:
            os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=_ROOT_FD[0], follow_symlinks=True)
        except FileExistsError:
            raise _Exists(_who_wrote(final, job)) from None
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            _TMPFILE = False
            return False
    finally:
        os.close(fd)
    return True


def _write_all(fd: int, data: bytes, fsync: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if fsync:
        os.fsync(fd)


def _who_wrote(final: str, job: Job) -> str:
    """Why ``final`` is in the way: written during this run means another input of this run
    claimed the same name (a name conflict); older means it was there before the run."""
    try:
        if os.stat(final).st_mtime_ns >= job.run_start_ns:
            return "written by another input of this run"
    except OSError:
        pass
    return "exists"


def _load_renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _load_renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def _rename_noreplace(tmp: str, final: str) -> None:
    """Rename ``tmp`` to ``final`` unless ``final`` exists (FileExistsError): one
    renameat2(RENAME_NOREPLACE) call on Linux, else a hard link (the temp file is unlinked
    by the caller)."""
    global _RENAMEAT2
    if _RENAMEAT2 is not None:
        import ctypes

        if _RENAMEAT2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(final), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), final)
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # unsupported here: fall back
            raise OSError(err, os.strerror(err), final)
        _RENAMEAT2 = None
    os.link(tmp, final)


def _remove(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


# --------------------------------------------------------------------------- one input


#: Output folders of the current batch that exist and whose real path was checked to lie
#: inside the output root: for them only the file name is new (makedirs and the full check
#: run once per folder).
_READY_DIRS: set[str] = set()


def _final_path(out: str, name: str) -> str:
    """The output path of ``name``, checked to stay inside ``out``.

    The full check (``naming.resolve_inside``: realpath of every component) runs once per
    output folder; for further names in a checked folder only the last component is new, and
    the no-replace rename (or ``os.replace``) never follows a symlink at the final name.
    """
    head, _, tail = name.rpartition("/")
    folder = os.path.join(out, head) if head else out
    if folder in _READY_DIRS and tail not in ("", ".", "..") and "\x00" not in tail:
        return os.path.join(folder, tail)
    final = str(resolve_inside(out, name))
    if os.path.isdir(os.path.dirname(final)):
        _READY_DIRS.add(os.path.dirname(final))
    return final


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


def convert_one(source: Any, job: Job, retry: bool = False, faults=()) -> Result:
    """Convert one source; every failure becomes a Result (MemoryError included)."""
    timings = {"read": 0.0, "render": 0.0, "encode": 0.0, "write": 0.0}
    written: list[str] = []
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
        finals = [_final_path(job.out, name) for name in names]
        if job.on_exists is OnExists.SKIP and not retry and all(os.path.exists(f) for f in finals):
            result.status, result.reason, result.outputs = Status.SKIPPED, "outputs exist", names
            return result
        tmp_dir = os.path.join(job.out, TMP_DIR)
        vois, decoders = [], []
        for i, name, final in zip(indexes, names, finals):
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
            folder = os.path.dirname(final)
            if folder not in _READY_DIRS:
                os.makedirs(folder, exist_ok=True)
                resolve_inside(job.out, name)  # again, now that the folders exist
                _READY_DIRS.add(folder)
            try:
                _write_atomic(data, final, tmp_dir, job, retry)
            except _Exists as exc:
                if job.on_exists is OnExists.SKIP and str(exc) == "exists":
                    result.status, result.reason = Status.SKIPPED, f"output {name} exists"
                    _remove(written)
                    written.clear()
                    result.outputs = names
                    return result
                status = Status.NAME_CONFLICT if "another input" in str(exc) else Status.WRITE_ERROR
                hint = "" if status is Status.NAME_CONFLICT else " (use --on-exists skip or overwrite, or --resume)"
                raise _Failure(status, f"output {name} {exc}{hint}") from None
            written.append(final)
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
        written.clear()
        return result
    except FastDcmError as exc:
        result.status, result.reason = exc.status, exc.reason
    except _Failure as exc:
        result.status, result.reason = exc.status, exc.reason
    except MemoryError:
        result.status, result.reason = Status.OUT_OF_MEMORY, "out of memory (the worker's memory limit)"
    except OSError as exc:
        result.status, result.reason = Status.WRITE_ERROR, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug: reported in the manifest with where it happened
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.status = Status.ERROR
        result.reason = f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}:{where.lineno})"
    finally:
        if written:  # failed or interrupted part-way: no partial input left behind
            _remove(written)
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
    _READY_DIRS.clear()  # folders are trusted for one batch (a caller may delete them between runs)
    results: list[Result] = []
    try:
        for i, source in enumerate(sources):
            if progress is not None:
                progress(i)
            results.append(convert_one(source, job, retry, faults))
    except BaseException:
        # Stopped part-way (SIGTERM): the parent never sees these results and records the
        # batch as interrupted, so the outputs its finished inputs wrote must go too.
        for result in results:
            if result.status is Status.CONVERTED:
                _remove([os.path.join(job.out, name) for name in result.outputs])
        raise
    return results
