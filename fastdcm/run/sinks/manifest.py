"""One JSON line per discovered input: status, reason, outputs, timings; resume reads it back.

The manifest (``manifest.jsonl`` in the output folder by default) is append-only and
written by the one process that owns the run. Each line is one :class:`Record`. A run that
crashes may leave a truncated last line: :func:`read_manifest` skips it, and
:class:`ManifestWriter` starts a fresh line before appending, so the fragment never glues
itself to a good record. For ``--resume``, :func:`resume_index` gives each input's latest record (its
size, mtime, fingerprint and outputs). :class:`ManifestSink` is the run's sink that writes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Iterator

import orjson

from ...errors import Status
from . import SinkFailed

__all__ = [
    "ManifestSink",
    "Record",
    "ManifestWriter",
    "read_manifest",
    "resume_index",
    "Previous",
    "DONE_STATUSES",
    "summarize",
    "format_summary",
    "MANIFEST_NAME",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"

#: Statuses that mean "this input needs no more work" for ``--resume``.
DONE_STATUSES = frozenset({Status.CONVERTED, Status.SKIPPED})


@dataclass
class Record:
    """The outcome of one input. ``source`` is the input's path (absolute), ``rel`` the
    relative path output names mirror; ``outputs`` are relative to the output folder;
    ``frames`` is the number of frames written (``frame_numbers``, when ``--frames`` selects
    some or a window stack writes an image per window: each output's frame number, from 1); ``voi`` names the VOI step used (e.g.
    ``window``, ``voi_lut``, ``minmax``); ``decoder`` what decoded the pixel data (a
    backend of ``fastdcm info --plugins``, ``native`` or ``pydicom``); ``shape`` the rows and
    columns of the output images; ``reduce`` the ``--reduce`` level they were made at (absent: full
    size); ``shard`` (``--container webdataset|parquet``) the shard under OUT that holds the
    outputs, which are then its members' names; ``resize`` (``--size``, ``--max-size``) how a frame's pixel coordinates map to the
    output's: ``output = frame * scale + offset``, ``scale`` and ``offset`` each [rows, columns]
    (absent: not resized); ``gallery`` (``--gallery``) what the gallery shows of the outputs: the grouping
    attributes' values by keyword (``StudyInstanceUID``, ``Modality``, ...), the thumbnail ``sheet`` with
    each output's rectangle there (``thumbs``) and the ``windows`` used (:mod:`fastdcm.gallery`); ``fingerprint`` a digest of the options that shape the outputs (format, quality,
    depth, window, naming, ...: ``--resume`` redoes an input made with other options); ``timings`` maps stage -> seconds; ``time`` is
    when the record was made (Unix seconds). Unknown keys read from a newer manifest are
    kept in ``extra``."""

    source: str
    status: Status
    reason: str = ""
    size: int | None = None
    mtime_ns: int | None = None
    rel: str | None = None
    outputs: list[str] = field(default_factory=list)
    frames: int | None = None
    frame_numbers: list[int] | None = None
    transfer_syntax: str | None = None
    voi: str | None = None
    decoder: str | None = None
    shape: list[int] | None = None
    reduce: int | None = None
    resize: dict[str, Any] | None = None
    gallery: dict[str, Any] | None = None
    shard: str | None = None
    fingerprint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @classmethod
    def from_source(cls, source: Any, status: Status | str, reason: str = "", **kwargs: Any) -> "Record":
        """A record for a :class:`~fastdcm.run.discover.Source` or :class:`~fastdcm.run.discover.Rejected`."""
        return cls(
            source=source.path,
            status=Status(status),
            reason=reason,
            size=getattr(source, "size", None),
            mtime_ns=getattr(source, "mtime_ns", None),
            rel=getattr(source, "rel", None),
            **kwargs,
        )

    @classmethod
    def from_result(cls, source: Any, result: Any, fingerprint: str | None = None) -> "Record":
        """The record of a pipeline :class:`~fastdcm.run.pipeline.Result` (the fingerprint is
        kept for converted and skipped inputs: what ``--resume`` compares)."""
        status = Status(result.status)
        return cls.from_source(
            source,
            status,
            result.reason,
            outputs=result.outputs,
            frames=result.frames,
            frame_numbers=getattr(result, "frame_numbers", None),
            transfer_syntax=result.transfer_syntax,
            voi=result.voi,
            decoder=result.decoder,
            shape=result.shape,
            reduce=result.reduce,
            resize=getattr(result, "resize", None),
            gallery=_gallery_fields(result),
            shard=getattr(result, "shard", None),
            fingerprint=fingerprint if status in DONE_STATUSES else None,
            timings={k: round(v, 6) for k, v in result.timings.items() if v},
        )

    @staticmethod
    def line_of(source: Any, result: Any, fingerprint: str | None = None) -> str:
        """``from_result(source, result, fingerprint).to_json()``, the same line, built directly
        (the parent makes one per input while the workers compete for the same cores)."""
        return dumps(Record.data_of(source, result, fingerprint))

    @staticmethod
    def data_of(source: Any, result: Any, fingerprint: str | None = None) -> dict[str, Any]:
        """The JSON object of :meth:`line_of` (its fields that are not None)."""
        status = result.status
        if status.__class__ is not Status:
            status = Status(status)
        data = {
            "source": source.path, "status": status.value, "reason": result.reason,
            "size": getattr(source, "size", None), "mtime_ns": getattr(source, "mtime_ns", None),
            "rel": getattr(source, "rel", None), "outputs": result.outputs, "frames": result.frames,
            "frame_numbers": getattr(result, "frame_numbers", None), "transfer_syntax": result.transfer_syntax,
            "voi": result.voi, "decoder": result.decoder, "shape": result.shape, "reduce": result.reduce,
            "resize": getattr(result, "resize", None), "gallery": _gallery_fields(result),
            "shard": getattr(result, "shard", None),
            "fingerprint": fingerprint if status in DONE_STATUSES else None,
            "timings": {k: round(v, 6) for k, v in result.timings.items() if v}, "time": round(time.time(), 3),
        }
        for key in [k for k, v in data.items() if v is None]:  # (with the status check: 4.4 -> 4.0 us a record)
            del data[key]
        return data

    def to_json(self) -> str:
        """One line of JSON (no newline). ASCII-only, so any path, even one with bytes that
        are not UTF-8, round-trips and the file is valid UTF-8 whatever the names."""
        data = {f: getattr(self, f) for f in _FIELDS}  # not asdict(): no deep copies, per record
        data["status"] = self.status.value
        extra = self.extra
        if self.time is None:
            data["time"] = round(time.time(), 3)
        data = {k: v for k, v in data.items() if v is not None}
        for k, v in extra.items():
            data.setdefault(k, v)
        return dumps(data)

    @classmethod
    def from_json(cls, line: str) -> "Record":
        """Parse one line; ``ValueError`` if it is not a complete record."""
        data = loads(line)
        if not isinstance(data, dict) or "source" not in data or "status" not in data:
            raise ValueError("not a manifest record (needs 'source' and 'status')")
        kwargs, extra = {}, {}
        for k, v in data.items():
            (kwargs if k in _KNOWN else extra)[k] = v
        return cls(**kwargs, extra=extra)

    @property
    def ok(self) -> bool:
        return self.status in DONE_STATUSES


def _gallery_fields(result: Any) -> dict[str, Any] | None:
    """A result's ``gallery`` entry: its grouping values, thumbnails and windows (--gallery)."""
    values = getattr(result, "gallery", None)
    if values is None and not getattr(result, "thumbs", None):
        return None
    entry = {k: v for k, v in (values or {}).items() if v is not None}
    if result.thumbs:
        entry["sheet"] = result.sheet
        entry["thumbs"] = result.thumbs
    windows = [_window(w) for w in result.windows or ()]
    if any(w is not None for w in windows):
        entry["windows"] = windows
    return entry


