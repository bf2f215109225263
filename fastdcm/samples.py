"""A small sample archive for trying fastdcm, copied from the test files pydicom ships.

    python -m fastdcm.samples samples/      # writes a study-like folder of real DICOM images

It covers CT, MR, CR (MONOCHROME1), ultrasound RGB and palette colour, multi-frame, and
compressed transfer syntaxes (JPEG 2000, JPEG lossless, JPEG-LS, RLE). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

#: (file in pydicom's test data, where it goes in the sample archive)
SAMPLES = (
    ("CT_small.dcm", "CT/IM0001.dcm"),
    ("MR_small.dcm", "MR/IM0001.dcm"),
    ("MR_small_jp2klossless.dcm", "MR/IM0002_j2k.dcm"),
    ("MR_small_RLE.dcm", "MR/IM0003_rle"),
    ("JPEGLSNearLossless_16.dcm", "MR/IM0004_jls.dcm"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "OT/IM0001_jpegll.dcm"),
    ("MR2_UNCI.dcm", "MR/IM0005"),
    ("SC_rgb.dcm", "US/IM0001_rgb.dcm"),
    ("OBXXXX1A.dcm", "US/IM0002_palette.dcm"),
    ("US1_J2KR.dcm", "US/IM0003_ybr_rct.dcm"),
    ("emri_small.dcm", "MR/multiframe.dcm"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR/IM0006.IMA"),
)


def write_samples(folder: str | Path, missing: list[str] | None = None) -> list[Path]:
    """Copy the sample images into ``folder``; returns the files written. Files that are not on
    this machine (the larger ones come with the ``pydicom-data`` package) are skipped, never
    downloaded, and their names go to ``missing``."""
    root = Path(folder)
    written = []
    for name, rel in SAMPLES:
        src = get_testdata_file(name, download=False)
        if src is None:
            if missing is not None:
                missing.append(name)
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(dest)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdcm.samples", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="samples", help="where to write (default: ./samples)")
    args = parser.parse_args(argv)
    missing: list[str] = []
    files = write_samples(args.folder, missing)
    print(f"{len(files)} sample DICOM files written to {args.folder}", file=sys.stderr)
    if missing:
        print(f"{len(missing)} not on this machine ({', '.join(missing)}): pip install pydicom-data", file=sys.stderr)
    return 0 if files and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
