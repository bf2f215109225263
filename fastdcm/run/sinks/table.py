"""The metadata table: one row per output image (one per failed input), written in the same pass.

``--metadata metadata.parquet`` (or ``.csv``) inside OUT. The workers send only the values of the
chosen attributes (:mod:`..tags`), never the dataset; this sink, in the parent, buffers rows and
writes them as Parquet *parts* of :data:`ROWS_PER_PART` rows into ``OUT/.<table>.parts/`` (each
part written in the run's temporary folder and renamed into place: complete or absent), so
memory stays flat and a crashed run keeps what it recorded. When the run ends (also on Ctrl-C or a
failed manifest) the parts and the table that was there are merged into the new table, written
atomically: for every source the newest rows win, so a re-run or ``--resume`` never duplicates
rows, and rows of inputs this run did not touch stay. A crash before the merge leaves the parts;
the next run merges them.

Columns: ``output`` (relative to OUT; null for a failed input), ``source``, ``frame`` (1-based),
``status``, ``reason``, ``transfer_syntax``, ``voi`` (the VOI step used), ``window_center`` and
``window_width`` (the linear mapping used: the window, or min-max's middle and span), ``decoder``,
then one typed column per chosen attribute. In CSV, list values are joined with ``\\`` as DICOM does.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Sequence

import numpy as np

from ...errors import InvalidOptionError, MissingDependencyError
from ..tags import TagSpec
from ..write import OutputRoot
from . import SinkFailed

__all__ = ["MetadataSink", "read_metadata", "base_schema", "table_schema", "check_table_name", "ROWS_PER_PART"]

#: Rows buffered before a part is written: a crash loses at most these, and memory
#: stays flat (the rows are held as Arrow record batches: see ROWS_PER_BATCH).
ROWS_PER_PART = 4096
#: Rows kept as Python tuples before they become one Arrow record batch, while the run goes on
#: (``flush``): the table's end then converts at most these, not every row of a small run in the
#: run's serial tail (3.4 ms of 13 for 1,000 CT rows), and a batch holds a row in a fraction of
#: a tuple's memory. (The default columns: 2.5 us a row in batches of 256, 2.2 in 512, 4.9 in 64.)
ROWS_PER_BATCH = 256
_SEPARATOR = "\\"


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "the metadata table needs pyarrow: pip install pyarrow (or pip install 'fastdcm[dataset]')"
        ) from None
    return pa


def base_schema() -> list[tuple[str, str]]:
    """The columns before the attributes', in order (``MetadataSink.accept`` builds its rows so)."""
    return [
        ("output", "str"), ("source", "str"), ("frame", "int"), ("status", "str"), ("reason", "str"),
        ("transfer_syntax", "str"), ("voi", "str"), ("window_center", "float"), ("window_width", "float"),
        ("decoder", "str"), ("rows", "int"), ("columns", "int"), ("scale_rows", "float"), ("scale_columns", "float"),
        ("offset_rows", "float"), ("offset_columns", "float"), ("shard", "str"),
    ]


def table_schema(specs: Sequence[TagSpec]) -> Any:
    pa = _pa()
    kinds = {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}
    fields = [pa.field(name, kinds[kind]) for name, kind in base_schema()]
    taken = {f.name for f in fields}
    for spec in specs:
        name = spec.column if spec.column not in taken else f"tag:{spec.column}"
        fields.append(pa.field(name, pa.list_(kinds[spec.kind]) if spec.multi else kinds[spec.kind]))
    return pa.schema(fields)


def check_table_name(out: str, path: str) -> str:
    """The table's name relative to OUT (a relative path is taken relative to OUT); it must be
    inside OUT and end in .parquet or .csv. InvalidOptionError otherwise."""
    full = os.path.normpath(os.path.join(out, path))
    rel = os.path.relpath(full, out)
    if rel == os.curdir or rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        raise InvalidOptionError(f"--metadata {path}: the table is written inside the output folder {out}, not outside it")
    if not rel.lower().endswith((".parquet", ".csv")):
        raise InvalidOptionError(f"--metadata {path}: name a .parquet or .csv file")
    return rel.replace(os.sep, "/")


def _parts_folder(name: str) -> str:
    folder, leaf = os.path.split(name)
    return (folder + "/" if folder else "") + f".{leaf}.parts"