def _window(window: Any) -> list[float] | None:
    if window is None or not all(math.isfinite(float(v)) for v in window):
        return None  # (a JSON line holds no NaN)
    return [round(float(window[0]), 4), round(float(window[1]), 4)]


_FIELDS = tuple(f.name for f in fields(Record) if f.name != "extra")
_KNOWN = frozenset(_FIELDS)  # the keys a record line may have as fields (the rest: extra)
#: The stdlib's encoder (one for every line: json.dumps with options builds a new one per call):
#: what a line is when orjson cannot write it the same way (see :func:`dumps`).
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def dumps(data: dict[str, Any]) -> str:
    """One record's JSON line: ASCII only (so any path, even bytes that are not UTF-8, round-trips).

    orjson writes it (0.5 against 5.6 us for a CT slice's record: the parent writes one per input
    while the workers compete for the same cores); a record orjson would write otherwise goes
    through the stdlib's encoder: text beyond ASCII (the stdlib escapes it, orjson writes UTF-8),
    a path with lone surrogates (bytes that are not UTF-8), integers beyond 64 bits, NaN (the
    stdlib refuses it, orjson writes null), numpy scalars."""
    try:
        out = orjson.dumps(data)
    except TypeError:  # (orjson.JSONEncodeError is one)
        return _ENCODER.encode(data)
    if not out.isascii() or b"null" in out:  # (a null may be a NaN orjson wrote: the stdlib refuses it)
        return _ENCODER.encode(data)
    return out.decode("ascii")


