"""Object storage through fsspec: ``s3://``, ``gs://``, ``az://``, any fsspec URL, for inputs and outputs.

Local paths never come here (:func:`is_url` is False for them) and keep the directory-fd writer
of :mod:`.write`. A URL input is listed prefix by prefix as the run goes (:func:`walk`) and each
object is read by its worker with one GET of the whole object (the conversion needs every byte
of a frame's pixel data and the header before it; a second ranged request would cost more than
it saves on objects of an archive's usual sizes). A URL output is an :class:`ObjectRoot`, which
does for an object store what :class:`~.write.OutputRoot` does for a folder:

- an image is one PUT: the object appears complete or not at all (S3 and its peers never show a
  partial object, multipart uploads included); a name that must stay free is written with the
  store's conditional create where fsspec offers it (``mode="create"``: S3 ``If-None-Match``),
  else after a check that it is free;
- names are the pipeline's plain relative names (no ``..``, no empty part), always under OUT;
- files built in pieces (the manifest, the metadata table's parts, shards) are built in anonymous
  temporary files (never named, gone when the run ends) and uploaded whole; the manifest is
  uploaded at most every 30 s (less often as it grows: its uploads take at most a tenth of the
  run) and when the run ends. A run killed in between loses the records of those seconds, never
  an image: ``--resume`` finds their outputs and replaces them;
- each run's markers live under ``OUT/.fastdcm-tmp-<pid>-<random>/``, removed at the end.

Credentials come from the store's usual environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``,
``AZURE_*``, config files) or ``--storage-options`` (JSON, or ``@FILE`` holding JSON), passed to
fsspec as they are; they are never written to the manifest, the table or the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any, Iterator

from ..errors import InvalidOptionError, MissingDependencyError, UnsafePathError, describe
from .write import Exists, _components

__all__ = ["is_url", "parse_storage_options", "filesystem", "ObjectRoot", "walk", "read_object", "join"]

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MANIFEST_EVERY = 30.0  # seconds between uploads of the manifest (at least)


def is_url(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL other than a local file (``file://`` is a local path)."""
    return isinstance(path, str) and bool(_URL.match(path)) and not path.lower().startswith("file://")


def join(url: str, name: str) -> str:
    return url.rstrip("/") + "/" + name


def parse_storage_options(value: Any) -> dict | None:
    """``--storage-options``: a dict (Python), JSON text, or ``@FILE`` holding JSON."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value)
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidOptionError(f"--storage-options {text}: cannot be read: {exc.strerror or exc}") from None
    try:
        options = json.loads(text)
    except ValueError:
        # The text may hold a secret: never echoed.
        raise InvalidOptionError("--storage-options must be a JSON object (or @FILE holding one)") from None
    if not isinstance(options, dict):
        raise InvalidOptionError("--storage-options must be a JSON object (or @FILE holding one)")
    return options


_FS_CACHE: dict[tuple[str, str], Any] = {}
_FS_LOCK = threading.Lock()


def filesystem(url: str, options: dict | None = None) -> tuple[Any, str]:
    """(the fsspec file system of ``url``, the path in it), one instance per protocol and options
    in a process. Listings are not cached: an output written a moment ago must be seen."""
    try:
        import fsspec
    except ImportError:
        raise MissingDependencyError(
            f"{url.split('://')[0]}:// paths need fsspec and the store's driver: pip install 'fastdcm[storage]' "
            "(s3fs for s3://, gcsfs for gs://, adlfs for az://)"
        ) from None
    protocol = url.split("://", 1)[0].lower()
    _quiet_store_loggers()
    key = (protocol, json.dumps(options or {}, sort_keys=True, default=str))
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            try:
                cls = fsspec.get_filesystem_class(protocol)
            except (ImportError, ValueError) as exc:
                raise MissingDependencyError(f"{protocol}:// paths: {exc}") from None
            fs = cls(**{"use_listings_cache": False, **(options or {})})
            _FS_CACHE[key] = fs
    return fs, fs._strip_protocol(url)


#: Their debug lines carry request headers (an access key's id, signatures): kept at WARNING, even
#: under ``fastdcm -v``, unless the caller gave them a level of their own.
_STORE_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "gcsfs", "adlfs", "azure", "urllib3", "google")


def _quiet_store_loggers() -> None:
    for name in _STORE_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _mtime_ns(info: dict) -> int:
    """An object's modification time in ns (0 when the store gives none)."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        try:
            from datetime import datetime

            return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1e9)
        except ValueError:
            continue
    return 0


