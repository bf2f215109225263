"""Shard containers (``--container webdataset|parquet``): a batch's images in one file, written atomically.

A run's batches are its shards (``--shard-size`` inputs each; a multi-frame input's frames stay in
its shard). Each worker writes the shard of the batch it runs into a file of the run's own
temporary folder as the inputs are accepted, and at the end of the batch, before the batch's
results are sent, renames it into ``OUT/shards/`` (:meth:`ShardSink.end_batch`): a shard is
complete or absent, and every record that names a shard names one that is there. A batch stopped
part-way (Ctrl-C, a worker killed) leaves no shard and none of its inputs is recorded converted,
so ``--resume`` redoes exactly the inputs of the shards that are missing. An input that fails
leaves nothing in the shard (its images are held until it is accepted).

Samples
-------
Every output image is one sample, keyed by its output name without the extension, with the dots
of the last component made underscores (``webdataset`` splits a member name at the first dot:
``a/1.2.840.5.png`` would be key ``a/1`` with extension ``2.840.5.png``). A sample has:

- ``webdataset``: tar members ``KEY.png`` (or ``.jpg``, ``.npy``) and ``KEY.json``, in a POSIX tar
  (``shards/<run>-<pid>-<n>.tar``) as the ``webdataset`` package reads it
  (``wds.WebDataset(sorted(glob("OUT/shards/*.tar")))``);
- ``parquet``: one row of ``shards/<run>-<pid>-<n>.parquet``, columns ``__key__``, ``image``
  (the encoded bytes), ``format`` (the extension), ``source`` (null without ``--allow-phi``),
  ``frame``, ``rows``, ``columns`` and ``json``.

The JSON is the sample's part of the manifest record (the output name, the frame number, transfer
syntax, VOI, window, shape, resize mapping, decoder; the source's relative path only with
``--allow-phi``: folder names of an export often name the patient, and shards are the dataset that
gets shared, the manifest stays with the run) and, with ``--metadata``, the chosen attributes'
values (``metadata``: identifiers refused or pseudonymized as in the table).
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
import time
from typing import Any, Sequence

from ...errors import MissingDependencyError, Status
from ..executors import worker_label
from ..storage import open_root
from ..write import OutputRoot
from . import Blocked

__all__ = ["ShardSink", "SHARDS", "CONTAINERS", "shard_member", "shard_prefix"]

#: Where the shards go, under OUT.
SHARDS = "shards"
CONTAINERS = ("webdataset", "parquet")
_EXTENSIONS = {"webdataset": ".tar", "parquet": ".parquet"}
#: Parquet rows per row group (the image bytes of a group are held until it is written).
_ROW_GROUP = 64


def shard_member(name: str, extension: str) -> str:
    """An output name as a sample's member name: the last component's dots (but the
    extension's) made underscores, so the key is everything before the extension."""
    stem = name[: -len(extension)] if extension and name.endswith(extension) else name
    folder, _, leaf = stem.rpartition("/")
    leaf = leaf.replace(".", "_")
    return (folder + "/" if folder else "") + leaf + extension


def shard_prefix(run_start_ns: int) -> str:
    """What the names of one run's shards start with (``shards/<run>-``)."""
    return f"{SHARDS}/{run_start_ns:x}-"


def existing_shards(root: OutputRoot) -> list[str]:
    return sorted(n for n in root.listdir(SHARDS) if n.endswith(tuple(_EXTENSIONS.values())))


def read_shard(f: Any, name: str) -> dict[str, bytes]:
    """A shard's images by member name (``fastdcm gallery`` making thumbnails of a run made
    without ``--gallery``); ``f`` is the shard file, opened for reading."""
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(f, columns=["__key__", "format", "image"])
        return {f"{k}.{e}": v for k, e, v in zip(*(table.column(c).to_pylist() for c in ("__key__", "format", "image")))}
    images = {}
    with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if member.isfile() and not member.name.endswith(".json"):
                images[member.name] = tar.extractfile(member).read()
    return images


def _plain(value: Any) -> Any:
    """``value`` for JSON: NaN and infinities (a damaged float attribute) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Tar:
    def __init__(self, f: Any) -> None:
        self.tar = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)
        self.now = time.time()

    def add(self, key: str, member: str, data: bytes, record: bytes) -> None:
        for name, payload in ((member, data), (key + ".json", record)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), self.now, 0o644
            self.tar.addfile(info, io.BytesIO(payload))

    def close(self) -> None:
        self.tar.close()


class _Parquet:
    def __init__(self, f: Any) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # convert checked it before any work; a worker without it still says why
            raise MissingDependencyError("--container parquet needs pyarrow: pip install pyarrow") from None
        self.pa = pa
        self.schema = pa.schema([
            ("__key__", pa.string()), ("image", pa.binary()), ("format", pa.string()), ("source", pa.string()),
            ("frame", pa.int64()), ("rows", pa.int64()), ("columns", pa.int64()), ("json", pa.string()),
        ])
        self.writer = pq.ParquetWriter(f, self.schema, compression="zstd")
        self.rows: list[dict[str, Any]] = []

    def add(self, key: str, member: str, data: bytes, record: bytes, fields: dict[str, Any]) -> None:
        self.rows.append({"__key__": key, "image": data, "format": member[len(key) + 1:], "json": record.decode(), **fields})  # format: png, jpg, npy
        if len(self.rows) >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self.writer.close()


class ShardSink:
    """The image sink of ``--container webdataset|parquet`` (one per worker; see the module docstring)."""

    def __init__(self, out: str, tmp_name: str | None, *, container: str, run_start_ns: int, fsync: bool,
                 allow_phi: bool = False, tag: str = "", storage_options: dict | None = None) -> None:
        if container not in CONTAINERS:
            raise ValueError(f"unknown container {container!r}")
        self.root = open_root(out, tmp_name, storage_options)
        self.container = container
        self.prefix = shard_prefix(run_start_ns)
        self.fsync = fsync
        self.allow_phi = allow_phi  # the source's path in each sample (it may name the patient)
        self.worker = worker_label(tag)  # in shard names
        self.pending: list[tuple[str, bytes]] = []  # the input in progress' images
        self.file: Any = None  # the batch's open temporary file and its writer
        self.tmp: str | None = None
        self.writer: Any = None
        self.samples = 0
        self.seq = 0
        self.members: set[str] = set()  # the names already in the batch's shard

    @classmethod
    def for_job(cls, job: Any, tag: str = "") -> "ShardSink":
        return cls(job.out, job.tmp_name, container=job.container, run_start_ns=job.run_start_ns, fsync=job.fsync,
                   allow_phi=job.name_guard is None, tag=tag, storage_options=job.storage_options)

    # --------------------------------------------------------------- one input

    def begin(self, source: Any, names: Sequence[str], retry: bool) -> None:
        """Names are members of this batch's new shard: only another input of the same shard can
        be in the way (a name_conflict; across shards the parent's name registry finds it, after
        the shard is written: that record says name_conflict, its sample stays in its shard)."""
        self.pending.clear()
        taken = [name for name in names if name in self.members]
        if taken:
            raise Blocked(Status.NAME_CONFLICT, f"output {taken[0]} is written by another input of this shard", taken)

    def put(self, source: Any, name: str, data: bytes, retry: bool) -> None:
        self.pending.append((name, data))

    def accept(self, source: Any, result: Any) -> None:
        """The input converted: its images (and each one's JSON) go into the batch's shard."""
        if self.writer is None:
            self.file, self.tmp = self.root.open_temp("shard")
            self.writer = _Tar(self.file) if self.container == "webdataset" else _Parquet(self.file)
        metadata = getattr(result, "metadata", None)
        numbers = getattr(result, "frame_numbers", None)
        windows = getattr(result, "windows", None) or []
        for i, (name, data) in enumerate(self.pending):
            extension = os.path.splitext(name)[1]
            key = name[: len(name) - len(extension)]
            frame = numbers[i] if numbers else i + 1
            record = {
                "key": key, "source": (getattr(source, "rel", None) or source.path) if self.allow_phi else None,
                "output": name, "frame": frame,
                "transfer_syntax": result.transfer_syntax, "voi": result.voi, "decoder": result.decoder,
                "shape": result.shape, "window": list(windows[i]) if i < len(windows) and windows[i] else None,
                "resize": getattr(result, "resize", None), "reduce": result.reduce,
            }
            if metadata is not None:
                record["metadata"] = metadata
            text = json.dumps(_plain({k: v for k, v in record.items() if v is not None}), ensure_ascii=True,
                              allow_nan=False, default=str).encode()
            if self.container == "webdataset":
                self.writer.add(key, name, data, text)
            else:
                rows, cols = (result.shape or [None, None])[:2]
                self.writer.add(key, name, data, text, {"source": record["source"], "frame": frame, "rows": rows, "columns": cols})
            self.members.add(name)
            self.samples += 1
        self.pending.clear()

    def discard(self) -> None:
        self.pending.clear()

    def withdraw(self, names: Sequence[str]) -> None:
        """The batch was stopped part-way: its shard never appears."""
        self._abandon()

    # --------------------------------------------------------------- the batch

    def end_batch(self, results: Sequence[Any]) -> None:
        """Publish the batch's shard and name it in each converted result, or, if it cannot be
        written (a full disk), make those results ``write_error``: their images are not there."""
        if self.writer is None:
            return
        name = f"{self.prefix}{self.worker}-{self.seq:06d}{_EXTENSIONS[self.container]}"
        self.seq += 1
        try:
            self.writer.close()
            self.file.flush()
            if self.fsync:
                os.fsync(self.file.fileno())
            self.file.close()
            self.root.publish(self.tmp, name)
        except (OSError, ValueError) as exc:
            reason = f"shard {name} not written: {getattr(exc, 'strerror', None) or exc}"
            self._abandon()
            for result in results:
                if result.status is Status.CONVERTED:
                    result.status, result.reason, result.outputs, result.thumbs = Status.WRITE_ERROR, reason, [], None
            return
        self.file = self.writer = self.tmp = None
        self.members.clear()
        for result in results:
            if result.status is Status.CONVERTED:
                result.shard = name

    def remove(self, name: str) -> None:
        """Remove a published shard (the batch's results were never sent)."""
        self.root.remove(name)

    def _abandon(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except (OSError, ValueError):
                pass
        if self.tmp is not None:
            self.root.discard_temp(self.tmp)
        self.file = self.writer = self.tmp = None
        self.members.clear()

    def close(self) -> None:
        self._abandon()
        self.root.close()