def loads(line: str | bytes) -> Any:
    """One line parsed: orjson (7.5 against 16.7 us a record, so ``--resume`` reads 10 million
    records a minute sooner); the stdlib's parser for what orjson refuses (its error then)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


class ManifestWriter:
    """Appends records to a manifest file, one JSON object per line.

    ``write`` buffers; ``write_batch`` writes a batch's lines and flushes them to the OS
    (so a crashed run loses at most the batch in flight); ``close`` flushes and fsyncs.
    Use it as a context manager. If the file ends with a truncated line (a crash mid-write),
    a newline is written first so the next record starts on a line of its own.
    """

    def __init__(self, path: str | os.PathLike, *, fsync_batches: bool = False, file: Any = None) -> None:
        """``file``: the manifest already opened for appending (``a+b``), e.g. through the
        output folder's fd without following symlinks; by default ``path`` is opened."""
        self.path = os.fspath(path)
        self.fsync_batches = fsync_batches
        self.count = 0
        self.failed = False
        self.written = 0  # bytes this writer appended (after the repair of a torn tail)
        self._end_size: int | None = None  # the file's size when this writer closed it
        self._file = file if file is not None else open(self.path, "a+b")
        self._repair_tail()
        self.start_size = self._file.tell()  # the bytes before this writer's first record

    def _repair_tail(self) -> None:
        self._file.seek(0, os.SEEK_END)
        if self._file.tell() > 0:
            self._file.seek(-1, os.SEEK_END)
            last = self._file.read(1)
            self._file.seek(0, os.SEEK_END)
            if last != b"\n":
                log.warning("manifest %s ends with a truncated record; starting a new line", self.path)
                self._file.write(b"\n")
                self._file.flush()

    def write(self, record: Record) -> None:
        self.write_batch([record])

    def write_batch(self, records: Iterable[Record]) -> None:
        """Append the records' lines (:meth:`write_lines`)."""
        self.write_lines([r.to_json() for r in records])

    def write_lines(self, lines: list[str]) -> None:
        """Append lines of JSON with one write() call to the O_APPEND file (a loop only if the
        system writes part of it): whole lines, also beside another run appending to it."""
        data = "".join(line + "\n" for line in lines).encode("ascii")
        if not data:
            return
        try:
            self._file.flush()
            fd = self._file.fileno()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync_batches:
                os.fsync(fd)
        except OSError:
            self.failed = True  # a torn last line is repaired when the manifest is next opened
            raise
        self.count += data.count(b"\n")
        self.written += len(data)

    def head_lines(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The lines before this writer's first record (the first :attr:`start_size` bytes),
        read through the open file (no second open of the path)."""
        fd, pos, rest = self._file.fileno(), 0, b""
        while pos < self.start_size:
            data = os.pread(fd, min(chunk, self.start_size - pos), pos)
            if not data:
                break
            pos += len(data)
            lines = (rest + data).split(b"\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest

    def only_mine(self) -> bool:
        """Whether everything after :attr:`start_size` is what this writer wrote: no other run
        appended to the file meanwhile (its size, or its size when closed, is the start plus
        this writer's bytes)."""
        size = self._end_size
        if size is None:
            try:
                size = os.fstat(self._file.fileno()).st_size
            except (OSError, ValueError):
                return False
        return size == self.start_size + self.written

    def flush(self, *, fsync: bool = False) -> None:
        self._file.flush()
        if fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self.flush(fsync=True)
        except OSError:
            if not self.failed:  # the failure was reported when a write failed
                raise
        finally:
            try:
                self._end_size = os.fstat(self._file.fileno()).st_size
            except OSError:
                pass
            try:
                self._file.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_manifest(path: str | os.PathLike, *, strict: bool = False, storage_options: dict | None = None) -> Iterator[Record]:
    """Stream the records of a manifest (a path, or an object-store URL read with ``storage_options``).

    A line that does not parse (the truncated tail of a crashed run, possibly followed by
    later runs' records) is skipped with a warning; ``strict=True`` raises ``ValueError``
    for any bad line except a last line without a newline (a crash mid-write is expected).
    """
    from ..storage import is_url, open_input

    remote = is_url(os.fspath(path))
    with (open_input(os.fspath(path), storage_options) if remote else open(path, "rb")) as stream:
        number = 0
        for raw in stream:
            number += 1
            complete = raw.endswith(b"\n")
            line = raw.strip()
            if not line:
                continue
            try:
                record = Record.from_json(line.decode("utf-8"))
            except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                if strict and complete:
                    raise ValueError(f"{os.fspath(path)}:{number}: bad manifest line: {exc}") from exc
                log.warning("%s:%d: skipping a bad manifest line (%s)", os.fspath(path), number, exc)
                continue
            yield record


@dataclass(frozen=True, slots=True)
class Previous:
    """What the manifest says about one input: its latest record's status, options
    fingerprint, size, mtime and outputs (what ``--resume`` needs, not the whole record; slotted,
    its fingerprint shared: a resume holds one per input of the manifest)."""

    status: Status
    fingerprint: str | None
    size: int | None
    mtime_ns: int | None
    outputs: tuple[str, ...]
    shard: str | None = None  # the shard holding the outputs (they are its members, not files)

    def done(self, size: int, mtime_ns: int, fingerprint: str) -> bool:
        """Converted (or skipped because its outputs existed) from this very file with these options."""
        return (
            self.status in DONE_STATUSES
            and self.fingerprint == fingerprint
            and (self.size, self.mtime_ns) == (size, mtime_ns)
            and bool(self.outputs)
        )


def resume_index(path: str | os.PathLike, storage_options: dict | None = None) -> dict[bytes, Previous]:
    """The latest record of every input in a manifest, by ``naming.owner_key(source)``.
    A missing manifest gives an empty index; unreadable lines are skipped (read_manifest).
    ``path`` may be an object-store URL (``storage_options`` for fsspec, storage.py)."""
    from ..naming import owner_key
    from ..storage import exists, is_url

    index: dict[bytes, Previous] = {}
    remote = is_url(os.fspath(path))
    if not (exists(os.fspath(path), storage_options) if remote else os.path.exists(path)):
        return index
    for record in read_manifest(path, storage_options=storage_options):
        fingerprint = record.fingerprint
        index[owner_key(record.source)] = Previous(
            record.status, fingerprint if fingerprint is None else sys.intern(fingerprint), record.size,
            record.mtime_ns, tuple(record.outputs), record.shard,
        )
    return index


def summarize(records: Iterable[Record | Status | str]) -> Counter:
    """Count records (or bare statuses) by :class:`~fastdcm.errors.Status`."""
    counter: Counter = Counter()
    for item in records:
        status = item.status if isinstance(item, Record) else item
        counter[Status(status)] += 1
    return counter


def format_summary(counter: Counter, *, discovered: int | None = None) -> str:
    """A small table, one row per status that occurred (in the order of the Status enum),
    then the total. With ``discovered``, a mismatch with the total is shown loudly: every
    discovered input must have exactly one status."""
    total = sum(counter.values())
    rows = [(s.value, counter[s]) for s in Status if counter.get(s)]
    rows += sorted((str(k), v) for k, v in counter.items() if not isinstance(k, Status) and v)
    width = max([len("status"), len("total")] + [len(name) for name, _ in rows])
    num = max(len("count"), len(str(total)))
    lines = [f"{'status':<{width}}  {'count':>{num}}  {'share':>6}"]
    lines.append("-" * len(lines[0]))
    for name, count in rows:
        share = 100.0 * count / total if total else 0.0
        lines.append(f"{name:<{width}}  {count:>{num}}  {share:>5.1f}%")
    lines.append("-" * len(lines[0]))
    lines.append(f"{'total':<{width}}  {total:>{num}}")
    if discovered is not None and discovered != total:
        lines.append(f"MISMATCH: {discovered} inputs discovered but {total} statuses recorded")
    return "\n".join(lines)


class ManifestSink:
    """The run's manifest as a sink: one record per accepted result, one write and flush per
    batch (lines written whole); a write that fails raises :class:`SinkFailed` naming the file."""

    def __init__(self, writer: ManifestWriter, fingerprint: str | None = None, *, keep: bool = False) -> None:
        """``keep``: keep what the gallery needs of each record written (its
        :class:`~fastdcm.gallery.Entry`) in :attr:`kept` (by source, in the order of the latest
        records, as a reader of the file would see them): the run's gallery is built from them
        instead of parsing the manifest back at the end of the run."""
        self.writer = writer
        self.fingerprint = fingerprint
        self.lines: list[str] = []
        self.keep = keep
        self.kept: dict[str, Any] = {}
        self._shared: dict[Any, Any] = {}  # (entry_of's shared tuples)
        if keep:
            from ...gallery import entry_of

            self._entry_of = entry_of
        self._pending: list[Any] = []
        self._latest: dict[str, Any] | None = None

    @property
    def path(self) -> str:
        return os.fspath(self.writer.path)

    def accept(self, source: Any, result: Any) -> None:
        data = Record.data_of(source, result, self.fingerprint)
        self.lines.append(dumps(data))
        if self.keep:
            self._pending.append(self._entry_of(data, self._shared))

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        pending, self._pending = self._pending, []
        if not lines:
            return
        try:
            self.writer.write_lines(lines)
        except OSError as exc:  # disk full, I/O error
            raise SinkFailed(f"the manifest {self.path} cannot be written: {exc.strerror or exc}") from None
        kept = self.kept
        for entry in pending:  # (kept only once written: what a reader of the file would find)
            kept.pop(entry.source, None)
            kept[entry.source] = entry

    def latest(self) -> dict[str, Any] | None:
        """Every input's latest record (its gallery :class:`~fastdcm.gallery.Entry`) in the order a
        reader of the whole file finds them, as of :meth:`close`: the records before this run's (read
        back then, up to where this run began) and this run's, kept. None when another run appended
        to the file meanwhile (read it whole then), when nothing was kept, or before close."""
        return self._latest

    def _merge(self) -> dict[str, Any] | None:
        writer = self.writer
        if not self.keep or not writer.only_mine():
            return None
        from ...gallery import latest_records

        latest = latest_records(writer.head_lines(), self.path) if writer.start_size else {}
        for source, data in self.kept.items():
            latest.pop(source, None)
            latest[source] = data
        return latest

    def close(self) -> None:
        try:
            self._latest = self._merge()
        except (OSError, ValueError) as exc:  # the page's build then reads the file itself
            log.debug("the manifest's records not kept for the gallery: %s", exc)
            self._latest = None
        try:
            self.writer.close()  # flushes and fsyncs
        except OSError as exc:
            raise SinkFailed(f"the manifest {self.path} cannot be written: {exc.strerror or exc}") from None