def _store_errors(fn):
    """Failures of the store's driver that are not OSErrors (botocore's NoCredentialsError,
    EndpointConnectionError, ...) as OSErrors naming what failed, so that every caller's
    ``except OSError`` gives them a status or a usage error, never a bare traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (OSError, Exists, UnsafePathError, InvalidOptionError, MissingDependencyError):
            raise
        except Exception as exc:
            raise OSError(f"{describe(exc)}") from exc

    return wrapper


# --------------------------------------------------------------------------- inputs


def walk(url: str, options: dict | None) -> Iterator[tuple[str, str, int, int]]:
    """(URL, path relative to ``url``, size, mtime_ns) of every object under ``url``, a prefix at
    a time (sorted within it), or of ``url`` itself when it names one object."""
    fs, root = filesystem(url, options)
    protocol = url.split("://", 1)[0]
    info = None
    try:
        info = fs.info(root)
    except FileNotFoundError:
        pass
    if info is not None and info.get("type") == "file":
        yield url, root.rsplit("/", 1)[-1], int(info.get("size") or 0), _mtime_ns(info)
        return
    root = root.rstrip("/")
    stack = [root]
    while stack:
        folder = stack.pop()
        entries = sorted(fs.ls(folder, detail=True), key=lambda e: e["name"])
        subdirs = []
        for entry in entries:
            name = entry["name"].rstrip("/")
            if name == folder:
                continue
            if entry.get("type") == "directory":
                subdirs.append(name)
                continue
            rel = name[len(root) + 1 :]
            yield f"{protocol}://{name}", rel, int(entry.get("size") or 0), _mtime_ns(entry)
        stack.extend(reversed(subdirs))


@_store_errors
def read_object(url: str, options: dict | None, size: int | None = None) -> bytes:
    """The whole object: one GET. (s3fs first asks for the size, a HEAD, to fetch objects over its
    block size in concurrent ranges: with ``size`` known from the listing, objects under it are
    fetched without that request.)"""
    fs, path = filesystem(url, options)
    block = getattr(fs, "default_block_size", None)
    if size is not None and hasattr(fs, "max_concurrency") and block and size <= block:
        return fs.cat_file(path, max_concurrency=1)
    return fs.cat_file(path)


#: Objects at least this large, of which ``--frames`` selects some frames, are read in pieces.
RANGED_ABOVE = 8 << 20
_HEAD = 1 << 16  # the first read of such an object: its header, as a rule


@_store_errors
def read_range(url: str, options: dict | None, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive) of the object: one ranged GET."""
    fs, path = filesystem(url, options)
    return fs.cat_file(path, start=start, end=end)


def read_frames(url: str, options: dict | None, size: int, wanted: Any, parse: Any) -> bytearray | None:
    """The object as a buffer of its full ``size`` in which only the header, the frames ``wanted``
    picks and anything after the pixel data were read (ranged GETs); zeros elsewhere. ``parse(buffer)``
    gives the pixel module (``PixelSpec``); ``wanted(n_frames)`` the 0-based frames. None where that
    does not save or cannot be done: compressed or bit-packed pixel data (its frames are found by
    walking the data), a header longer than the first read, every frame wanted: read it whole."""
    head = read_range(url, options, 0, min(size, _HEAD))
    buffer = bytearray(size)  # zero pages are not touched until written
    buffer[: len(head)] = head
    try:
        spec = parse(bytes(buffer))
    except Exception:  # a header past the first read looks truncated: read it whole
        return None
    if spec.is_encapsulated or spec.pixel_offset < 0 or spec.pixel_offset > len(head) or spec.bits_allocated % 8:
        return None
    frame = spec.rows * spec.columns * spec.samples_per_pixel * spec.bits_allocated // 8
    n = spec.number_of_frames
    frames = list(wanted(n))
    if not frames or len(frames) == n or frame * n > spec.pixel_length:
        return None
    pieces = [(spec.pixel_offset + i * frame, spec.pixel_offset + (i + 1) * frame) for i in frames]
    pieces.append((spec.pixel_offset + spec.pixel_length, size))  # elements after the pixel data
    for start, end in pieces:
        start = max(start, len(head))
        if end > start:
            buffer[start:end] = read_range(url, options, start, end)
    return buffer


@_store_errors
def open_input(url: str, options: dict | None, mode: str = "rb") -> Any:
    fs, path = filesystem(url, options)
    return fs.open(path, mode)


@_store_errors
def exists(url: str, options: dict | None) -> bool:
    fs, path = filesystem(url, options)
    return fs.exists(path)


