"""The atomic writer: every file-system operation under the output folder, through directory fds.

The output root is opened once (``O_DIRECTORY``; the path the user gave may pass through
symlinks of their own). Below it nothing is ever reached by a path string: each output's
folder is opened from the root's fd every time a file is written, in one ``openat2`` call that
resolves no symlink anywhere on the way (``RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH``, Linux 5.6+),
or else (a folder to make, a refusal to explain, no ``openat2``) walked component by component
with ``openat(O_NOFOLLOW | O_DIRECTORY)`` (``mkdirat`` where a folder is missing), so a
symlink anywhere under the root, planted before the run or swapped in during it, is refused
(:class:`~fastdcm.errors.UnsafePathError`), never followed. A file appears complete or not at
all:

- new names: an unnamed file (``O_TMPFILE``) in the target folder, linked to its name
  (``linkat``, which fails if anything, a symlink included, has that name);
- replacing (``--on-exists overwrite``, or where ``O_TMPFILE`` is missing): a named file in this
  run's own temporary folder, renamed over the name (``renameat2(RENAME_NOREPLACE)`` when the name
  must stay free, else ``renameat``, which replaces a symlink rather than following it).

Each run has its own temporary folder, ``OUT/.fastdcm-tmp-<pid>-<random>``, created with
``mkdirat`` (which fails if the name exists) and removed by that run only, with only the files
it made. The manifest in OUT is opened the same way (``O_NOFOLLOW``, relative to the root fd).

The parent creates the run's root (:meth:`OutputRoot.create`); each worker's image sink opens its
own from the path and the temporary folder's name (fds do not cross process boundaries) and keeps
it for the run.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import threading
import time
from typing import Any

from ..errors import UnsafePathError

TMP_PREFIX = ".fastdcm-tmp-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_TMPFILE = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.EXDEV, errno.EPERM, errno.ENOENT}


class Exists(Exception):
    """The final name is taken and must not be replaced."""


def _libc_function(name: str):
    """libc's function ``name`` through ctypes (errno kept), or None (not Linux, no such function)."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    try:
        import ctypes

        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _load_renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    import ctypes

    func = _libc_function("renameat2")
    if func is None:
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_RENAMEAT2 = _load_renameat2()
_RENAME_NOREPLACE = 1

#: openat2's resolve flags (linux/openat2.h): no symlink anywhere on the path (magic links
#: included), nothing outside the directory it starts from.
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}  # (the same number on both tables)


def _load_openat2():
    """A function ``(dir_fd, path bytes) -> fd or -1`` opening the folder ``path`` below ``dir_fd``
    with openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) (Linux >= 5.6,
    through libc's ``syscall``), or None where there is none."""
    import ctypes
    import platform

    number = _SYS_OPENAT2.get(platform.machine())
    syscall = _libc_function("syscall") if number is not None else None
    if syscall is None:
        return None

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    how = OpenHow(os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0), 0,
                  _RESOLVE_NO_SYMLINKS | _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    how_ref, how_size = ctypes.byref(how), ctypes.sizeof(how)

    def openat2(dir_fd: int, path: bytes) -> int:
        global _OPENAT2
        fd = syscall(number, dir_fd, path, how_ref, how_size)
        if fd < 0 and ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG):
            _OPENAT2 = None  # an older kernel, or a sandbox that refuses the call: the walk, from now on
        return int(fd)

    return openat2


_OPENAT2 = _load_openat2()


def _components(name: str) -> list[str]:
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise UnsafePathError(f"output name {name!r} is not a plain relative path")
    return parts


