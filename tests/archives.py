"""Small generated archives for the process and writer fault tests."""

from __future__ import annotations

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
