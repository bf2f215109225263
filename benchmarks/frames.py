"""One frame of a large multi-frame file: read in parts against the whole file read.

    python benchmarks/frames.py                    # table + benchmarks/results/frames.json
    python benchmarks/frames.py --repeat 15

A data loader that calls ``fastdcm.render(path, frame=k)`` on a cine loop, a multi-frame CT or
a tomosynthesis volume needs one frame; reading the whole file for it costs time and memory in
proportion to the file. For each file, in one process:

``parts``  ``fastdcm.render(path, frame=k)`` as it is: files over ``header.READ_IN_PARTS_ABOVE``
           have their header read from their first bytes and only frame k's bytes read;
``whole``  the same call with ``READ_IN_PARTS_ABOVE`` raised above the file's size (the whole
           file read, as before);

the median of three loops of ``--repeat`` calls each way, the two ways' loops alternated, for
frames 1, the middle one and the last; then the peak resident memory of a fresh process that
renders the middle frame, each way (``VmHWM``).

Files: a 200-frame 512 x 512 16-bit native CT made here from pydicom's CT_small (105 MB), and
pydicom-data's ``color3d_jpeg_baseline.dcm`` (120 frames of JPEG baseline, 6 MB) when installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_io import machine, today, work_dir, write_result  # noqa: E402

# VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's at the fork, exec or not
_PEAK = r"""
import importlib, sys
header = importlib.import_module("fastdcm.header")
if sys.argv[2] == "whole":
    header.READ_IN_PARTS_ABOVE = 1 << 62
import fastdcm
fastdcm.render(sys.argv[1], frame=int(sys.argv[3]))
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""


def native_multiframe(path: Path, frames: int = 200) -> Path:
    """A native CT series as one multi-frame file: CT_small tiled to 512 x 512, ``frames`` frames."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    one = np.tile(ds.pixel_array, (4, 4))
    stack = np.stack([np.roll(one, i, axis=0) for i in range(frames)])
    ds.Rows, ds.Columns = one.shape
    ds.NumberOfFrames = frames
    ds.PixelData = stack.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def measure(path: Path, repeat: int) -> dict:
    import fastdcm

    header = importlib.import_module("fastdcm.header")
    n = importlib.import_module("fastdcm.render").open_image(path).n_frames
    frames = sorted({0, n // 2, n - 1})
    out: dict = {"file": path.name, "bytes": path.stat().st_size, "frames": n, "ms": {}}
    saved = header.READ_IN_PARTS_ABOVE
    for k in frames:
        times: dict[str, list[float]] = {"parts": [], "whole": []}
        for _ in range(3):  # the two sides' loops alternated (not call by call: the call after a whole
            for how in times:  # read of a large file pays for the pages it gave back, ~4 ms on 105 MB)
                header.READ_IN_PARTS_ABOVE = saved if how == "parts" else 1 << 62
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    fastdcm.render(path, frame=k)
                    times[how].append(time.perf_counter() - t0)
        header.READ_IN_PARTS_ABOVE = saved
        med = {how: statistics.median(v) * 1e3 for how, v in times.items()}
        out["ms"][f"frame {k + 1}"] = {**{h: round(v, 3) for h, v in med.items()}, "speed-up": round(med["whole"] / med["parts"], 1)}
    peak = {}
    for how in ("parts", "whole"):
        run = subprocess.run([sys.executable, "-c", _PEAK, str(path), how, str(n // 2)], capture_output=True, text=True, check=True)
        peak[how] = round(int(run.stdout.split()[-1]) / 1024, 1)
    out["peak_rss_mib"] = peak
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--json", default=str(HERE / "results" / "frames.json"))
    args = parser.parse_args(argv)
    import fastdcm

    rows = []
    with work_dir("frames-") as tmp:
        paths = [native_multiframe(Path(tmp) / "ct-200-frames.dcm")]
        try:
            from pydicom.data import get_testdata_file

            cine = get_testdata_file("color3d_jpeg_baseline.dcm")
            if cine:
                paths.append(Path(cine))
        except Exception:  # pydicom-data not installed
            pass
        for p in paths:
            fastdcm.render(p)  # warm: Numba, the decoder
            rows.append(measure(p, args.repeat))
    for r in rows:
        print(f"{r['file']} ({r['bytes'] / 1e6:.1f} MB, {r['frames']} frames): peak RSS {r['peak_rss_mib']['parts']} MiB "
              f"read in parts, {r['peak_rss_mib']['whole']} MiB read whole")
        for k, v in r["ms"].items():
            print(f"  {k}: {v['parts']} ms in parts, {v['whole']} ms whole ({v['speed-up']}x)")
    write_result(args.json, {"files": rows, "repeat": args.repeat, "machine": machine(), "date": today()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
