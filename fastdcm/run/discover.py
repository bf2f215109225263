"""Inputs -> a stream of :class:`Source` records; never reads pixel data.

``iter_sources`` turns what a user typed (files, directories, glob patterns, ``@list.txt``,
``-`` for stdin, DICOMDIR files) into one record per input file, lazily: conversion starts
with the first record while the walk goes on, and memory does not grow with the archive
(directories are walked with ``os.scandir``, one directory's entries at a time).

What is yielded, and the manifest invariant
-------------------------------------------
Every yielded item is either a :class:`Source` (a file to hand to a worker) or a
:class:`Rejected` (an input that failed before any worker saw it: a missing path, a
DICOMDIR record pointing outside its file-set, an unreadable directory). Each yielded item
gets exactly one manifest record, so ``discovered == number of items yielded == sum of
the manifest's statuses``.

Files that a directory walk meets and that are clearly not DICOM (``README.txt``, ``.png``
thumbnails, ...: content not DICOM-like *and* no ``.dcm``/``.dicom``/``.dic``/``.ima``
extension) are *not inputs*: they are skipped silently and only counted in
:class:`DiscoveryStats` (``non_dicom``), which the end-of-run summary can print as
"ignored N non-DICOM files". DICOMDIR files met by a walk are skipped (``dicomdirs``): the
files they reference are found by the walk itself. With ``include_non_dicom=True`` the
non-DICOM files are yielded as ordinary sources instead (the renderer then records them
as ``not_dicom``). A file named explicitly (on the command line, in a list, matched by a
glob) is always yielded, whatever it contains, so that it gets a status.

DICOM is recognised by content, not extension: the 128-byte preamble followed by
``DICM``, or, for files without preamble, a plausible first element of group 0002 or 0008
(explicit or implicit VR, either byte order). One ``read`` of at most 512 bytes per file
decides; a DICOMDIR is told apart by the Media Storage SOP Class UID in its file meta.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import itertools
import os
import re
import stat as _stat
import sys
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import PurePath
from typing import IO, Iterable, Iterator

from .. import elements
from ..errors import Status, describe

__all__ = [
    "Source",
    "Rejected",
    "DiscoveryStats",
    "iter_sources",
    "sniff",
    "classify_head",
    "MISSING_STATUS",
    "DICOM",
    "DICOMDIR",
    "DICOM_EXTENSIONS",
    "OTHER",
]


#: Status of an input that does not exist (or cannot be read before a worker sees it).
#: errors.Status has no MISSING member yet; "not_dicom" is the nearest: the path is not a
#: readable DICOM file. Kept in one place so a dedicated status can replace it.
MISSING_STATUS = Status.NOT_DICOM

DICOM = "dicom"
DICOMDIR = "dicomdir"
OTHER = "other"

_HEAD_BYTES = 512
_MEDIA_STORAGE_DIRECTORY = b"1.2.840.10008.1.3.10"
#: Names that claim to be DICOM: a walk yields them even when their content does not look
#: like DICOM (malformed files deserve a status, not silence). Lower case.
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom", ".dic", ".ima"})
_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Source:
    """One input file. Small and picklable: this is what crosses process boundaries.

    ``path`` is absolute; ``rel`` is the relative POSIX path that output names mirror
    (never empty, never absolute, never containing a ``..`` component); ``root`` is the
    folder ``rel`` is relative to (the directory, glob base, list folder or file-set root).
    """

    path: str
    rel: str
    size: int
    mtime_ns: int
    root: str | None = None
    #: output names this input may replace: its own outputs from an earlier run (``--resume``)
    replace: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rejected:
    """An input that gets a status without reaching a worker (missing, refused, unreadable)."""

    path: str
    status: Status
    reason: str
    size: int | None = None
    mtime_ns: int | None = None


@dataclass
class DiscoveryStats:
    """Counts kept while :func:`iter_sources` runs (pass one in, read it afterwards).

    ``sources + rejected`` is the number of items yielded (the manifest's ``discovered``);
    the other counters are files a walk passed over and that are not inputs.
    """

    sources: int = 0
    rejected: int = 0
    non_dicom: int = 0  # walked files that do not look like DICOM (not yielded)
    dicomdirs: int = 0  # DICOMDIR files met by a walk (not yielded; their files are walked)
    duplicates: int = 0  # the same file reached again through another input
    other: int = 0  # symlinked directories (not followed), sockets, FIFOs, devices

    @property
    def discovered(self) -> int:
        return self.sources + self.rejected


# --------------------------------------------------------------------------- content sniffing


def classify_head(head: bytes) -> str:
    """Classify a file from its first bytes: :data:`DICOM`, :data:`DICOMDIR` or :data:`OTHER`.

    Non-DICOM is decided from the first 132 bytes; the rest of ``head`` (up to 512 bytes)
    is only used to read the file meta's Media Storage SOP Class UID.
    """
    if elements.has_preamble(head):
        if _MEDIA_STORAGE_DIRECTORY not in head:  # cannot be its SOP class: skip the meta walk
            return DICOM
        return DICOMDIR if _meta_sop_class(head) == _MEDIA_STORAGE_DIRECTORY else DICOM
    return DICOM if elements.looks_headerless(head) else OTHER


def sniff(path: str) -> str:
    """Read at most 512 bytes of ``path`` and classify them (see :func:`classify_head`).

    Raises ``OSError`` if the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        head = os.read(fd, _HEAD_BYTES)
    finally:
        os.close(fd)
    return classify_head(head)


def _meta_sop_class(head: bytes) -> bytes | None:
    """Media Storage SOP Class UID from the file meta in the first bytes of a file (a meta cut
    off by the end of ``head`` gives what was read)."""
    try:
        values, _ = elements.file_meta(head, cut_ok=True)
    except elements.Malformed:
        return None
    value = values.get(0x0002)
    return value.rstrip(b"\x00 ") if value is not None else None


# --------------------------------------------------------------------------- helpers


def _posix(rel: str) -> str:
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


def _join_rel(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _anchorless(path: str) -> str:
    """An absolute path as a relative one: ``/data/x`` -> ``data/x``, ``C:\\x`` -> ``C/x``."""
    pure = PurePath(path)
    parts = list(pure.parts)
    if pure.anchor:
        parts = parts[1:]
        drive = pure.drive.rstrip(":").strip("\\/")
        if drive:
            parts.insert(0, drive.replace("\\", "_").replace("/", "_").replace(":", ""))
    parts = [p for p in parts if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def _rel_to(path: str, base: str) -> str:
    """``path`` relative to ``base`` (both absolute); paths outside ``base`` lose their anchor."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return _anchorless(path)
    if rel == os.curdir:
        return _posix(os.path.basename(path)) or "_"
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return _anchorless(path)
    return _posix(rel)


#: Paths read from stdin before the first is yielded, to find the folder they have in common.
STDIN_LOOKAHEAD = 100_000


def _entries(stream: IO, null: bool) -> Iterator[str]:
    """The paths in a list: one per line (blank lines and ``#`` comments skipped, surrounding
    white space stripped) or, with ``null``, NUL-separated exactly as given (``find -print0``:
    any byte but NUL may be in a name)."""
    if not null:
        for line in stream:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line
        return
    buf = None
    while True:
        chunk = stream.read(1 << 16)
        if not chunk:
            break
        buf = chunk if buf is None else buf + chunk
        sep = b"\0" if isinstance(buf, bytes) else "\0"
        *records, buf = buf.split(sep)
        for record in records:
            if record:
                yield os.fsdecode(record) if isinstance(record, bytes) else record
    if buf:
        yield os.fsdecode(buf) if isinstance(buf, bytes) else buf


def _resolved(entries: Iterable[str], folder: str) -> Iterator[str]:
    for entry in entries:
        yield os.path.abspath(os.path.join(folder, entry))


def _common_folder(paths: Iterable[str]) -> str | None:
    """The deepest folder holding every path (each path's own folder counts, so a listed
    folder keeps its name); None when there is none (other drives) or no path."""
    common = None
    for path in paths:
        folder = os.path.dirname(path)
        try:
            common = folder if common is None else os.path.commonpath([common, folder])
        except ValueError:
            return None
    return common


def _name_of(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "_"


def _identity(st: os.stat_result, path: str) -> int | bytes:
    """A key identifying the file itself (device, inode), for duplicate detection."""
    if st.st_ino:
        return (st.st_dev << 64) | st.st_ino
    return hashlib.blake2b(os.path.realpath(path).encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _dicom_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in DICOM_EXTENSIONS


def check_inputs(inputs: Iterable[str], storage_options: dict | None = None) -> None:
    """Usage errors, before any work, for command-line inputs that name nothing: a path that
    does not exist, a glob pattern that matches nothing, a list file that is missing, a URL
    with no object at or under it. (Lines of a list file and stdin are checked as they are
    read: they get a status.)"""
    from ..errors import InvalidOptionError
    from .storage import exists, is_url

    for item in inputs:
        text = os.fspath(item)
        if text == "-" or not text:
            continue
        if is_url(text):
            try:
                found = exists(text, storage_options)
            except (OSError, ValueError) as exc:
                raise InvalidOptionError(f"{text} cannot be listed: {exc}") from None
            if not found:
                raise InvalidOptionError(f"no object at or under {text!r}")
            continue
        if _is_list(text):
            if not os.path.isfile(text[1:]):
                raise InvalidOptionError(f"the list file {text[1:]!r} does not exist")
        elif _is_glob(text):
            if next(_glob.iglob(text, recursive=True), None) is None:
                raise InvalidOptionError(f"the pattern {text!r} matches nothing")
        elif not os.path.lexists(text):
            raise InvalidOptionError(f"no such file or folder: {text!r}")


def _is_glob(item: str) -> bool:
    return bool(_MAGIC.search(item)) and not os.path.lexists(item)


def _is_list(item: str) -> bool:
    return item == "-" or (item.startswith("@") and len(item) > 1)


# --------------------------------------------------------------------------- the walk


class _Discovery:
    def __init__(self, stats: DiscoveryStats, include_non_dicom: bool, prefixed: bool, null: bool = False,
                 storage_options: dict | None = None, exclude: Iterable[str | os.PathLike] = ()) -> None:
        self.stats = stats
        self.excluded: set[tuple[int, int]] = set()  # (device, inode) of folders a walk does not enter
        paths = []  # the same folders' absolute paths + "/": a glob's matches under them are left out
        for folder in exclude:
            try:
                st = os.stat(folder)
            except (OSError, ValueError):
                continue  # (not there: nothing to leave out)
            self.excluded.add((st.st_dev, st.st_ino))
            paths.append(os.path.join(os.path.abspath(folder), ""))
        self.excluded_paths = tuple(paths)
        self.storage_options = storage_options
        self.null = null  # lists and stdin hold NUL-separated paths (find -print0)
        self.include_non_dicom = include_non_dicom
        self.prefixed = prefixed  # several inputs: prefix directory names to keep them apart

    # Each inner generator yields (record, identity-or-None).

    def item(self, item: str, stdin: IO[str] | None):
        from .storage import is_url

        if is_url(item):
            yield from self.url(item)
        elif item == "-":
            stream = stdin if stdin is not None else sys.stdin
            yield from self.stdin(stream)
        elif _is_list(item):
            yield from self.list_file(item[1:])
        elif _is_glob(item):
            yield from self.glob(item)
        else:
            path = os.path.abspath(item)
            yield from self.path(path, None)

    def path(self, path: str, rel: str | None):
        """A path named by the user (directly, in a list, or matched by a glob)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            yield self.missing(path, "no such file or directory"), None
            return
        except OSError as exc:
            yield self.missing(path, f"cannot access: {exc.strerror or exc}"), None
            return
        if _stat.S_ISDIR(st.st_mode):
            if rel is None:
                rel = _name_of(path) if self.prefixed else ""
            yield from self.walk(path, rel)
            return
        if not _stat.S_ISREG(st.st_mode):
            yield self.missing(path, "not a regular file (device, FIFO or socket)"), None
            return
        try:
            kind = sniff(path)
        except OSError as exc:
            yield self.missing(path, f"cannot read: {exc.strerror or exc}", st), None
            return
        if kind == DICOMDIR:
            root = os.path.dirname(path)
            if rel is None:
                prefix = _name_of(root) if self.prefixed else ""
            else:
                prefix = posix_dirname(rel)
            yield from self.dicomdir(path, prefix)
            return
        if rel is None:
            rel = _posix(os.path.basename(path))
        yield self.source(path, rel, st, os.path.dirname(path)), _identity(st, path)

    def walk(self, top: str, prefix: str):
        """Depth-first, sorted, iterative; holds one directory's entries at a time (plus
        the not yet visited subdirectories of the current branch)."""
        stack: list[tuple[str, str]] = [(top, prefix)]
        while stack:
            folder, rel = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                yield self.missing(folder, f"cannot list directory: {exc.strerror or exc}"), None
                continue
            subdirs: list[tuple[str, str]] = []
            for entry in entries:
                name = _posix(entry.name)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.excluded and self._excluded(entry):
                            continue
                        subdirs.append((entry.path, _join_rel(rel, name)))
                        continue
                    if not entry.is_file():  # symlinked dirs, FIFOs, sockets, devices
                        self.stats.other += 1
                        continue
                    st = entry.stat()
                    kind = sniff(entry.path)
                except OSError as exc:
                    yield self.missing(entry.path, f"cannot read: {exc.strerror or exc}"), None
                    continue
                if kind == DICOMDIR:
                    self.stats.dicomdirs += 1
                    continue
                if kind == OTHER and not (self.include_non_dicom or _dicom_extension(name)):
                    self.stats.non_dicom += 1
                    continue
                yield self.source(entry.path, _join_rel(rel, name), st, top), _identity(st, entry.path)
            stack.extend(reversed(subdirs))

    def _excluded(self, entry: os.DirEntry) -> bool:
        st = entry.stat(follow_symlinks=False)
        return (st.st_dev, st.st_ino) in self.excluded

    def url(self, url: str):
        """An object-store URL (storage.py): the object it names, or every object under the prefix.
        Objects are not opened here (a GET each): under a prefix, those named like DICOM or without
        an extension are inputs (a worker gives them their status), other names (``.txt``, ``.png``,
        ...) are counted as non-DICOM and a ``DICOMDIR`` as a DICOMDIR."""
        from .storage import walk

        name = url.rstrip("/").rsplit("/", 1)[-1]
        prefix = _posix(name) if self.prefixed else ""
        try:
            for path, rel, size, mtime_ns in walk(url, self.storage_options):
                if path.rstrip("/") == url.rstrip("/"):  # the URL names one object
                    yield Source(path=path, rel=_posix(name), size=size, mtime_ns=mtime_ns, root=url), path
                    continue
                leaf = rel.rsplit("/", 1)[-1]
                if leaf.upper() == "DICOMDIR":
                    self.stats.dicomdirs += 1
                    continue
                extension = os.path.splitext(leaf)[1]
                if extension and not (self.include_non_dicom or _dicom_extension(leaf)):
                    self.stats.non_dicom += 1
                    continue
                yield Source(path=path, rel=_join_rel(prefix, rel), size=size, mtime_ns=mtime_ns, root=url), path
        except FileNotFoundError:
            yield self.missing(url, "no such object or prefix"), None
        except Exception as exc:  # the store's driver: a usage error's status for this input, the run goes on
            yield self.missing(url, f"cannot list: {describe(exc)}"), None

    def glob(self, pattern: str):
        parts = PurePath(pattern).parts
        literal: list[str] = []
        for part in parts:
            if _MAGIC.search(part):
                break
            literal.append(part)
        base = os.path.abspath(os.path.join(*literal)) if literal else os.getcwd()
        prefix = _name_of(base) if self.prefixed else ""
        matched = False
        for match in _glob.iglob(pattern, recursive=True):
            matched = True
            path = os.path.abspath(match)
            if self.excluded_paths and (path + os.sep).startswith(self.excluded_paths):
                continue  # (an excluded folder, or a file in it)
            yield from self.path(path, _join_rel(prefix, _rel_to(path, base)))
        if not matched:
            yield self.missing(os.path.abspath(pattern), "no file matches this pattern"), None

    def list_file(self, list_path: str):
        """Two passes over the list: the first finds the folder its paths have in common (what
        output names mirror the paths from), the second yields them."""
        list_path = os.path.abspath(list_path)
        folder = os.path.dirname(list_path)
        try:
            with self._open_list(list_path) as stream:
                base = _common_folder(_resolved(_entries(stream, self.null), folder))
            stream = self._open_list(list_path)
        except OSError as exc:
            yield self.missing(list_path, f"cannot open list file: {exc.strerror or exc}"), None
            return
        with stream:
            yield from self.paths(_resolved(_entries(stream, self.null), folder), base)

    def _open_list(self, list_path: str) -> IO:
        if self.null:
            return open(list_path, "rb")
        return open(list_path, encoding="utf-8", errors="surrogateescape")

    def stdin(self, stream: IO):
        """Paths from stdin, relative ones resolved against the current folder; names mirror
        them from the folder the first ``STDIN_LOOKAHEAD`` paths have in common (all of them,
        unless stdin holds more), read before the first is yielded."""
        if self.null:
            stream = getattr(stream, "buffer", stream)
        paths = _resolved(_entries(stream, self.null), os.getcwd())
        ahead = list(islice(paths, STDIN_LOOKAHEAD))
        base = _common_folder(ahead)
        yield from self.paths(itertools.chain(ahead, paths), base)

    def paths(self, paths: Iterable[str], base: str | None):
        """Listed paths (absolute), mirrored relative to ``base``."""
        for path in paths:
            rel = _rel_to(path, base) if base is not None else _anchorless(path)
            yield from self.path(path, rel)

    def dicomdir(self, path: str, prefix: str):
        """The files referenced by a DICOMDIR's records, in record order."""
        import pydicom  # pydicom is imported only when a DICOMDIR is met

        root = os.path.dirname(path)
        root_real = os.path.realpath(root)
        try:
            with warnings.catch_warnings():
                # invalid CS values ('..', '/etc') warn on read; such records are refused below
                warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
                ds = pydicom.dcmread(path)
                records = list(ds.get("DirectoryRecordSequence") or [])
                ids = [r.get("ReferencedFileID") for r in records]
        except Exception as exc:  # pydicom raises many types on a corrupt file: report it
            yield self.missing(path, f"cannot read DICOMDIR: {describe(exc)}"), None
            return
        listing_cache: dict[str, dict[str, str] | None] = {}
        seen_here: set[str] = set()
        for record, value in zip(records, ids):
            if value is None:
                continue
            if record.get("RecordInUseFlag", 0xFFFF) == 0:  # inactive record
                continue
            raw = [value] if isinstance(value, str) else [str(v) for v in (value or [])]
            if not raw:
                continue
            shown = "\\".join(raw)
            parts = _file_id_parts(raw)
            if parts is None:
                yield Rejected(
                    path=f"{root}{os.sep}{shown}",
                    status=Status.REFUSED,
                    reason=f"DICOMDIR {path}: ReferencedFileID {shown!r} points outside the file-set root",
                ), None
                continue
            target = os.path.join(root, *parts)
            if not os.path.lexists(target):
                target = _case_insensitive(root, parts, listing_cache) or target
            real = os.path.realpath(target)
            if os.path.commonpath([root_real, real]) != root_real:
                yield Rejected(
                    path=target,
                    status=Status.REFUSED,
                    reason=f"DICOMDIR {path}: ReferencedFileID {shown!r} resolves outside the file-set root (symlink)",
                ), None
                continue
            if real in seen_here:  # two records naming one file: convert it once
                self.stats.duplicates += 1
                continue
            seen_here.add(real)
            try:
                st = os.stat(target)
            except OSError as exc:
                yield self.missing(
                    target, f"referenced by DICOMDIR {path} but cannot be opened: {exc.strerror or exc}"
                ), None
                continue
            if not _stat.S_ISREG(st.st_mode):
                yield self.missing(target, f"referenced by DICOMDIR {path} but not a regular file"), None
                continue
            rel = _join_rel(prefix, "/".join(_posix(p) for p in os.path.relpath(target, root).split(os.sep)))
            yield self.source(target, rel, st, root), _identity(st, target)

    def source(self, path: str, rel: str, st: os.stat_result, root: str) -> Source:
        return Source(path=path, rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, root=root)

    def missing(self, path: str, reason: str, st: os.stat_result | None = None) -> Rejected:
        return Rejected(
            path=path,
            status=MISSING_STATUS,
            reason=reason,
            size=None if st is None else st.st_size,
            mtime_ns=None if st is None else st.st_mtime_ns,
        )


def posix_dirname(rel: str) -> str:
    return rel.rpartition("/")[0]


def _file_id_parts(raw: list[str]) -> list[str] | None:
    """The components of a ReferencedFileID, or None if it could leave the file-set root
    (absolute, a drive, ``..``, ``.``, an empty component or a NUL)."""
    parts: list[str] = []
    for i, value in enumerate(raw):
        pieces = re.split(r"[\\/]", value)
        if i == 0 and pieces and pieces[0] == "":
            return None  # absolute
        for piece in pieces:
            piece = piece.strip(" ")
            if piece in ("", ".", "..") or "\x00" in piece or ":" in piece:
                return None
            parts.append(piece)
    return parts or None


def _case_insensitive(root: str, parts: list[str], cache: dict[str, dict[str, str] | None]) -> str | None:
    """File IDs are upper case but media are often copied in lower case: find the file
    whatever its case (only tried when the exact name does not exist)."""
    folder = root
    for part in parts:
        listing = cache.get(folder, ...)
        if listing is ...:
            try:
                listing = {name.casefold(): name for name in os.listdir(folder)}
            except OSError:
                listing = None
            cache[folder] = listing
        if not listing or part.casefold() not in listing:
            return None
        folder = os.path.join(folder, listing[part.casefold()])
    return folder


# --------------------------------------------------------------------------- the entry point


def iter_sources(
    inputs: Iterable[str | os.PathLike] | str | os.PathLike,
    *,
    stdin: IO[str] | None = None,
    include_non_dicom: bool = False,
    dedupe: bool | None = None,
    stats: DiscoveryStats | None = None,
    null: bool = False,
    storage_options: dict | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> Iterator[Source | Rejected]:
    """Stream one :class:`Source` or :class:`Rejected` per input file.

    ``inputs`` items may be:

    - a file: always yielded (whatever its content) so it gets a status; a DICOMDIR file
      (recognised by content) is expanded into the files its records reference;
    - a directory: walked recursively (symlinked subdirectories are not followed); files
      that look like DICOM by content, or whose name ends in ``.dcm``/``.dicom``/``.dic``/
      ``.ima`` (any case), are yielded; other files and DICOMDIRs are skipped and counted;
    - a glob pattern (``*``, ``?``, ``[..]``, ``**`` recursive), if no file has that literal
      name: each match is handled as if named explicitly; no match gives a Rejected record;
    - ``@list.txt``: one path per line, blank lines and ``#`` comments skipped, relative
      paths resolved against the list file's folder (``null=True``: NUL-separated, as
      ``find -print0`` writes, taken exactly);
    - ``-``: the same, read from ``stdin`` (default ``sys.stdin``), relative to the cwd.

    ``rel`` (what output names mirror) is the path relative to the directory, the glob's
    literal base folder, the DICOMDIR's file-set root, or, for a list or stdin, the deepest
    folder its paths have in common (``/data/ct/a/1.dcm`` and ``/data/ct/b/2.dcm`` give
    ``a/1.dcm`` and ``b/2.dcm``; for stdin, the first :data:`STDIN_LOOKAHEAD` paths decide,
    and a later path outside that folder keeps its absolute path without its anchor);
    a single file input gives its file name. With several inputs, the directory's (or glob
    base's, or file-set root's) name is prefixed, to keep inputs apart.

    Missing inputs and unreadable files give ``Rejected(status=MISSING_STATUS)``
    (``not_dicom``: there is no DICOM file to read there); DICOMDIR records whose
    ReferencedFileID leaves the file-set root give ``Rejected(status=REFUSED)`` and the
    other records still come through.

    Duplicates (the same file, by device and inode, reached through two inputs) are yielded
    once. ``dedupe=None`` (auto) keeps the set of seen files only when duplicates are
    possible: several inputs, a glob, a list or stdin; a single directory or DICOMDIR input
    needs none, so memory stays flat for one huge archive. ``dedupe=False`` turns it off.

    - an object-store URL (``s3://bucket/prefix``, any fsspec URL): the object, or the objects under
      the prefix, listed a prefix at a time (see ``_Discovery.url``; ``storage_options`` go to fsspec).

    ``exclude``: folders a walk does not enter when it meets them below an input (``convert``'s
    output folder: its images and manifest are not inputs, nor is a file someone put there); told
    by device and inode; a glob's matches in them (by path) are left out too; a folder that does not
    exist excludes nothing, and one named as an input is walked.

    ``stats``, if given, is updated as the generator runs (see :class:`DiscoveryStats`).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [os.fspath(i) for i in inputs]
    stats = stats if stats is not None else DiscoveryStats()
    if dedupe is None:
        dedupe = len(items) > 1 or any(_is_list(i) or _is_glob(i) for i in items)
    seen: set[int | bytes] | None = set() if dedupe else None
    walker = _Discovery(stats, include_non_dicom, prefixed=len(items) > 1, null=null, storage_options=storage_options,
                        exclude=exclude)
    for item in items:
        if not item:
            stats.rejected += 1
            yield Rejected(path="", status=MISSING_STATUS, reason="empty input path")
            continue
        for record, identity in walker.item(item, stdin):
            if isinstance(record, Source):
                if seen is not None and identity is not None:
                    if identity in seen:
                        stats.duplicates += 1
                        continue
                    seen.add(identity)
                stats.sources += 1
            else:
                stats.rejected += 1
            yield record
