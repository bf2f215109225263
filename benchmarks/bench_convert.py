"""fastdcm.convert over a generated CT archive: 1 vs 2 workers, and peak memory vs archive size.

As a pytest-benchmark suite (CI runs it with ``--benchmark-disable`` as a smoke test)::

    pytest benchmarks/bench_convert.py                       # timings, 1 and 2 workers
    FASTDCM_BENCH_COUNT=1000 pytest benchmarks/bench_convert.py

As a script, one run of each, printed as a small table::

    python benchmarks/bench_convert.py --count 1000          # files/s with 1 and 2 workers, ratio
    python benchmarks/bench_convert.py --memory 1000 10000   # peak RSS of all processes per count

The archive is ``make_corpus.py``'s ``ct`` workload (512x512 int16, real header of
``693_UNCR.dcm``, varied pixels). Every run starts from an empty output folder; the page
cache is warmed by one untimed pass over the files; Numba is warm before the clock starts.
Peak memory is the largest sum of RSS over the parent and all its descendants (fork
server, workers), sampled every 20 ms from /proc.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import fastdcm  # noqa: E402
from fastdcm.errors import Status  # noqa: E402
from make_corpus import corpus_files, ensure_corpus  # noqa: E402

COUNT = int(os.environ.get("FASTDCM_BENCH_COUNT", "200"))


def _warm_cache(folder: Path) -> None:
    for path in corpus_files(folder):
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass


def run_convert(folder: Path, workers: int, fmt: str = "png") -> tuple[float, fastdcm.Report]:
    # beside the corpus, not in /tmp: on some machines (this one) creating files in /tmp
    # costs ~0.6 ms each against ~0.02-0.1 ms elsewhere on the same disk
    # Outputs are removed at exit, not between runs: deleting 1,000 files makes the next
    # run's file creations slower on some file systems (ext4 with discard here).
    out = Path(tempfile.mkdtemp(prefix="out-", dir=folder.parent))
    _OUTPUTS.append(out)
    start = time.perf_counter()
    report = fastdcm.convert([folder], out, workers=workers, format=fmt, quiet=True, frames="first")
    elapsed = time.perf_counter() - start
    assert report.counts[Status.CONVERTED] == report.discovered > 0, report.summary()
    return elapsed, report


_OUTPUTS: list[Path] = []


@atexit.register
def _remove_outputs() -> None:
    for out in _OUTPUTS:
        shutil.rmtree(out, ignore_errors=True)


# --------------------------------------------------------------------------- pytest-benchmark

try:
    import pytest
except ImportError:  # script use without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def ct_corpus():
        folder = ensure_corpus("ct", count=COUNT)
        _warm_cache(folder)
        run_convert(folder, 1)  # pays imports and the fork server's start once
        return folder

    @pytest.mark.parametrize("workers", [1, 2])
    def test_convert_ct(benchmark, ct_corpus, workers):
        benchmark.group = "convert-ct"
        benchmark.extra_info["files"] = COUNT
        elapsed, report = benchmark.pedantic(run_convert, args=(ct_corpus, workers), rounds=3, iterations=1)
        assert report.converted == COUNT


# --------------------------------------------------------------------------- script


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Largest summed RSS of this process and its descendants while active."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for p in _descendants(me)))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="CT files for the throughput runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per entry; the best is reported")
    parser.add_argument("--format", default="png")
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="counts for the peak-memory runs (2 workers)")
    args = parser.parse_args(argv)
    fastdcm.kernels.warmup(full=True)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    if args.count:
        folder = ensure_corpus("ct", count=args.count)
        _warm_cache(folder)
        run_convert(folder, 1, args.format)
        rates = {}
        for workers in (1, 2):
            best = min(run_convert(folder, workers, args.format)[0] for _ in range(args.repeat))
            rates[workers] = args.count / best
            print(f"ct x{args.count} {args.format} workers={workers}: {best:.2f} s, {rates[workers]:.0f} files/s")
        print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}x (goal >= 1.7)")
    peaks = {}
    for count in args.memory:
        folder = ensure_corpus("ct", count=count)
        with PeakMemory() as mem:
            elapsed, _ = run_convert(folder, 2, args.format)
        peaks[count] = mem.peak
        print(f"ct x{count}: peak RSS of all processes {mem.peak / 2**20:.0f} MiB ({elapsed:.1f} s)")
    if len(peaks) >= 2:
        lo, hi = min(peaks), max(peaks)
        print(f"peak memory {hi} vs {lo} files: {peaks[hi] / peaks[lo]:.3f}x (goal <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
