"""Small generated archives for the process and writer fault tests."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

CT = get_testdata_file("CT_small.dcm")


def ct_archive(root: Path, n: int, folders: int = 4) -> Path:
    """``root/src`` with ``n`` copies of CT_small, ``s<i % folders>/f<i:03>.dcm``."""
    src = root / "src"
    for i in range(n):
        folder = src / f"s{i % folders}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(CT, folder / f"f{i:03}.dcm")
    return src


def png_image(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """A PNG's picture: (mode, size, pixel bytes), decoded by Pillow.

    Images written by two processes are compared this way, not byte for byte: a CI run saw the
    "png" encoder (ISA-L's deflate) write one CT slice as two different, both valid, deflate streams
    of the same pixels in a Dask worker and in the test's own process (the cause was not found)."""
    from PIL import Image

    assert data.startswith(b"\x89PNG\r\n\x1a\n"), data[:16]
    with Image.open(io.BytesIO(data)) as image:
        return image.mode, image.size, image.tobytes()