class OutputRoot:
    """The output folder, opened once; every operation below it goes through directory fds."""

    def __init__(self, path: str, tmp_name: str | None = None) -> None:
        self.path = os.path.abspath(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except NotADirectoryError:
            raise UnsafePathError(f"output folder {self.path} is not a folder") from None
        self.tmp_name = tmp_name
        self._tmp_fd: int | None = None
        self._proc_fd: int | None = None
        self._created_tmp = False
        self.was_empty = False  # (create): the folder held nothing when this run began
        self._holding = False
        self._held: tuple[str, int] | None = None  # (folder, its fd) kept between hold() and release()

    # ----------------------------------------------------------------- the run's temp folder

    @classmethod
    def create(cls, path: str) -> OutputRoot:
        """The parent's root: makes the output folder if needed and this run's temp folder."""
        if os.path.exists(path) and not os.path.isdir(path):  # (makedirs would say only "File exists")
            raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", path)
        os.makedirs(path, exist_ok=True)
        root = cls(path)
        with os.scandir(root.fd) as entries:  # (the first entry is enough: a folder of millions stays cheap)
            root.was_empty = next(entries, None) is None
        for _ in range(8):
            name = f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.mkdir(name, 0o700, dir_fd=root.fd)  # fails if the name exists, symlink or not
            except FileExistsError:
                continue
            root.tmp_name, root._created_tmp = name, True
            return root
        raise OSError(errno.EEXIST, "cannot create a temporary folder", os.path.join(path, TMP_PREFIX + "*"))

    @property
    def tmp_fd(self) -> int:
        if self._tmp_fd is None:
            if self.tmp_name is None:
                raise RuntimeError("this output root has no temporary folder")
            try:
                self._tmp_fd = os.open(self.tmp_name, _DIR_FLAGS, dir_fd=self.fd)
            except OSError as exc:
                raise UnsafePathError(f"the run's temporary folder {self.tmp_name} is not a plain folder ({exc.strerror})") from None
        return self._tmp_fd

    def start_time(self) -> int:
        """A start time, in the file system's own clock, that splits files written before the run
        from files written by it.

        File times come from the kernel's coarse clock (a tick of a few ms, behind
        ``time.time_ns()``): a file written just before the run and one written just after can
        carry the same time. So a first stamp file is written, then a second one until its time
        is past the first's (one tick, a few ms); everything written before the call is older
        than the returned time, everything written after it is not.
        """
        try:
            first = self.clock()
            deadline = time.monotonic() + 1.0
            while True:
                now = self.clock()
                if now > first or time.monotonic() > deadline:
                    return now
                time.sleep(0.001)
        except OSError:
            return time.time_ns()

    def clock(self) -> int:
        """The modification time of a stamp file written in the temporary folder now."""
        name = f"run-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.stamp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=self.tmp_fd)
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=self.tmp_fd)

    def remove_tmp(self) -> None:
        """Remove this run's temporary folder and the files this run left in it (killed
        workers' ``.part`` files); a folder of another run is never touched."""
        if not self._created_tmp:
            return
        try:
            with os.scandir(self.tmp_fd) as it:
                names = [e.name for e in it if e.name.endswith((".part", ".stamp", ".attempt"))]
            for name in names:
                try:
                    os.unlink(name, dir_fd=self.tmp_fd)
                except OSError:
                    pass
            os.rmdir(self.tmp_name, dir_fd=self.fd)
        except OSError:
            pass

    def mark(self, key: str) -> bool:
        """Leave the marker ``key`` in this run's temporary folder: True if this call made it,
        False if it was there (a task run again after its worker died, :mod:`.executors.cluster`)."""
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a marker name: {key!r}")
        try:
            fd = os.open(f"{key}.attempt", os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=self.tmp_fd)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def close(self) -> None:
        self.release()
        for fd in (self._tmp_fd, self._proc_fd, self.fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._tmp_fd = self._proc_fd = None

    # ----------------------------------------------------------------- folders

    def hold(self) -> None:
        """Keep the last folder walked open until :meth:`release`, for the next names in it (one
        input's existence check and its frames: one walk instead of one per name and step)."""
        self._holding = True

    def release(self) -> None:
        self._holding = False
        # Forget the fd before closing it: a stop signal raised in between (the pool's SIGTERM
        # handler) leaves at most an fd open in a process that is ending, where the other order
        # made the caller's clean-up close it again (EBADF, or another file's fd reused since).
        held, self._held = self._held, None
        if held is not None:
            os.close(held[1])

    def folder(self, name: str, create: bool = True) -> tuple[int, str]:
        """(fd of the folder holding output ``name``, the file's own name), walked from the root
        with O_NOFOLLOW at every step (or the folder held since :meth:`hold`). The caller closes the fd."""
        parts = _components(name)
        key = "/".join(parts[:-1])
        if self._held is not None and self._held[0] == key:
            return os.dup(self._held[1]), parts[-1]
        fd = self._walk(parts, create)
        if self._holding:
            self.release()
            self._holding = True
            self._held = (key, os.dup(fd))
        return fd, parts[-1]

    def _walk(self, parts: list[str], create: bool) -> int:
        if len(parts) > 1 and _OPENAT2 is not None:
            # The folder in one call where the kernel has openat2 (3.6 against 7.5 us for three
            # levels here): it refuses a symlink at any step as the walk below does. Any failure
            # (a folder to make, a symlink to name in the refusal) is the walk's to handle.
            fd = _OPENAT2(self.fd, os.fsencode("/".join(parts[:-1])))
            if fd >= 0:
                return fd
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    nxt = self._make_dir(part, fd, parts, i)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise self._refused(parts, i, fd) from None
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _make_dir(self, part: str, fd: int, parts: list[str], i: int) -> int:
        """Make folder ``part`` in ``fd`` and open it. A folder that is gone again before it can be
        opened (removed or renamed by someone else, three times in a row) is refused: the output
        folder is being changed under the run."""
        for _ in range(3):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass  # made by another worker meanwhile (or a symlink planted: refused below)
            try:
                return self._open_dir(part, fd, parts, i)
            except FileNotFoundError:
                continue
        where = "/".join(parts[: i + 1])
        raise UnsafePathError(f"{where} under the output folder was removed or replaced while being written: refused")

    def _open_dir(self, part: str, fd: int, parts: list[str], i: int) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise self._refused(parts, i, fd) from None
            raise

    def _refused(self, parts: list[str], i: int, fd: int) -> UnsafePathError:
        where = "/".join(parts[: i + 1])
        try:
            link = stat.S_ISLNK(os.stat(parts[i], dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        what = "a symlink" if link else "not a folder"
        return UnsafePathError(f"{where} under the output folder is {what}: refused, nothing written through it")

    # ----------------------------------------------------------------- files

    def exists(self, name: str) -> bool:
        """Whether anything (a symlink included) has the name ``name``; never follows one."""
        try:
            fd, leaf = self.folder(name, create=False)
        except (FileNotFoundError, UnsafePathError):
            return False
        try:
            os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    def mtime_ns(self, name: str) -> int | None:
        try:
            fd, leaf = self.folder(name, create=False)
        except (FileNotFoundError, UnsafePathError):
            return None
        try:
            return os.stat(leaf, dir_fd=fd, follow_symlinks=False).st_mtime_ns
        except OSError:
            return None
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes, *, replace: bool, fsync: bool = False, replace_older_than: int | None = None) -> None:
        """Write ``data`` as output ``name``, atomically. ``replace=False``: :class:`Exists`
        when the name is taken. ``replace=True`` replaces a file, but with
        ``replace_older_than`` only one whose time is older (a newer one was written during
        this run by another input: :class:`Exists`)."""
        fd, leaf = self.folder(name)
        try:
            if not replace and self._write_unnamed(fd, leaf, data, fsync):
                return
            self._write_named(fd, leaf, data, replace, fsync, replace_older_than)
        finally:
            os.close(fd)

    def _write_unnamed(self, dfd: int, leaf: str, data: bytes, fsync: bool) -> bool:
        """An unnamed file in the target folder, linked to its name. False: not supported here."""
        global _TMPFILE
        if not _TMPFILE:
            return False
        try:
            fd = os.open(".", _TMPFILE | os.O_WRONLY, 0o644, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                _TMPFILE = 0
                return False
            raise
        try:
            _write_all(fd, data, fsync)
            if self._proc_fd is None:
                self._proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            try:
                # linkat(AT_SYMLINK_FOLLOW) of the fd's magic link: never replaces, never follows at the name
                os.link(str(fd), leaf, src_dir_fd=self._proc_fd, dst_dir_fd=dfd, follow_symlinks=True)
            except FileExistsError:
                raise Exists(leaf) from None
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                _TMPFILE = 0
                return False
        finally:
            os.close(fd)
        return True

    def _write_named(self, dfd: int, leaf: str, data: bytes, replace: bool, fsync: bool, older_than: int | None) -> None:
        global _RENAMEAT2
        tmp = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.part"
        tfd = self.tmp_fd
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644, dir_fd=tfd)
        try:
            try:
                _write_all(fd, data, fsync)
            finally:
                os.close(fd)
            if replace:
                if older_than is not None:
                    try:
                        if os.stat(leaf, dir_fd=dfd, follow_symlinks=False).st_mtime_ns >= older_than:
                            raise Exists(leaf)
                    except FileNotFoundError:
                        pass
                os.replace(tmp, leaf, src_dir_fd=tfd, dst_dir_fd=dfd)  # replaces a symlink, never follows it
                return
            if _RENAMEAT2 is not None:
                import ctypes

                if _RENAMEAT2(tfd, os.fsencode(tmp), dfd, os.fsencode(leaf), _RENAME_NOREPLACE) == 0:
                    return
                err = ctypes.get_errno()
                if err == errno.EEXIST:
                    raise Exists(leaf)
                if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
                    raise OSError(err, os.strerror(err), leaf)
                _RENAMEAT2 = None
            try:
                os.link(tmp, leaf, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                raise Exists(leaf) from None
        finally:
            try:
                os.unlink(tmp, dir_fd=tfd)
            except FileNotFoundError:
                pass

    def remove(self, name: str) -> None:
        """Remove output ``name`` (what this run wrote); a missing file or refused folder is ignored."""
        self._remove_at(name, os.unlink)

    def _remove_at(self, name: str, how: Any) -> None:
        try:
            fd, leaf = self.folder(name, create=False)
        except (OSError, UnsafePathError):
            return
        try:
            how(leaf, dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def open_temp(self, hint: str) -> tuple[Any, str]:
        """A new binary file in this run's temporary folder, and its name there (for
        :meth:`publish`; :meth:`discard_temp` removes it if it was not published)."""
        tmp = f"{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}-{hint}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=self.tmp_fd)
        return os.fdopen(fd, "wb"), tmp

    def publish(self, tmp: str, name: str) -> None:
        """Rename the temporary file ``tmp`` (:meth:`open_temp`) to output ``name``, replacing
        what has that name (a symlink there is replaced, never followed)."""
        fd, leaf = self.folder(name)
        try:
            os.replace(tmp, leaf, src_dir_fd=self.tmp_fd, dst_dir_fd=fd)
        finally:
            os.close(fd)

    def discard_temp(self, tmp: str) -> None:
        try:
            os.unlink(tmp, dir_fd=self.tmp_fd)
        except FileNotFoundError:
            pass

    def open_read(self, name: str) -> Any:
        """A binary file object reading output ``name``, no symlink followed at any step."""
        return self._open_file(name, os.O_RDONLY, "rb", create=False)

    def listdir(self, folder: str) -> list[str]:
        """The names in ``folder`` under the root ([] when it does not exist or is refused)."""
        try:
            fd, _ = self.folder(folder + "/-", create=False)  # the fd of ``folder`` itself
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            return []
        try:
            with os.scandir(fd) as it:
                return [e.name for e in it]
        finally:
            os.close(fd)

    def remove_empty_folder(self, folder: str) -> None:
        """Remove ``folder`` under the root if it is empty (else, or if missing, nothing)."""
        self._remove_at(folder, os.rmdir)

    def open_append(self, name: str) -> Any:
        """A binary file object appending to ``name`` in the root (the manifest), opened
        without following a symlink at any step."""
        return self._open_file(name, os.O_RDWR | os.O_APPEND | os.O_CREAT, "a+b", create=True)

    def _open_file(self, name: str, flags: int, mode: str, *, create: bool) -> Any:
        fd, leaf = self.folder(name, create=create)
        try:
            try:
                f = os.open(leaf, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafePathError(f"{name} in the output folder is a symlink: refused") from None
                raise
        finally:
            os.close(fd)
        return os.fdopen(f, mode)


def _write_all(fd: int, data: bytes, fsync: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if fsync:
        os.fsync(fd)