# --------------------------------------------------------------------------- outputs


def open_root(out: str, tmp_name: str | None = None, options: dict | None = None) -> Any:
    """The output root of ``out``: an :class:`ObjectRoot` for a URL, else the folder's
    :class:`~.write.OutputRoot` (a worker's, for the run's temporary folder ``tmp_name``)."""
    if is_url(out):
        return ObjectRoot(out, tmp_name, options)
    from .write import OutputRoot

    return OutputRoot(out, tmp_name)


def create_root(out: str, options: dict | None = None) -> Any:
    """The run's output root, made by the driver (with this run's temporary folder)."""
    if is_url(out):
        return ObjectRoot.create(out, options)
    from .write import OutputRoot

    return OutputRoot.create(out)


_CHUNK = 1 << 24


def _upload(fs: Any, key: str, file: Any) -> None:
    """The whole local temporary ``file`` as the object ``key``: a complete object appears (a
    multipart upload completes at once), or the old one stays."""
    file.flush()
    file.seek(0)
    with fs.open(key, "wb") as f:
        shutil.copyfileobj(file, f, _CHUNK)


class _Staged:
    """An anonymous temporary file that a ``close`` keeps (the caller closes before publishing)."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "_Staged":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # write, flush, fileno, ...
        return getattr(self.file, name)


class _UploadedAppend:
    """The manifest on an object store: appended to (``O_APPEND``, as :class:`~.sinks.manifest.ManifestWriter`
    writes) in an anonymous local copy that starts with the object's earlier lines, uploaded whole on
    ``flush`` at most every 30 s (or ten times as long as the last upload took), and on ``close``."""

    def __init__(self, fs: Any, path: str) -> None:
        import fcntl

        self.fs = fs
        self.path = path
        self.file = tempfile.TemporaryFile()
        self.existed = True
        try:
            with fs.open(path, "rb") as f:
                shutil.copyfileobj(f, self.file, _CHUNK)
        except FileNotFoundError:
            self.existed = False
        self.file.flush()
        fd = self.file.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        self.uploaded = self._size()  # what the store holds
        self.last = time.monotonic()
        self.every = _MANIFEST_EVERY

    def _size(self) -> int:
        return os.fstat(self.file.fileno()).st_size

    def __getattr__(self, name: str) -> Any:  # seek, tell, read, write, fileno, closed
        return getattr(self.file, name)

    def flush(self) -> None:
        self.file.flush()
        if self._size() != self.uploaded and time.monotonic() - self.last >= self.every:
            self.upload()

    @_store_errors
    def upload(self) -> None:
        t0 = time.monotonic()
        size = self._size()  # (the lines are appended in this thread: none arrive while it uploads)
        _upload(self.fs, self.path, self.file)
        self.uploaded = size
        self.existed = True
        self.last = time.monotonic()
        self.every = max(_MANIFEST_EVERY, 10 * (self.last - t0))

    def close(self) -> None:
        if self.file.closed:
            return
        try:
            if self._size() != self.uploaded or not self.existed:
                self.upload()
        finally:
            self.file.close()

    def __enter__(self) -> "_UploadedAppend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObjectRoot:
    """The output prefix on an object store, with :class:`~.write.OutputRoot`'s interface."""

    def __init__(self, url: str, tmp_name: str | None = None, options: dict | None = None) -> None:
        self.path = url.rstrip("/")
        self.fs, self.base = filesystem(self.path, options)
        self.base = self.base.rstrip("/")
        self.tmp_name = tmp_name
        self._created_tmp = False
        self._staged: dict[str, _Staged] = {}
        self._create = True  # the store honours mode="create" (until it says it does not)

    @property
    def creates_if_free(self) -> bool:
        """Whether a write that must not replace is refused by the store itself (conditional create)."""
        return self._create

    def _key(self, name: str) -> str:
        return f"{self.base}/{'/'.join(_components(name))}"  # a plain relative name, as in a folder

    @classmethod
    @_store_errors
    def create(cls, url: str, options: dict | None = None) -> "ObjectRoot":
        root = cls(url, options=options)
        root.tmp_name = f".fastdcm-tmp-{os.getpid()}-{secrets.token_hex(4)}"
        root._created_tmp = True
        # The store's clock, past the time of anything written before: S3 keeps whole seconds,
        # so this waits for the next one (up to a second, once per run). An OSError says why
        # the prefix cannot be written.
        first = root.clock()
        deadline = time.monotonic() + 2.5
        while True:
            now = root.clock()
            if now > first or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        root._start = now
        return root

    _start: int | None = None

    def start_time(self) -> int:
        """The store's own time at the start: objects older were there before the run."""
        return self._start if self._start is not None else self.clock()

    @_store_errors
    def clock(self) -> int:
        key = self._key(f"{self.tmp_name}/clock-{time.monotonic_ns()}.stamp")
        self.fs.pipe_file(key, b"")
        try:
            return _mtime_ns(self.fs.info(key))
        finally:
            self._rm(key)

    @_store_errors
    def mark(self, key: str) -> bool:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a marker name: {key!r}")
        name = f"{self.tmp_name}/{key}.attempt"
        try:
            self.write(name, b"", replace=False)
        except Exists:
            return False
        return True

    def remove_tmp(self) -> None:
        if not self._created_tmp or not self.tmp_name:
            return
        try:
            self.fs.rm(self._key(self.tmp_name), recursive=True)
        except OSError:
            pass

    def close(self) -> None:
        for staged in self._staged.values():
            staged.file.close()
        self._staged.clear()

    def hold(self) -> None:
        """(nothing to keep open on an object store)"""

    def release(self) -> None:
        """(nothing to keep open on an object store)"""

    @_store_errors
    def exists(self, name: str) -> bool:
        try:
            key = self._key(name)
        except UnsafePathError:
            return False
        return self._exists(key)

    def _exists(self, key: str) -> bool:
        """Whether the object ``key`` exists: on S3 one HEAD (s3fs's ``exists`` follows a 404 with a
        LIST and a second HEAD, looking for a folder: 3 requests for each new image's check)."""
        call_s3 = getattr(self.fs, "call_s3", None)
        if call_s3 is None or not hasattr(self.fs, "split_path"):
            return self.fs.exists(key)
        bucket, path, _ = self.fs.split_path(key)
        try:
            call_s3("head_object", Bucket=bucket, Key=path)
        except FileNotFoundError:
            return False
        return True

    @_store_errors
    def mtime_ns(self, name: str) -> int | None:
        try:
            return _mtime_ns(self.fs.info(self._key(name)))
        except (FileNotFoundError, UnsafePathError):
            return None

    @_store_errors
    def write(self, name: str, data: bytes, *, replace: bool, fsync: bool = False, replace_older_than: int | None = None) -> None:
        key = self._key(name)
        if replace:
            if replace_older_than is not None:
                mtime = self.mtime_ns(name)
                if mtime is not None and mtime >= replace_older_than:
                    raise Exists(name)
            self.fs.pipe_file(key, data)
            return
        if self._create:
            try:
                self.fs.pipe_file(key, data, mode="create")
                return
            except FileExistsError:
                raise Exists(name) from None
            except (TypeError, NotImplementedError, ValueError) as exc:  # no conditional create here
                log.debug("conditional create not offered (%s): checking names first", exc)
                self._create = False
            except OSError as exc:
                if "PreconditionFailed" in str(exc) or "412" in str(exc):
                    raise Exists(name) from None
                if "NotImplemented" not in str(exc) and "501" not in str(exc):
                    raise
                self._create = False
        if self._exists(key):
            raise Exists(name)
        self.fs.pipe_file(key, data)

    def _rm(self, key: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass

    @_store_errors
    def remove(self, name: str) -> None:
        try:
            self._rm(self._key(name))
        except (OSError, UnsafePathError):
            pass

    def open_temp(self, hint: str) -> tuple[Any, str]:
        token = f"{time.monotonic_ns()}-{secrets.token_hex(3)}-{hint}"
        staged = _Staged()
        self._staged[token] = staged
        return staged, token

    @_store_errors
    def publish(self, tmp: str, name: str) -> None:
        staged = self._staged.pop(tmp)
        try:
            _upload(self.fs, self._key(name), staged.file)
        finally:
            staged.file.close()

    def discard_temp(self, tmp: str) -> None:
        staged = self._staged.pop(tmp, None)
        if staged is not None:
            staged.file.close()

    @_store_errors
    def open_read(self, name: str) -> Any:
        return self.fs.open(self._key(name), "rb")

    @_store_errors
    def listdir(self, folder: str) -> list[str]:
        try:
            entries = self.fs.ls(self._key(folder), detail=False)
        except (FileNotFoundError, UnsafePathError):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def remove_empty_folder(self, folder: str) -> None:
        """(an object store has no folders)"""

    @_store_errors
    def open_append(self, name: str) -> Any:
        return _UploadedAppend(self.fs, self._key(name))