class MetadataSink:
    """The table as a sink of the parent (see the module docstring)."""

    def __init__(self, root: OutputRoot, name: str, specs: Sequence[TagSpec]) -> None:
        self.pa = _pa()
        # This run's rows and their Parquet coding in the C library's malloc, not pyarrow's default
        # pool (mimalloc in the wheels; an older table or its parts read back still use that): in a
        # parent that has forked workers, that pool's memory is shared with them copy-on-write, and a
        # run's end with 4,000 rows spent 33-72 ms making the rows one chunk and 27-42 ms coding the
        # Parquet in most runs (3 of 4) against 3-5 and 8-12 ms here (thread CPU time; without forked
        # workers only a process' first table was slow). The tail of a 2,000-file run with --metadata
        # --gallery: 28-31 -> 20-21 ms (medians of 5), the outliers of 40-127 ms gone.
        self.pool = self.pa.system_memory_pool()
        self.root = root
        self.name = name
        self.specs = tuple(specs)
        self.schema = table_schema(self.specs)
        self.columns = [f.name for f in self.schema]
        self.parts = _parts_folder(name)
        self.tag_keys = tuple(spec.column for spec in self.specs)  # (their values' keys in a result)
        self.rows: list[tuple] = []  # the newest rows: a tuple per row, in the schema's order
        self.batches: list[Any] = []  # the rows before them, not written yet: Arrow record batches
        self.held = 0  # rows in ``batches``
        self.seq = 0
        self.known: set[str] | None = None  # sources with rows, read on first use (has_rows)

    # ------------------------------------------------------------------ what is there

    def _files(self) -> tuple[list[str], bool]:
        """(names of the parts under OUT, oldest first; whether the table exists)."""
        parts = sorted(self.parts + "/" + n for n in self.root.listdir(self.parts) if n.endswith(".parquet"))
        return parts, self.root.exists(self.name)

    def has_rows(self, source: str) -> bool:
        """Whether the table or its parts hold rows of ``source`` (``--resume`` redoes a converted
        input without any: its rows were lost in a crash before its part was written)."""
        if self.known is None:
            self.known = set()
            parts, exists = self._files()
            for name in ([self.name] if exists else []) + parts:
                for batch in self._read(name, columns=["source"]):
                    self.known.update(batch.column(0).to_pylist())
        return source in self.known

    # ------------------------------------------------------------------ rows

    def accept(self, source: Any, result: Any) -> None:
        values = result.metadata or {}
        status = getattr(result.status, "value", str(result.status))
        outputs = result.outputs if status in ("converted", "skipped") else []
        n = max(1, len(outputs))
        windows = result.windows or []
        vois = result.voi.split(",") if result.voi and "," in result.voi else [result.voi]
        shape = result.shape if outputs else None
        numbers = getattr(result, "frame_numbers", None)
        shard = getattr(result, "shard", None) if outputs else None
        mapping = getattr(result, "resize", None)
        if mapping is not None:
            scale, offset = mapping["scale"], mapping["offset"]
        else:  # not resized: the frame's own size (halved ``reduce`` times)
            scale, offset = [0.5 ** (result.reduce or 0)] * 2, [0, 0]
        tags = tuple(map(values.get, self.tag_keys))
        path, reason, syntax, decoder = source.path, result.reason or None, result.transfer_syntax, result.decoder
        rows, columns = (shape[0], shape[1]) if shape else (None, None)
        scaled = (scale[0], scale[1], offset[0], offset[1]) if shape else (None, None, None, None)
        buffer = self.rows
        for i in range(n):  # one tuple a row in base_schema()'s order (the columns are made at the flush)
            window = windows[i] if i < len(windows) else None
            buffer.append((
                outputs[i] if outputs else None, path, (numbers[i] if numbers else i + 1) if outputs else None,
                status, reason, syntax, vois[i] if i < len(vois) else vois[0],
                window[0] if window else None, window[1] if window else None, decoder, rows, columns,
            ) + scaled + (shard,) + tags)

    def flush(self) -> None:
        if self.held + len(self.rows) >= ROWS_PER_PART:
            self._write_part()
        elif len(self.rows) >= ROWS_PER_BATCH:
            self._convert()

    def _convert(self) -> None:
        """The tuples buffered so far as one record batch (columns typed by the schema)."""
        rows, self.rows = self.rows, []
        arrays = [self.pa.array(column, type=field.type, memory_pool=self.pool) for column, field in zip(zip(*rows), self.schema)]
        self.batches.append(self.pa.RecordBatch.from_arrays(arrays, schema=self.schema))
        self.held += len(rows)

    def settle(self) -> None:
        """Make the rows held so far one record batch now: ``convert`` calls this before the table's
        end runs in a thread beside the gallery's build, so that what the thread does is mostly the
        Parquet coding, which lets go of the GIL (a thread that needs the GIL while the build's
        Python code runs waits up to the interpreter's switch interval, 5 ms, each time)."""
        if self.rows:
            self._convert()
        if len(self.batches) > 1:
            self.batches = self.pa.Table.from_batches(self.batches, schema=self.schema).combine_chunks(self.pool).to_batches()

    def _take_buffer(self) -> Any:
        """The buffered rows as a pyarrow Table (None when there are none); the buffer starts anew."""
        if self.rows:
            self._convert()
        if not self.batches:
            return None
        batches, self.batches, self.held = self.batches, [], 0
        # one chunk: the merge writes a row group per record batch (1,000 rows in two batches of 512:
        # 6.1 against 4.6 ms in one)
        return self.pa.Table.from_batches(batches, schema=self.schema).combine_chunks(self.pool)

    def _write_part(self) -> None:
        table = self._take_buffer()
        if table is None:
            return
        self.seq += 1
        name = f"{self.parts}/{time.time_ns():020d}-{os.getpid()}-{self.seq:06d}.parquet"
        try:
            self._publish(name, lambda f: self._parquet(table, f))
        except OSError as exc:
            raise SinkFailed(f"the metadata table {self.root.path}/{self.name} cannot be written: {exc.strerror or exc}") from None

    def _parquet(self, table: Any, f: Any) -> None:
        import pyarrow.parquet as pq

        pq.write_table(table, f, compression="zstd", memory_pool=self.pool)

    def _publish(self, name: str, write) -> None:
        f, tmp = self.root.open_temp(os.path.basename(name))
        try:
            with f:
                write(f)
            self.root.publish(tmp, name)
        finally:
            self.root.discard_temp(tmp)

    # ------------------------------------------------------------------ the merge

    def _read(self, name: str, columns: list[str] | None = None) -> Iterator[Any]:
        """Record batches of a table or part under OUT, conformed to this run's schema."""
        import pyarrow.parquet as pq

        f = self.root.open_read(name)
        with f:
            if name.lower().endswith(".csv"):
                batches = _csv_batches(f, self.schema)
            else:
                batches = pq.ParquetFile(f).iter_batches(columns=None)
            for batch in batches:
                batch = _conform(self.pa, batch, self.schema)
                yield batch.select(columns) if columns else batch

    def close(self) -> None:
        """Merge the parts, the old table and the rows still buffered into the new table (the
        buffered rows straight from memory: a run of fewer than ROWS_PER_PART rows writes its table
        once, not a part first that the merge reads back)."""
        try:
            self._merge(self._take_buffer())
        except OSError as exc:
            raise SinkFailed(f"the metadata table {self.root.path}/{self.name} cannot be written: {exc.strerror or exc}") from None

    def _merge(self, last: Any = None) -> None:
        """``last``: this run's newest rows, not written anywhere yet (a pyarrow Table, or None)."""
        parts, exists = self._files()
        if not parts and last is None:
            return
        sources: list[str | None] = ([self.name] if exists else []) + parts  # oldest first
        if last is not None:
            sources.append(None)  # (None: the rows in memory)
        keep: dict[str | None, list[np.ndarray]] = {}
        if len(sources) == 1:  # nothing older to replace: every row stays
            keep[sources[0]] = [np.ones(len(b), bool) for b in self._batches(sources[0], last, ["source"])]
        else:  # newest first: a source's rows in a newer file replace its rows in every older one
            seen = np.empty(0, np.int64)
            for name in reversed(sources):
                hashes = [np.fromiter((hash(s) for s in b.column(0).to_pylist()), np.int64)
                          for b in self._batches(name, last, ["source"])]
                keep[name] = [~np.isin(h, seen) for h in hashes]
                if hashes:
                    seen = np.union1d(seen, np.concatenate(hashes))
        pa = self.pa

        def write(f: Any) -> None:
            if sources == [None] and not self.name.lower().endswith(".csv"):  # only this run's rows, in memory
                import pyarrow.parquet as pq

                encoded = pa.BufferOutputStream(self.pool)  # coded in one call, without the GIL
                pq.write_table(last, encoded, compression="zstd", memory_pool=self.pool)
                f.write(encoded.getvalue())
                return
            if self.name.lower().endswith(".csv"):
                import pyarrow.csv as pacsv

                with pacsv.CSVWriter(f, _csv_schema(pa, self.schema)) as w:
                    for batch in self._merged(sources, keep, last):
                        w.write_batch(_for_csv(pa, batch))
            else:
                import pyarrow.parquet as pq

                with pq.ParquetWriter(f, self.schema, compression="zstd", memory_pool=self.pool) as w:
                    for batch in self._merged(sources, keep, last):
                        w.write_batch(batch)

        self._publish(self.name, write)
        for name in parts:
            self.root.remove(name)
        self.root.remove_empty_folder(self.parts)

    def _batches(self, name: str | None, last: Any, columns: list[str] | None = None) -> Iterator[Any]:
        """Record batches of the file ``name`` under OUT, or of ``last`` (the rows in memory) for None."""
        if name is not None:
            yield from self._read(name, columns)
        else:
            yield from (last.select(columns) if columns else last).to_batches()

    def _merged(self, sources: list[str | None], keep: dict[str | None, list[np.ndarray]], last: Any) -> Iterator[Any]:
        for name in sources:
            for batch, mask in zip(self._batches(name, last), keep[name]):
                if mask.all():
                    yield batch
                elif mask.any():
                    yield batch.filter(self.pa.array(mask))


