"""Encapsulated pixel data -> the byte ranges of each frame (PS3.5 A.4), without copying.

The pixel data element of undefined length holds a Basic Offset Table item, then one item per
fragment, then a sequence delimiter. :func:`frame_table` walks the item headers once
(bounds-checked: every claimed length is checked against the buffer before it is used) and
says which fragments make up each frame, from the Extended Offset Table, the Basic Offset
Table, one fragment per frame, or (no table, more fragments than frames) the codestream's
start marker at the beginning of a frame's first fragment. Frame N is then a memoryview of its
fragment (a join only when a frame spans several fragments): no frame before N is decoded or
copied. The tests hold it to pydicom's ``generate_frames`` on every test file.

A large file is not read whole (``header.py``): its pixel data is a :class:`FileRanges`, read by
ranges, and the same walk reads the item headers from it; a frame is then read alone.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Iterator, Sequence

from .. import elements
from ..errors import DecodeError, TruncatedPixelDataError

_ITEM = b"\xfe\xff\x00\xe0"

#: Codestream start markers, by which a frame's first fragment is told apart when there is
#: no offset table: JPEG / JPEG-LS (SOI), JPEG 2000 / HTJ2K codestream (SOC), JP2 file.
_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")

#: A fragment table of more entries than this is refused (a hostile file could otherwise
#: claim millions of empty items).
MAX_FRAGMENTS = 1 << 20


class FileRanges:
    """A file's bytes by ranges, read when asked for (``os.pread``): ``len()`` is its size,
    ``[a:b]`` its bytes from a to b, as bytes. Each read opens the file for itself (so threads
    may share one); a run of reads inside :meth:`opened` (the item headers' walk, while its header
    is made) shares one descriptor and serves small reads from a 4 kB window. A file whose size
    or modification time is no longer what they were when its header was read is refused
    (TruncatedPixelDataError): its frames would not be the ones the header describes."""

    WINDOW = 4096

    def __init__(self, path: str, size: int, mtime_ns: int) -> None:
        self.path, self.size, self.mtime_ns = path, size, mtime_ns
        self._fd: int | None = None  # inside opened() only
        self._window = (0, b"")

    def __len__(self) -> int:
        return self.size

    @contextlib.contextmanager
    def opened(self) -> Iterator[FileRanges]:
        """Reads share one descriptor until the block ends (not for use by several threads)."""
        self._fd = self._open()
        try:
            yield self
        finally:
            fd, self._fd = self._fd, None
            self._window = (0, b"")
            os.close(fd)

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise TruncatedPixelDataError(f"the file cannot be read again for its pixel data: {exc.strerror}") from None
        st = os.fstat(fd)
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            os.close(fd)
            raise TruncatedPixelDataError("the file changed after its header was read: its pixel data is not read")
        return fd

    def __getitem__(self, key: slice) -> bytes:
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("FileRanges reads contiguous ranges only")
        if stop <= start:
            return b""
        fd = self._fd
        if fd is None:
            fd = self._open()
            try:
                data = os.pread(fd, stop - start, start)
            finally:
                os.close(fd)
        else:
            at, window = self._window
            if at <= start and stop <= at + len(window):
                return window[start - at : stop - at]
            if stop - start <= 64:  # an item header or a start marker: read the window it begins
                self._window = (start, os.pread(fd, self.WINDOW, start))
                data = self._window[1][: stop - start]
            else:
                data = os.pread(fd, stop - start, start)
        if len(data) != stop - start:
            raise TruncatedPixelDataError(f"the file ends at byte {start + len(data)}, inside its pixel data")
        return data


def _view(buffer: bytes | memoryview | FileRanges) -> memoryview | FileRanges:
    return buffer if isinstance(buffer, FileRanges) else memoryview(buffer)


#: An item or delimiter header: group, element, length (PS3.5 7.5), little endian.
_ITEM_HEADER = struct.Struct("<HHI")


def _ranges_header(ranges: FileRanges, pos: int) -> tuple[int, int, int]:
    return _ITEM_HEADER.unpack(ranges[pos : pos + 8])


def fragments(
    buffer: bytes | memoryview | FileRanges, offset: int, delimited: bool = True
) -> tuple[list[int], list[tuple[int, int]]]:
    """(Basic Offset Table entries, [(start, length)] of each fragment) of the encapsulated
    value that starts at ``offset`` of ``buffer`` (at the Basic Offset Table item). In a file
    the value ends with a sequence delimiter; ``delimited=False`` is for a value on its own
    (a pydicom Dataset's ``PixelData``), which ends with its last fragment."""
    n = len(buffer)
    # item headers read in place (unpack_from: a 644-byte JPEG-LS file's walk 2.0 -> 1.3 us against
    # a slice each through elements.item); a file read in parts gives its bytes by slices
    header_at = _ranges_header if isinstance(buffer, FileRanges) else _ITEM_HEADER.unpack_from
    if offset + 8 > n:
        raise TruncatedPixelDataError("encapsulated pixel data does not start with an item (the Basic Offset Table)")
    group, elem, bot_length = header_at(buffer, offset)
    if (group << 16 | elem) != elements.ITEM:
        raise TruncatedPixelDataError("encapsulated pixel data does not start with an item (the Basic Offset Table)")
    pos = offset + 8
    if bot_length % 4 or pos + bot_length > n:
        raise TruncatedPixelDataError(f"the Basic Offset Table claims {bot_length} bytes, which do not fit")
    bot = list(struct.unpack(f"<{bot_length // 4}I", buffer[pos : pos + bot_length])) if bot_length else []
    pos += bot_length
    frags: list[tuple[int, int]] = []
    while True:
        if pos == n and not delimited and frags:
            return bot, frags
        if pos + 8 > n:  # cut short: a file whose last fragment may be missing is not trusted
            raise TruncatedPixelDataError(
                f"encapsulated pixel data ends after {len(frags)} fragment(s) without its sequence delimiter"
            )
        group, elem, length = header_at(buffer, pos)
        tag = group << 16 | elem
        start = pos + 8
        if tag == elements.SEQ_END:
            return bot, frags
        if tag != elements.ITEM:
            raise TruncatedPixelDataError(f"encapsulated pixel data: no item at byte {pos} (a fragment or the delimiter)")
        if length == elements.UNDEFINED or start + length > n:
            raise TruncatedPixelDataError(
                f"a fragment at byte {pos} claims {length} bytes but only {n - start} follow"
            )
        frags.append((start, length))
        if len(frags) > MAX_FRAGMENTS:
            raise TruncatedPixelDataError(f"encapsulated pixel data has more than {MAX_FRAGMENTS} fragments")
        pos = start + length


def frame_table(
    buffer: bytes | memoryview | FileRanges,
    offset: int,
    n_frames: int,
    extended: tuple[Sequence[int], Sequence[int]] | None = None,
    delimited: bool = True,
) -> list[list[tuple[int, int]]]:
    """For each frame, the (start, length) byte ranges in ``buffer`` that make it up."""
    bot, frags = fragments(buffer, offset, delimited)
    if not frags:
        raise TruncatedPixelDataError("encapsulated pixel data holds no fragment")
    first = frags[0][0] - 8  # item offsets in the tables count from the first fragment's item
    if extended is not None:
        return _from_extended(buffer, first, n_frames, extended)
    if n_frames == 1:
        return [frags]
    if bot:
        return _from_bot(bot, frags, first, n_frames)
    if len(frags) == n_frames:
        return [[f] for f in frags]
    if len(frags) < n_frames:
        raise TruncatedPixelDataError(f"encapsulated pixel data has {len(frags)} fragment(s) for {n_frames} frame(s)")
    view = _view(buffer)
    starts = [i for i, (s, length) in enumerate(frags) if any(view[s : s + len(m)] == m for m in _STARTS)]
    if len(starts) != n_frames or starts[0] != 0:
        raise DecodeError(
            f"{len(frags)} fragments for {n_frames} frames and no offset table: "
            f"{len(starts)} fragments begin a codestream, so the frames cannot be told apart"
        )
    bounds = starts + [len(frags)]
    return [frags[a:b] for a, b in zip(bounds, bounds[1:])]


def _from_bot(bot: list[int], frags: list[tuple[int, int]], first: int, n_frames: int) -> list[list[tuple[int, int]]]:
    if len(bot) != n_frames:
        raise TruncatedPixelDataError(f"the Basic Offset Table has {len(bot)} entries for {n_frames} frame(s)")
    index = {s - 8 - first: i for i, (s, _) in enumerate(frags)}
    firsts = []
    for k, off in enumerate(bot):
        i = index.get(off)
        if i is None or (firsts and i <= firsts[-1]):
            raise TruncatedPixelDataError(f"Basic Offset Table entry {k} ({off}) does not point at a fragment in order")
        firsts.append(i)
    if firsts[0] != 0:
        raise TruncatedPixelDataError("the Basic Offset Table's first entry does not point at the first fragment")
    bounds = firsts + [len(frags)]
    return [frags[a:b] for a, b in zip(bounds, bounds[1:])]


def _from_extended(
    buffer: bytes | memoryview | FileRanges, first: int, n_frames: int, extended: tuple[Sequence[int], Sequence[int]]
) -> list[list[tuple[int, int]]]:
    offsets, lengths = extended
    if len(offsets) != n_frames or len(lengths) != n_frames:
        raise TruncatedPixelDataError(
            f"the Extended Offset Table has {len(offsets)} offsets and {len(lengths)} lengths for {n_frames} frame(s)"
        )
    n = len(buffer)
    table = []
    for k, (off, length) in enumerate(zip(offsets, lengths)):
        item = first + int(off)
        start = item + 8
        if item < first or start + int(length) > n or _view(buffer)[item : item + 4] != _ITEM:
            raise TruncatedPixelDataError(f"Extended Offset Table entry {k} does not point at a fragment inside the data")
        table.append([(start, int(length))])
    return table


def frame_bytes(buffer: bytes | memoryview | FileRanges, ranges: list[tuple[int, int]]) -> bytes | memoryview:
    """The bytes of one frame: a view when it is one fragment, else the fragments joined.
    Trailing padding (the even-length byte) is left for the codec to ignore."""
    view = _view(buffer)
    if len(ranges) == 1:
        s, length = ranges[0]
        return view[s : s + length]
    return b"".join(view[s : s + length] for s, length in ranges)
