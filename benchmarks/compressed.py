"""fastdcm's whole pipeline against dicomsdl's decode alone, on every compressed test file.

    python benchmarks/compressed.py                 # table per transfer syntax + benchmarks/results/compressed.json
    python benchmarks/compressed.py --repeat 3 --min-time 0.02

For every compressed image file of pydicom's test data and pydicom-data that both can read,
in one process and interleaved file by file (so both see the same machine state):

``fastdcm``   ``fastdcm.render(path)``: read the file, parse the header, decode frame 0,
              modality LUT + VOI + uint8 (the whole pipeline);
``dicomsdl``  ``dicomsdl.open(path).pixelData()``: read + decode frame 0, nothing else (the C++
              library's own figure, with no windowing and no 8-bit output).

Each time is the median of ``--repeat`` timings of a loop that runs at least ``--min-time``
seconds, the two sides' loops alternated (a shared machine's slow moments fall on both). The ratio is dicomsdl's time over fastdcm's (above 1: fastdcm does all of its work in
less time than dicomsdl takes to decode); per transfer syntax and overall, the geometric mean.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections import defaultdict

import numpy as np


def compressed_files() -> list[tuple[str, str]]:
    """(path, transfer syntax name) of every compressed image test file."""
    import pydicom
    from pydicom.data import get_testdata_files

    out = []
    for path in sorted(f for f in get_testdata_files() if os.path.isfile(f)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                ts = pydicom.uid.UID(ds.file_meta.TransferSyntaxUID)
            except Exception:
                continue
        if ts.is_compressed and "Rows" in ds:
            out.append((path, ts.name))
    return out


def _loop_length(fn, min_time: float) -> int:
    """Calls of ``fn`` that take at least ``min_time`` seconds in a loop."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            return n
        n = max(n * 2, int(n * min_time / max(t, 1e-9)))


def _time_pair(fa, fb, min_time: float, repeat: int) -> tuple[float, float]:
    """Median seconds per call of ``fa`` and of ``fb``, their timed loops alternated (a, b, a,
    b, ...) so that both see the same moments of a shared machine."""
    na, nb = _loop_length(fa, min_time), _loop_length(fb, min_time)
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, n, out in ((fa, na, samples[0]), (fb, nb, samples[1])):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - t0) / n)
    return statistics.median(samples[0]), statistics.median(samples[1])


def _crashes_dicomsdl(path: str) -> str:
    """dicomsdl aborts the process on some files (a double free on OBXXXX1A_rle_2frame.dcm):
    try each file in a child process first; '' when it survives."""
    import subprocess

    code = "import sys, dicomsdl; dicomsdl.open(sys.argv[1]).pixelData()"
    res = subprocess.run([sys.executable, "-c", code, path], capture_output=True, timeout=120)
    return "" if res.returncode >= 0 else f"signal {-res.returncode}"


def run(repeat: int, min_time: float) -> dict:
    import dicomsdl

    import fastdcm
    from fastdcm import kernels

    kernels.warmup(full=True)
    rows = []
    for path, ts in compressed_files():
        crash = _crashes_dicomsdl(path)
        if crash:
            rows.append({"file": os.path.basename(path), "ts": ts, "skipped": f"dicomsdl crashed ({crash})"})
            continue
        try:
            img = fastdcm.render(path)
            ref = dicomsdl.open(path).pixelData()
        except Exception as exc:  # either side cannot: listed, not timed
            rows.append({"file": os.path.basename(path), "ts": ts, "skipped": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        assert img.shape[:2] == ref.shape[:2], (path, img.shape, ref.shape)
        t_fast, t_sdl = _time_pair(lambda: fastdcm.render(path), lambda: dicomsdl.open(path).pixelData(), min_time, repeat)
        rows.append({"file": os.path.basename(path), "ts": ts, "fastdcm_s": t_fast, "dicomsdl_s": t_sdl, "ratio": t_sdl / t_fast})
    by_ts = defaultdict(list)
    for r in rows:
        if "ratio" in r:
            by_ts[r["ts"]].append(r["ratio"])
    geo = lambda xs: math.exp(sum(map(math.log, xs)) / len(xs))  # noqa: E731
    summary = {ts: {"files": len(v), "geomean": geo(v), "min": min(v)} for ts, v in sorted(by_ts.items())}
    all_ratios = [x for v in by_ts.values() for x in v]
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "numpy": np.__version__,
        "repeat": repeat,
        "min_time": min_time,
        "files": rows,
        "per_transfer_syntax": summary,
        "overall": {"files": len(all_ratios), "geomean": geo(all_ratios) if all_ratios else float("nan")},
    }


def table(result: dict) -> str:
    lines = ["| transfer syntax | files | fastdcm render vs dicomsdl decode (geomean) | lowest file |", "|---|---|---|---|"]
    for ts, s in result["per_transfer_syntax"].items():
        lines.append(f"| {ts} | {s['files']} | {s['geomean']:.2f} | {s['min']:.2f} |")
    o = result["overall"]
    lines.append(f"| **all compressed** | {o['files']} | **{o['geomean']:.2f}** | |")
    skipped = [r for r in result["files"] if "skipped" in r]
    if skipped:
        lines.append("")
        lines.append("not timed (one side cannot read them): " + ", ".join(f"{r['file']} ({r['skipped'][:60]})" for r in skipped))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.01)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "compressed.json"))
    args = p.parse_args(argv)
    result = run(args.repeat, args.min_time)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(table(result))
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
