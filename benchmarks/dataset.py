"""What the dataset products cost: the metadata table and the gallery's thumbnails, side by side
with a plain run, and memory as the table grows.

    python benchmarks/dataset.py                   # table + benchmarks/results/dataset.json
    python benchmarks/dataset.py --files 1000 --rounds 3 --rows 1000 100000

``cost``    the ct workload (``make_corpus.py ct``: nested CT slices), JPEG q90, 2 workers:
            ``fastdcm.convert`` plain, with ``metadata="metadata.parquet"`` (default columns), with
            ``gallery=True`` (thumbnails in the same pass and the page built at the end), and with
            both, alternated round by round into fresh folders; the median of each, files/s, and
            each one's ratio to the plain run (the issue's goal: at most 10 %, a ratio of at least 0.90).
``memory``  peak resident memory of a ``fastdcm.convert`` process (``ru_maxrss``, workers not
            included) over copies of a 10-frame MR (64 x 64, PNG), one row per frame, for tables of
            ``--rows`` rows, each run also without the table: the table's own share is the
            difference (the run itself grows a little with the outputs: its name registry keeps
            every output name to catch two inputs writing one). The goal: the largest run with the
            table within 10 % of the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cost(work: Path, files: int, rounds: int, workers: int) -> dict:
    import fastdcm

    sys.path.insert(0, str(HERE))
    import make_corpus

    corpus = work / "ct"
    make_corpus.build_corpus("ct", corpus, files)
    fastdcm.convert([str(corpus)], str(work / "warm"), workers=workers, format="jpeg", quiet=True,
                    metadata="m.parquet", gallery=True)
    variants = {
        "plain": {},
        "metadata": {"metadata": "metadata.parquet"},
        "gallery": {"gallery": True},
        "both": {"metadata": "metadata.parquet", "gallery": True},
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, extra in variants.items():
            out = work / f"{name}-{i}"
            t0 = time.perf_counter()
            report = fastdcm.convert([str(corpus)], str(out), workers=workers, format="jpeg", quiet=True, **extra)
            times[name].append(time.perf_counter() - t0)
            assert report.ok and report.converted == files, report.summary()
            if "metadata" in extra:
                assert fastdcm.read_metadata(out / "metadata.parquet").num_rows == files
            if "gallery" in extra:
                assert f"({files} images" in report.gallery and "made from the output" not in report.gallery, report.gallery
            shutil.rmtree(out)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "files": files, "workers": workers, "rounds": rounds,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "files_per_s": {k: round(files / v, 1) for k, v in med.items()},
        "ratio_over_plain": {k: round(med["plain"] / med[k], 3) for k in variants if k != "plain"},
    }


_MEMORY_RUN = r"""
import resource, sys, fastdcm
extra = {"metadata": "metadata.parquet"} if sys.argv[3] == "with" else {}
report = fastdcm.convert([sys.argv[1]], sys.argv[2], workers=2, quiet=True, **extra)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, report.frames)
"""


def memory(work: Path, rows: list[int]) -> dict:
    from pydicom.data import get_testdata_file

    mr = get_testdata_file("emri_small.dcm")  # 10 frames
    out: dict[str, dict] = {}
    for n in rows:
        src = work / f"mr-{n}"
        for i in range(max(1, n // 10)):
            folder = src / f"s{i // 500:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(mr, folder / f"mr{i:06d}.dcm")
        run: dict = {}
        for mode in ("without", "with"):
            proc = subprocess.run([sys.executable, "-c", _MEMORY_RUN, str(src), str(work / f"mem-{mode}-{n}"), mode],
                                  capture_output=True, text=True, check=True)
            rss_kib, frames = (int(v) for v in proc.stdout.split())
            run["rows"] = frames
            run[f"peak_rss_mib_{mode}"] = round(rss_kib / 1024, 1)
            shutil.rmtree(work / f"mem-{mode}-{n}")
        run["table_mib"] = round(run["peak_rss_mib_with"] - run["peak_rss_mib_without"], 1)
        out[str(n)] = run
        shutil.rmtree(src)
    peaks = [v["peak_rss_mib_with"] for v in out.values()]
    return {"runs": out, "ratio_largest_over_smallest": round(max(peaks) / min(peaks), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="CT files of the cost run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--json", default=str(HERE / "results" / "dataset.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fastdcm-metadata-") as tmp:
        work = Path(tmp)
        result = {
            "cost": cost(work, args.files, args.rounds, args.workers),
            "memory": memory(work, args.rows),
            "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "date": time.strftime("%Y-%m-%d"),
        }
    c, m = result["cost"], result["memory"]
    print(f"ct JPEG, {c['files']} files, {c['workers']} workers, median of {c['rounds']} rounds: "
          f"plain {c['files_per_s']['plain']} files/s")
    for name, ratio in c["ratio_over_plain"].items():
        print(f"  with {name}: {c['files_per_s'][name]} files/s, {ratio:.2f} of plain (goal >= 0.90)")
    for n, run in m["runs"].items():
        print(f"{run['rows']} rows: peak RSS {run['peak_rss_mib_with']} MiB with the table, "
              f"{run['peak_rss_mib_without']} MiB without (the table's share: {run['table_mib']} MiB)")
    print(f"largest / smallest peak: {m['ratio_largest_over_smallest']:.2f} (goal <= 1.10)")
    if args.json:
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
