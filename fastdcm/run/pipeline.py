"""One input in a worker: open, render, encode, hand the images to the image sink. Never raises.

:class:`Pipeline` is the runner the executors create once per worker (``Pipeline(job, worker)``,
see :mod:`.executors`); it holds that worker's state (the image sink with its open output root,
the encoder, the test faults) and turns each batch of :class:`~fastdcm.run.discover.Source`
records into one small :class:`Result` per source (status, reason, output names, frames,
transfer syntax, VOI step, timings per stage). An input either converts completely or leaves no
output of this attempt behind: the image sink stores each image atomically; if a later frame
fails, the images already stored for that input are discarded, and a worker stopped by its
stop signal withdraws the outputs of every input whose result it has not sent.

Fault injection (tests only)
----------------------------
``FASTDCM_TEST_FAULTS`` (read only here, by the pipeline) is a comma-separated list of
``ACTION:TEXT``: the worker does ACTION when it starts an input whose path contains TEXT.
Actions: ``crash`` (SIGSEGV to itself), ``abort`` (``os.abort``), ``hang`` (sleep for
:data:`HANG_SECONDS`: long past any deadline a test sets, short enough that a deadline not
enforced fails its test instead of stalling the suite), ``oom`` (allocate without end:
``MemoryError`` under the worker's RLIMIT_AS), ``raise`` (an unexpected ``RuntimeError``). The process pool passes ``FASTDCM_*`` variables
on to workers. It is deliberately not a command-line option.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from ..errors import EncodeError, FastDcmError, InvalidPixelModuleError, NotDicomError, Status, describe, from_dependency
from ..options import BurnedIn, Frames, OnExists, RenderOptions, window_label
from ..plan import stack_refused
from ..render import open_image
from .executors import WorkerInfo
from .naming import output_name
from .sinks import Blocked
from .sinks.files import FilesSink
from .sinks.shards import ShardSink, shard_member
from .storage import is_url, read_object
from .privacy import Pseudonymizer, guard_names, pseudonymized
from .tags import TagSpec, burned_in, extract_from
from .thumbs import Sheet, sheet_name, thumbnail

__all__ = ["Job", "Result", "Pipeline", "fault_result", "warm"]

log = logging.getLogger(__name__)

_FAULTS_VAR = "FASTDCM_TEST_FAULTS"
HANG_SECONDS = 120.0  # the ``hang`` fault


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
    tmp_name: str | None = None  # this run's temporary folder in ``out`` (write.OutputRoot.create)
    tags: tuple[TagSpec, ...] | None = None  # the metadata table's attributes (None: no table)
    pseudonymizer: Pseudonymizer | None = None  # --pseudonymize: keyed hashes of Patient ID and UIDs
    burned_in: BurnedIn = BurnedIn.KEEP
    gallery_tags: tuple[TagSpec, ...] | None = None  # --gallery: thumbnails and these attributes (grouping)
    name_guard: tuple[TagSpec, ...] | None = None  # identifiers no output name may show (None: --allow-phi)
    container: str = "files"  # files, or webdataset / parquet shards (sinks/shards.py)
    storage_options: dict | None = None  # fsspec options of URL inputs and outputs (storage.py); never logged
    fresh: bool = False  # the output folder held nothing when the run began: no existence check before rendering


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
    frame_numbers: list[int] | None = None  # per output, its frame number (1-based); None: output i is frame i + 1
    resize: dict[str, Any] | None = None  # --size / --max-size: {"scale", "offset"} per axis (resize.py); None: not resized
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None  # the chosen attributes' values (Job.tags), never the dataset
    windows: list[tuple[float, float] | None] | None = None  # per output: (center, width) of the VOI used
    burned_in: bool = False  # Burned In Annotation YES (looked at with --burned-in skip or list)
    gallery: dict[str, Any] | None = None  # --gallery: the grouping attributes' values (Job.gallery_tags)
    thumbs: list[list[int]] | None = None  # --gallery: per output, [x, y, width, height] on ``sheet``
    sheet: str | None = None  # the batch's thumbnail sheet (thumbs.py), written before the result is sent
    shard: str | None = None  # --container webdataset/parquet: the shard holding the outputs (sinks/shards.py)


def fault_result(source: Any, fault: Any) -> Result:
    """The result of a source whose worker died (used by the executor, in the parent)."""
    return Result(status=fault.status, reason=fault.reason)


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
            time.sleep(HANG_SECONDS)
        elif action == "oom":
            hoard = []
            while True:
                hoard.append(bytearray(64 << 20))
        elif action == "raise":
            raise RuntimeError(f"injected fault for {path}")


# --------------------------------------------------------------------------- one input


class _LazyFields:
    """``{Keyword}`` values for name templates, from pydicom's dataset parsed on first use
    (Patient ID and UIDs as keyed hashes with ``--pseudonymize``)."""

    __slots__ = ("_image", "_pseudonymizer")

    def __init__(self, image: Any, pseudonymizer: Pseudonymizer | None = None) -> None:
        self._image = image
        self._pseudonymizer = pseudonymizer

    def __call__(self, keyword: str, default: Any = None) -> Any:
        value = self._image.dataset.get(keyword, default)
        if self._pseudonymizer is not None and value is not default and pseudonymized(keyword):
            value = self._pseudonymizer(value)
        return value

    get = __call__


class _Attributes:
    """The header values one input needs (the table's, the gallery's, the name guard's), read in one
    walk of its header; each selection's values are then its own copy, Patient ID and UIDs as keyed
    hashes with ``--pseudonymize`` for the table and the gallery (the guard compares the values)."""

    def __init__(self, job: Job) -> None:
        self.pseudonymizer = job.pseudonymizer
        merged: dict[str, TagSpec] = {}
        for selection in (job.tags, job.gallery_tags, job.name_guard):
            for spec in selection or ():
                merged.setdefault(spec.column, spec)
        self.specs = tuple(merged.values())

    def read(self, image: Any) -> dict[str, Any] | None:
        """Every wanted value; None when pydicom cannot read the header (rows get no values)."""
        if not self.specs:
            return None
        try:
            return extract_from(image, self.specs)
        except FastDcmError:
            return None

    def of(self, values: dict[str, Any] | None, specs: tuple[TagSpec, ...], pseudonymize: bool = True) -> dict[str, Any] | None:
        if values is None:
            return None
        out = {spec.column: values.get(spec.column) for spec in specs}
        if pseudonymize and self.pseudonymizer is not None:
            for spec in specs:
                if spec.pseudonymized:
                    out[spec.column] = self.pseudonymizer(out[spec.column])
        return out


def _stack_outputs(job: Job, encoder: Any) -> tuple[list[str], dict[str, Any]]:
    """A window stack's outputs: (labels of one image per window, or [] for one image with a
    channel per window; the encoder's options). Three windows make one RGB PNG or JPEG (JPEG
    without chroma subsampling: each channel is a window, not a colour); ``.npy`` takes any
    number; other counts in PNG or JPEG become one image per window, named ``<name>_<window>``."""
    from ..encoders import stack_options

    windows = job.render.windows
    if windows is None:
        return [], {}
    options = stack_options(encoder, len(windows))
    if len(windows) == 3 or encoder.name == "npy":
        return [], options
    labels: list[str] = []
    for window in windows:
        label = window_label(window)
        while label in labels:  # the same window twice: numbered
            label += f"-{len(labels) + 1}"
        labels.append(label)
    return labels, options


def _with_label(name: str, label: str, extension: str) -> str:
    stem = name[: -len(extension)] if extension and name.endswith(extension) else name
    return f"{stem}_{label}{extension}"


#: The synthetic slice :func:`warm` renders (rows = columns): a CT slice's size, so that a ``--size``
#: run takes the path (area averaging down) its real inputs take.
WARM_SIDE = 512


@functools.lru_cache(maxsize=1)
def _warm_bytes() -> bytes:
    """A 512 x 512 signed 16-bit CT slice with a rescale and a window, as the bytes of a Part 10
    file in explicit VR little endian (made once per process; no file is written; not with pydicom,
    whose import alone costs a run's start ~0.14 s that the fast path does not pay)."""
    import struct

    import numpy as np

    from ..elements import encode as element, part10

    ct, uid = b"1.2.840.10008.5.1.4.1.1.2", b"1.2.3.4"
    meta = (element(0x0002, 0x0001, "OB", bytes([0, 1])) + element(0x0002, 0x0002, "UI", ct)
            + element(0x0002, 0x0003, "UI", uid) + element(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.1"))
    us = struct.Struct("<H").pack
    ramp = np.arange(WARM_SIDE, dtype=np.int16) * 8
    pixels = np.add.outer(ramp, ramp).astype("<i2").tobytes()
    body = (element(0x0008, 0x0016, "UI", ct) + element(0x0008, 0x0018, "UI", uid)
            + element(0x0008, 0x0060, "CS", b"CT") + element(0x0028, 0x0002, "US", us(1))
            + element(0x0028, 0x0004, "CS", b"MONOCHROME2") + element(0x0028, 0x0010, "US", us(WARM_SIDE))
            + element(0x0028, 0x0011, "US", us(WARM_SIDE)) + element(0x0028, 0x0100, "US", us(16))
            + element(0x0028, 0x0101, "US", us(16)) + element(0x0028, 0x0102, "US", us(15))
            + element(0x0028, 0x0103, "US", us(1)) + element(0x0028, 0x1050, "DS", b"40")
            + element(0x0028, 0x1051, "DS", b"400") + element(0x0028, 0x1052, "DS", b"-1024")
            + element(0x0028, 0x1053, "DS", b"1") + element(0x7FE0, 0x0010, "OW", pixels))
    return part10(meta, body)


def warm(job: Job) -> None:
    """Take one synthetic CT slice through the job's path for an image (render with its options,
    encode, thumbnail) in this process, so that the Numba kernels and modules it needs beyond the
    core are loaded here, once, before a process pool forks its workers from this process: each
    worker otherwise loads them on its first input, every run again in a program that calls
    :func:`fastdcm.convert` more than once. Measured on the 2-core VM: a worker's first CT slice
    4-9 ms in a plain JPEG run, 14-21 ms with --gallery or --size 256, 22-26 ms with --windows,
    and 3-5 ms after this; ``fastdcm convert`` of 1,000 CT slices with 2 workers, 4 runs alternated
    with the code before: 0.93 -> 0.86 s plain, 1.06 -> 0.96 s --gallery, 0.92 -> 0.85 s --size 256,
    1.53 -> 1.42 s --windows (this costs the parent ~2 ms and the first loads). Inputs with
    other pixel types still load their kernels where they are first met. Never raises: a job this
    slice cannot take (an option it has nothing for) only warms less."""
    from ..encoders import get_encoder

    try:
        encoder = get_encoder(job.format)
        labels, options = _stack_outputs(job, encoder)
        array = open_image(_warm_bytes()).render_frame(0, job.render).array
        planes = [array[..., c] for c in range(len(labels))] if labels else [array]
        for plane in planes[:1]:
            if job.gallery_tags is not None:
                thumbnail(plane if plane.ndim == 2 or plane.shape[2] == 3 else plane[..., 0])
            encoder.encode(plane, quality=job.quality, **options)
    except Exception as exc:  # noqa: BLE001 - a warm-up is never a run's failure
        log.debug("warm-up for this job skipped: %s", describe(exc))


class Pipeline:
    """One worker's pipeline (the executors' runner): ``Pipeline(job, worker)``.

    In a worker process of its own it loads the Numba kernels from the disk cache before the
    first file and silences pydicom's per-file warnings for good (the manifest holds each
    file's outcome); in the caller's process it silences them only while a batch runs."""

    def __init__(self, job: Job, worker: WorkerInfo | None = None) -> None:
        from .. import kernels
        from ..encoders import get_encoder

        worker = worker or WorkerInfo()
        self.job = job
        self.own_process = worker.own_process
        self.stop_signal = worker.stop_signal
        self.tag = worker.tag
        if self.own_process:
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            logging.getLogger("pydicom").setLevel(logging.ERROR)
        kernels.warmup()
        self.encoder = get_encoder(job.format)
        self.images = FilesSink.for_job(job) if job.container == "files" else ShardSink.for_job(job, self.tag)
        self.faults = _faults()
        self.attributes = _Attributes(job)
        self.sheet = Sheet() if job.gallery_tags is not None else None
        self.tiles: list[Any] = []  # the input in progress' thumbnails
        self.sheets_written = 0
        self.sheet_root: Any = None
        self.channel_labels, self.encode_options = _stack_outputs(job, self.encoder)

    def first_attempt(self, key: str) -> bool:
        """Whether the batch ``key`` runs for the first time (a cluster runs a task again after the
        worker running it died: that run may replace what the lost one wrote)."""
        return self.images.root.mark(key)

    def _fetch(self, source: Any) -> bytes:
        """An object-store input's bytes: one GET of the whole object, or, for a large object of which
        ``--frames`` selects some frames, its header, those frames and what follows the pixel data
        (storage.read_frames: the rest stays zeros, never rendered)."""
        from ..header import MAX_FILE_BYTES, read_header
        from . import storage

        if source.size > MAX_FILE_BYTES:
            raise InvalidPixelModuleError(
                f"object is {source.size} bytes, over the limit of {MAX_FILE_BYTES} (FASTDCM_MAX_FILE_BYTES)"
            )
        try:
            if not self.job.frames.all and source.size >= storage.RANGED_ABOVE:
                buffer = storage.read_frames(
                    source.path, self.job.storage_options, source.size, self.job.frames.indexes,
                    lambda data: read_header(data).spec,
                )
                if buffer is not None:
                    return bytes(buffer)
            return read_object(source.path, self.job.storage_options, source.size)
        except FileNotFoundError:
            raise NotDicomError("no such object") from None
        except PermissionError as exc:
            raise NotDicomError(f"cannot be read: {exc}") from None
        except OSError as exc:
            raise FastDcmError(f"cannot be read from the store: {describe(exc)}") from None

    def close(self) -> None:
        self.images.close()
        if self.sheet_root is not None:
            self.sheet_root.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _committing(self) -> Iterator[None]:
        """The stop signal (the pool's SIGTERM) waits while an image is stored and listed, or a
        result is listed, so a stopped worker knows every file it made and removes it. A few
        microseconds, except while the bytes are written. (SIGALRM too: the pool's stop when it
        first arrived in a finalizer, executors/process.py.)"""
        if self.stop_signal is None:
            yield
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {self.stop_signal, signal.SIGALRM})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def run_batch(
        self, sources: Sequence[Any], progress: Callable[[int], None] | None = None, retry: bool = False
    ) -> list[Result]:
        """Convert every source of a batch; one :class:`Result` each, in order. Never raises
        (except for BaseExceptions such as the signal that stops a worker)."""
        if self.own_process:
            return self._run_batch(sources, progress, retry)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            return self._run_batch(sources, progress, retry)

    def _run_batch(self, sources: Sequence[Any], progress: Callable[[int], None] | None, retry: bool) -> list[Result]:
        results: list[Result] = []
        sheet = None
        try:
            for i, source in enumerate(sources):
                if progress is not None:
                    progress(i)
                result = self.convert_one(source, retry)
                with self._committing():
                    results.append(result)
                    if result.status is Status.CONVERTED:
                        self.images.accept(source, result)
                        if self.sheet is not None:
                            result.thumbs = self.sheet.add(self.tiles, windows=self.job.render.windows is not None)
            with self._committing():
                self.images.end_batch(results)  # a shard container's shard: published, or its inputs write_error
            if self.sheet:
                with self._committing():
                    sheet = self._write_sheet(results)
        except BaseException:
            # Stopped part-way: the parent never sees these results and records the batch as
            # interrupted, so the outputs its finished inputs stored must go too.
            self.images.discard()
            for result in results:
                if result.status is Status.CONVERTED:
                    self.images.withdraw(result.outputs)
            for shard in {r.shard for r in results if r.shard}:
                self.images.remove(shard)
            if sheet is not None:
                self.sheet_root.remove(sheet)
            raise
        finally:
            if self.sheet is not None:
                self.sheet.clear()
        return results

    def _write_sheet(self, results: list[Result]) -> str | None:
        """The batch's thumbnails as one sheet; its name in each result that has a tile there.
        A sheet that cannot be written costs the gallery those thumbnails (``fastdcm gallery``
        makes them again from the outputs), never an input its status."""
        from .storage import open_root

        t0 = time.perf_counter()
        name = sheet_name(self.job.run_start_ns, self.sheets_written, self.tag)
        self.sheets_written += 1
        try:
            if self.sheet_root is None:
                self.sheet_root = open_root(self.job.out, self.job.tmp_name, self.job.storage_options)
            self.sheet_root.write(name, self.sheet.encode(), replace=False, fsync=self.job.fsync)
        except (OSError, FastDcmError) as exc:
            log.debug("thumbnail sheet %s not written: %s", name, exc)
            name = None
        spent = time.perf_counter() - t0
        with_tiles = [r for r in results if r.thumbs]
        for result in with_tiles:
            if name is None:
                result.thumbs = None
            else:
                result.sheet = name
            result.timings["thumbs"] = result.timings.get("thumbs", 0.0) + spent / len(with_tiles)
        return name

    def convert_one(self, source: Any, retry: bool = False) -> Result:
        """Convert one source; every failure becomes a Result (MemoryError included). On
        success the images stay pending in the image sink until the batch accepts them."""
        job = self.job
        timings = {"read": 0.0, "render": 0.0, "encode": 0.0, "write": 0.0}
        result = Result(status=Status.ERROR, timings=timings)
        images = self.images
        names: list[str] = []
        tiles = self.tiles
        tiles.clear()
        try:
            if self.faults:
                _inject(source.path, self.faults)
            t0 = time.perf_counter()
            image = open_image(self._fetch(source) if is_url(source.path) else source.path)
            spec = image.spec
            result.transfer_syntax = spec.transfer_syntax_uid
            encoder = self.encoder
            attributes = self.attributes
            values = attributes.read(image)
            if job.tags is not None:
                result.metadata = attributes.of(values, job.tags)
            if job.gallery_tags is not None:
                result.gallery = attributes.of(values, job.gallery_tags)
            if job.burned_in is not BurnedIn.KEEP and burned_in(image):
                result.burned_in = True
                if job.burned_in is BurnedIn.SKIP:
                    result.status = Status.SKIPPED
                    result.reason = "burned-in annotation (--burned-in skip)"
                    return result
            t1 = time.perf_counter()
            timings["read"] = t1 - t0
            n = image.n_frames
            indexes = job.frames.indexes(n)
            if not indexes:
                result.status = Status.SKIPPED
                result.reason = f"no frame selected by --frames {job.frames} (the object has {n} frame(s))"
                return result
            refused = stack_refused(spec) if job.render.windows is not None else None
            if refused:  # (render() raises it: InvalidOptionError, plan.build_stack)
                result.status, result.reason = Status.SKIPPED, f"--windows: {refused}"
                return result
            multi = n > 1 and job.frames != Frames.FIRST
            fields = _LazyFields(image, job.pseudonymizer)  # the full header is parsed only if the template asks
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
            labels = self.channel_labels
            if labels:  # a window stack written one image per window
                names = [_with_label(name, label, encoder.extension) for name in names for label in labels]
            if job.name_guard is not None:
                guarded = attributes.of(values, job.name_guard, False) or {}
                names = guard_names(names, guarded, job.pseudonymizer, templated=job.name is not None)
            if job.container != "files":  # sample keys: no dot before the extension
                names = [shard_member(name, encoder.extension) for name in names]
            images.begin(source, names, retry)
            vois, decoders, windows = [], [], []
            per_frame = max(1, len(labels))
            for f, i in enumerate(indexes):
                t0 = time.perf_counter()
                rendered = image.render_frame(i, job.render)
                t1 = time.perf_counter()
                timings["render"] += t1 - t0
                planes = [rendered.array[..., c] for c in range(per_frame)] if labels else [rendered.array]
                for c, array in enumerate(planes):
                    name = names[f * per_frame + c]
                    if self.sheet is not None:
                        # first, while the image is in the cache: 63 against 76 us after the
                        # encode and the write (median of 1,200 CT slices)
                        t1 = time.perf_counter()
                        tiles.append(thumbnail(array if array.ndim == 2 or array.shape[2] == 3 else array[..., 0]))
                        timings["thumbs"] = timings.get("thumbs", 0.0) + time.perf_counter() - t1
                    t1 = time.perf_counter()
                    try:
                        data = encoder.encode(array, quality=job.quality, **self.encode_options)
                    except FastDcmError:
                        raise
                    except (ValueError, TypeError, RuntimeError) as exc:
                        raise EncodeError(f"{job.format}: {exc}") from exc
                    t2 = time.perf_counter()
                    with self._committing():  # the stop signal waits until the image is listed as put
                        images.put(source, name, data, retry)
                    t3 = time.perf_counter()
                    timings["encode"] += t2 - t1
                    timings["write"] += t3 - t2
                    vois.append(rendered.voi)
                    windows.append(job.render.windows[c] if labels else rendered.window)
                if rendered.decoder not in decoders:
                    decoders.append(rendered.decoder)
            result.status = Status.CONVERTED
            result.outputs = names
            result.frames = len(indexes)
            if not job.frames.all or labels:  # which frame each output shows (else output i is frame i + 1)
                result.frame_numbers = [i + 1 for i in indexes for _ in range(per_frame)]
            result.voi = vois[0] if len(set(vois)) == 1 else ",".join(vois) if vois else None
            result.decoder = ",".join(decoders) or None
            result.shape = list(rendered.array.shape[:2]) if names else None
            result.reduce = job.render.reduce or None
            result.resize = rendered.mapping if names else None
            result.windows = windows if job.tags is not None or job.gallery_tags is not None else None
            return result
        except Blocked as exc:
            result.status, result.reason = exc.status, exc.reason
            if exc.status is Status.SKIPPED:  # (the finally clause removes what this input put)
                result.outputs = names
                return result
            result.blocked = exc.names
        except FastDcmError as exc:
            result.status, result.reason = exc.status, exc.reason
        except MemoryError:
            result.status, result.reason = Status.OUT_OF_MEMORY, "out of memory (the worker's memory limit)"
        except OSError as exc:
            result.status, result.reason = Status.WRITE_ERROR, describe(exc)
        except Exception as exc:
            typed = from_dependency(exc, InvalidPixelModuleError, "a dependency failed on this file")
            if typed is not None:  # raised inside pydicom / numpy / a codec on damaged data: the file's status
                result.status, result.reason = typed.status, typed.reason
            else:  # a bug: reported in the manifest with where it happened
                where = traceback.extract_tb(exc.__traceback__)[-1]
                result.status = Status.ERROR
                result.reason = f"{describe(exc)} ({os.path.basename(where.filename)}:{where.lineno})"
        finally:
            if result.status is not Status.CONVERTED:  # failed or interrupted part-way
                images.discard()
        result.outputs = []
        return result