# --------------------------------------------------------------------------- conversions


def _conform(pa: Any, batch: Any, schema: Any) -> Any:
    """A batch with exactly ``schema``'s columns: missing ones null, others cast (a table written
    with other ``--tags`` merges into this run's)."""
    arrays = []
    names = batch.schema.names
    for field in schema:
        if field.name in names:
            col = batch.column(names.index(field.name))
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    col = pa.nulls(len(col), field.type)
        else:
            col = pa.nulls(batch.num_rows, field.type)
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _csv_schema(pa: Any, schema: Any) -> Any:
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_list(f.type) else f.type) for f in schema])


def _for_csv(pa: Any, batch: Any) -> Any:
    arrays = []
    for field, col in zip(batch.schema, batch.columns):
        if pa.types.is_list(field.type):
            col = pa.array(
                [None if v is None else _SEPARATOR.join(_fmt(x) for x in v) for v in col.to_pylist()], pa.string()
            )
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, schema=_csv_schema(pa, batch.schema))


def _fmt(x: Any) -> str:
    return repr(x) if isinstance(x, float) else str(x)


def _csv_batches(f: Any, schema: Any) -> Iterator[Any]:
    """A CSV table's record batches, streamed, with ``schema``'s types (lists split at ``\\``)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {fld.name: pa.string() for fld in schema}
    reader = pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    for batch in reader:
        arrays = []
        names = batch.schema.names
        for fld in schema:
            if fld.name not in names:
                arrays.append(pa.nulls(batch.num_rows, fld.type))
                continue
            col = batch.column(names.index(fld.name))
            if pa.types.is_list(fld.type):
                values = [None if v is None else v.split(_SEPARATOR) for v in col.to_pylist()]
                col = pa.array(values, pa.list_(pa.string())).cast(fld.type)
            elif not fld.type.equals(pa.string()):
                col = col.cast(fld.type)
            arrays.append(col)
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def read_metadata(path: str | os.PathLike) -> Any:
    """A metadata table written by ``convert(..., metadata=...)`` as a pyarrow Table (``.parquet``
    or ``.csv``; list columns of a CSV come back as lists). ``.to_pandas()`` gives a DataFrame."""
    pa = _pa()
    path = os.fspath(path)
    if path.lower().endswith(".csv"):
        import csv

        with open(path, encoding="utf-8", newline="") as text:
            columns = next(csv.reader(text), [])
        schema = table_schema(_specs_of(columns))
        with open(path, "rb") as f:
            return pa.Table.from_batches(list(_csv_batches(f, schema)), schema=schema)
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _specs_of(columns: list[str]) -> tuple[TagSpec, ...]:
    from ..tags import parse_tags

    base = {name for name, _ in base_schema()}
    tags = [c for c in columns if c not in base]
    return parse_tags(tags, allow_phi=True) if tags else ()  # reading back what a run (maybe with --allow-phi) wrote
