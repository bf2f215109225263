"""The end-to-end report: fastdcm against its peers and the machine's floor, side by side.

    python benchmarks/report.py                                   # ct + mixed + mammo, 2 workers, PNG + JPEG
    python benchmarks/report.py --workloads ct --formats jpeg --count 200 --out /tmp/r
    python benchmarks/report.py --peers naive fast --repeat 3     # median of 3 runs per entry, round by round

For every workload and format, over the same files with the same number of worker
processes, one after the other in one run:

``fastdcm``   ``fastdcm.convert([corpus folder], out, workers=W, format=fmt, quality=Q,
              frames="first", quiet=True)``, timed around the call: discovery, the worker
              pool's start-up, rendering, encoding, atomic writes and the manifest included
              (a 2-file convert before the first timed one pays the parent's imports, as
              the peers' pools are warmed before their clocks start);
every peer of peers.py (``naive``, ``pydicom``, ``dicom2jpg``, ``fast``, ``dcmj2pnm``; see its
              docstring; Python peers' pools are started before their clock starts);
``floor``     reading every file's bytes + encoding the already rendered images with
              fastdcm's own encoder (``--floor-encoder fastdcm``, the default here).

``--as-user`` runs every entry as a user runs it instead, a fresh process timed from its start to
its exit: ``python -m fastdcm convert CORPUS -o OUT ...`` against each Python peer's own script
(``peers.py --script NAME``: its imports, its walk of the folder, its pool and kernels), start-up
counted on both sides (ct and mixed; no floor).

Every entry converts the first frame of every file and every output is checked (it
decodes, its size matches the DICOM). The page cache is warmed by reading every file once
before anything is timed, so no entry pays for the disk.

Printed and written to ``--out`` (default ``benchmarks/results/``): ``latest.json`` (the
machine: cores, CPU model, RAM, load, python, package versions, git commit; the settings;
every row with files/s, MB/s of input, seconds, errors; per workload and format the ratio
fastdcm/peer in files/s and fastdcm's efficiency = floor time / fastdcm time; the goals of
issue 3 with their verdicts) and ``latest.png`` (bar chart, files/s).

``mammo`` (4096x3328 JPEG 2000 lossless, decode-bound) compares fastdcm with the JPEG 2000
decoder alone: ``pydicom.pixels.pixel_array(path, decoding_plugin="pylibjpeg")`` per file (the
first frame), in a pool of the same number of workers; the goal is fastdcm within 10% of it.

Compare the ratios, not the absolute numbers: on a shared machine they move together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers  # noqa: E402
from make_corpus import corpus_files, ensure_corpus  # noqa: E402

RESULTS = HERE / "results"
WORKLOADS = ("ct", "mixed", "mammo")
FORMATS = peers.FORMATS
PEERS = tuple(p for p in peers.PEERS if p != "floor")
PACKAGES = ("fastdcm", "numpy", "numba", "pydicom", "pillow", "pylibjpeg", "pylibjpeg-libjpeg",
            "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls", "simplejpeg", "isal",
            "opencv-python-headless", "opencv-python", "dicomsdl", "dicom2jpg", "pytest-benchmark", "matplotlib")

#: issue 3's goals: (workload, fmt, what, peer or "floor"/"decoder", at least)
GOALS = (
    ("ct", "png", "naive", 8.0),
    ("ct", "png", "fast", 1.2),
    ("ct", "jpeg", "naive", 6.0),
    ("ct", "jpeg", "fast", 1.0),
    ("ct", "jpeg", "floor", 0.85),
    ("mammo", "png", "j2k-decode", 1 / 1.1),
    ("mammo", "jpeg", "j2k-decode", 1 / 1.1),
)


# --------------------------------------------------------------------------- the machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ram_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def machine() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    if shutil.which("dcmj2pnm"):
        out = subprocess.run(["dcmj2pnm", "--version"], capture_output=True, text=True).stdout
        versions["dcmtk"] = (out.split("v", 1)[-1].split()[0] if "v" in out else out.strip()) or "?"
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gb": round(_ram_gb() or 0, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
        "load_average_at_start": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- entries
def warm_page_cache(files: list[str]) -> None:
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def _expected_sizes(files: list[str], reduce: int = 0) -> list[tuple[int, int] | None]:
    """(width, height) of each input's image; with ``reduce=k``, 2^k times smaller (rounded up)."""
    sizes = [peers._expected_size(f) for f in files]
    f = 1 << reduce
    return [None if s is None else (-(-s[0] // f), -(-s[1] // f)) for s in sizes]


_WARM: set[str] = set()


def warm_fastdcm(files: list[str], out_dir: Path, fmt: str, workers: int, options: dict) -> None:
    """One small convert before the first timed one: the parent's imports and first-call costs
    are paid here, as the peers' pools are started and warmed before their clocks start."""
    import fastdcm

    if fmt in _WARM:
        return
    src = out_dir.with_name(out_dir.name + "-warm-src")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for i, f in enumerate(files[:2]):
        os.symlink(os.path.abspath(f), src / f"warm{i}.dcm")
    try:
        fastdcm.convert([str(src)], str(out_dir) + "-warm", workers=workers, format=fmt, frames="first",
                        quiet=True, **options)
    finally:
        shutil.rmtree(src, ignore_errors=True)  # two files: the warm output stays until the end
    _WARM.add(fmt)


def run_fastdcm(folder: Path, files: list[str], out_dir: Path, fmt: str, workers: int, quality: int,
                options: dict | None = None) -> dict:
    """fastdcm.convert over the corpus folder (it holds exactly ``files``), timed around the call.

    ``options``: more keyword options for convert (``--fastdcm-option batch_size=1``).
    """
    import fastdcm

    options = dict(options or {})
    if not hasattr(fastdcm, "convert"):
        return {"peer": "fastdcm", "fmt": fmt, "workers": workers, "skipped": "fastdcm.convert does not exist yet"}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    warm_fastdcm(files, out_dir, fmt, workers, options)
    in_bytes = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    report = fastdcm.convert([str(folder)], str(out_dir), workers=workers, format=fmt, quality=quality,
                             frames="first", quiet=True, **options)
    seconds = time.perf_counter() - t0
    errors = [f"{report.failed} inputs failed: {dict((str(k.value), v) for k, v in report.counts.items())}"] \
        if report.failed else []
    if report.discovered != len(files):
        errors.append(f"fastdcm discovered {report.discovered} inputs, the corpus has {len(files)}")
    produced = _check_outputs("fastdcm", out_dir, files, fmt, int(options.get("reduce", 0)), errors)
    n = len(files)
    return {
        "peer": "fastdcm", "fmt": fmt, "workers": workers, "files": n, "seconds": seconds,
        "files_per_s": n / seconds, "mb_per_s": in_bytes / 1e6 / seconds,
        "errors": len(errors), "error_samples": errors[:5],
        "output_bytes": sum(p.stat().st_size for p in produced),
        "convert_elapsed": report.elapsed,
        "convert_options": options,
    }


def _check_outputs(who: str, out_dir: Path, files: list[str], fmt: str, reduce: int, errors: list[str]) -> list[Path]:
    """The images ``who`` wrote under ``out_dir``; appends to ``errors`` unless there is one per
    input, each decodes, and the multiset of their sizes is the inputs' (names are each tool's own)."""
    from PIL import Image

    ext = peers.EXTENSIONS[fmt]
    produced = sorted(p for p in out_dir.rglob(f"*{ext}") if p.is_file())
    if len(produced) != len(files):
        errors.append(f"{who} wrote {len(produced)} images for {len(files)} inputs")
    sizes = []
    for p in produced:
        problem = peers.check_image(str(p), None)
        if problem:
            errors.append(problem)
            continue
        with Image.open(p) as im:
            sizes.append(im.size)
    expected = _expected_sizes(files, reduce)
    if sorted(sizes) != sorted(s for s in expected if s is not None) and not errors:
        errors.append(f"the sizes of {who}'s outputs are not the inputs' sizes")
    return produced


def run_as_user(name: str, folder: Path, files: list[str], out_dir: Path, fmt: str, workers: int, quality: int) -> dict:
    """``--as-user``: one entry as a user runs it, a fresh process from start to exit, timed around
    it: ``python -m fastdcm convert FOLDER -o OUT ...`` (interpreter, imports, kernels, the pool,
    discovery, the manifest) or the peer's own script (``peers.py --script``: interpreter, imports,
    its walk of the folder, its pool, its kernels). Outputs are checked as in-process runs' are."""
    if name == "fastdcm":
        cmd = [sys.executable, "-m", "fastdcm", "convert", str(folder), "-o", str(out_dir), "--format", fmt,
               "--quality", str(quality), "--frames", "first", "--workers", str(workers), "--quiet"]
    elif name in peers.SCRIPTS:
        reason = peers.unavailable_reason(name)
        if reason:
            return {"peer": name, "fmt": fmt, "workers": workers, "skipped": reason}
        cmd = [sys.executable, str(HERE / "peers.py"), "--script", name, str(folder), str(out_dir), fmt,
               str(workers), str(quality)]
    else:
        return {"peer": name, "fmt": fmt, "workers": workers, "skipped": "no script form (--as-user)"}
    in_bytes = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    errors = [] if run.returncode == 0 else [f"exit {run.returncode}: {run.stderr.strip()[-300:]}"]
    checked = len(errors)
    produced = _check_outputs(name, out_dir, files, fmt, 0, errors)
    # failed inputs, as the in-process rows count them: the images not written, and those that do not decode
    bad = sum(1 for e in errors[checked:] if not e.startswith(f"{name} wrote ") and "outputs are not the inputs' sizes" not in e)
    n = len(files)
    return {
        "peer": name, "fmt": fmt, "workers": workers, "files": n, "seconds": seconds,
        "files_per_s": n / seconds, "mb_per_s": in_bytes / 1e6 / seconds,
        "errors": max(0, n - len(produced)) + bad + (1 if bad == 0 and len(produced) == n and errors else 0),
        "error_samples": errors[:5],
        "output_bytes": sum(p.stat().st_size for p in produced), "as_user": True,
    }


def _decode_first_frame(path: str) -> tuple[int, str | None]:
    from pydicom.pixels import pixel_array

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(path, index=0, decoding_plugin="pylibjpeg")
        return int(arr.size), None
    except Exception as exc:  # a worker reports, never raises
        return 0, f"{path}: {type(exc).__name__}: {exc}"


def run_decoder_alone(files: list[str], workers: int, fmt: str) -> dict:
    """The JPEG 2000 decoder alone: pixel_array(path, index=0, decoding_plugin='pylibjpeg')."""
    in_bytes = sum(os.path.getsize(f) for f in files)
    with peers._pool(workers, "naive") as ex:  # started and warm (pydicom imported) before the clock
        t0 = time.perf_counter()
        results = list(ex.map(_decode_first_frame, files, chunksize=1))
        seconds = time.perf_counter() - t0
    errors = [e for _, e in results if e]
    expected = [s[0] * s[1] for s in _expected_sizes(files) if s]
    if not errors and [n for n, _ in results] != expected:
        errors.append("decoded sizes differ from Rows x Columns")
    n = len(files)
    return {"peer": "j2k-decode", "fmt": fmt, "workers": workers, "files": n, "seconds": seconds,
            "files_per_s": n / seconds, "mb_per_s": in_bytes / 1e6 / seconds,
            "errors": len(errors), "error_samples": errors[:5]}


def _median_row(rows: list[dict]) -> dict:
    """The run with the median time, with every run's seconds attached."""
    ok = [r for r in rows if "skipped" not in r]
    if not ok:
        return rows[0]
    ok.sort(key=lambda r: r["seconds"])
    row = dict(ok[(len(ok) - 1) // 2])
    if len(ok) > 1:
        row["runs_seconds"] = [r["seconds"] for r in rows if "skipped" not in r]
    return row


def run_once(name: str, workload: str, folder: Path, files: list[str], root: Path, fmt: str, args, i: int) -> dict:
    out = root / f"{workload}-{name}-{fmt}-{i}"
    if args.as_user:
        return run_as_user(name, folder, files, out, fmt, args.workers, args.quality)
    if name == "fastdcm":
        return run_fastdcm(folder, files, out, fmt, args.workers, args.quality, args.fastdcm_option)
    if name == "j2k-decode":
        return run_decoder_alone(files, args.workers, fmt)
    return peers.run_peer(name, files, out, fmt, args.workers, quality=args.quality,
                          encoder=args.floor_encoder if name == "floor" else None)


def clear_outputs(root: Path, workload: str, fmt: str) -> None:
    """Remove the output folders an earlier report left in ``root`` (``--work-dir``) for this
    workload and format, then sync, before anything is timed: every entry must write into a
    folder that does not exist yet. A peer writing over its earlier run's files (``open(..., "wb")``
    truncating 4,000 JPEGs) took 1.95-2.25 s where it takes 1.46-1.53 s into a new folder (ext4
    here), which made fastdcm look 1.1-1.2x faster than it is in those rounds."""
    stale = [d for d in root.glob(f"{workload}-*-{fmt}-*") if d.is_dir()]
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    if stale and hasattr(os, "sync"):
        os.sync()


def run_entries(names: list[str], workload: str, folder: Path, files: list[str], root: Path, fmt: str, args) -> list[dict]:
    """Every entry ``args.repeat`` times, round by round (fastdcm, each peer, the floor; then again),
    so a machine that drifts over minutes (a busy neighbour on this VM moved whole runs by 2x)
    weighs on every entry alike; the median run of each is reported."""
    runs: dict[str, list[dict]] = {name: [] for name in names}
    clear_outputs(root, workload, fmt)
    for i in range(args.repeat):
        for name in names:
            if runs[name] and "skipped" in runs[name][-1]:
                continue
            # no rmtree here: deleting 1,000 files makes the next entry's file creations slower
            # on some file systems (ext4 with discard here); the whole work dir goes at the end
            runs[name].append(run_once(name, workload, folder, files, root, fmt, args, i))
    rows = []
    for name in names:
        row = _median_row(runs[name])
        row["workload"] = workload
        rows.append(row)
    return rows


def entries_for(workload: str, args) -> list[str]:
    if workload == "mammo":
        return ["fastdcm", "j2k-decode"]
    if args.as_user:  # the floor has no start-up of its own to count
        return ["fastdcm", *args.peers]
    return ["fastdcm", *args.peers, "floor"]


# --------------------------------------------------------------------------- summary
def summarise(rows: list[dict]) -> dict:
    """Per workload and format: fastdcm's ratio to every entry (in files/s) and its efficiency."""
    out: dict = {}
    for r in rows:
        if r["peer"] != "fastdcm" or "skipped" in r:
            continue
        ours = r
        block = out.setdefault(r["workload"], {}).setdefault(r["fmt"], {"ratios": {}})
        for other in rows:
            if other["workload"] == r["workload"] and other["fmt"] == r["fmt"] and other["peer"] != "fastdcm" \
                    and "skipped" not in other:
                block["ratios"][other["peer"]] = other["seconds"] / ours["seconds"]
        if "floor" in block["ratios"]:
            block["efficiency"] = block["ratios"]["floor"]
        if "j2k-decode" in block["ratios"]:
            block["vs_decoder"] = block["ratios"]["j2k-decode"]
    return out


def goals(summary: dict) -> list[dict]:
    verdicts = []
    for workload, fmt, other, target in GOALS:
        value = summary.get(workload, {}).get(fmt, {}).get("ratios", {}).get(other)
        what = {"floor": "efficiency (floor time / fastdcm time)",
                "j2k-decode": "JPEG 2000 decoder time / fastdcm time"}.get(other, f"x the {other} peer (files/s)")
        verdicts.append({"workload": workload, "fmt": fmt, "against": other, "target": round(target, 3),
                         "value": None if value is None else round(value, 3), "what": what,
                         "met": None if value is None else value >= target})
    return verdicts


def format_table(rows: list[dict], summary: dict) -> str:
    lines = [f"{'workload':8} {'fmt':5} {'entry':11} {'files/s':>9} {'MB/s':>8} {'seconds':>8} "
             f"{'errors':>6} {'fastdcm x':>9}"]
    for r in rows:
        head = f"{r['workload']:8} {r['fmt']:5} {r['peer']:11}"
        if "skipped" in r:
            lines.append(f"{head} skipped: {r['skipped']}")
            continue
        ratio = summary.get(r["workload"], {}).get(r["fmt"], {}).get("ratios", {}).get(r["peer"])
        rtxt = f"{ratio:8.2f}x" if ratio is not None else "        -"
        lines.append(f"{head} {r['files_per_s']:9.1f} {r['mb_per_s']:8.1f} {r['seconds']:8.2f} "
                     f"{r['errors']:6d} {rtxt}")
    for workload, per_fmt in summary.items():
        for fmt, block in per_fmt.items():
            if "efficiency" in block:
                lines.append(f"{workload} {fmt}: fastdcm efficiency (floor time / fastdcm time) = {block['efficiency']:.2f}")
            if "vs_decoder" in block:
                lines.append(f"{workload} {fmt}: JPEG 2000 decoder alone time / fastdcm time = {block['vs_decoder']:.2f}")
    return "\n".join(lines)


def chart(rows: list[dict], summary: dict, info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    formats = list(dict.fromkeys(r["fmt"] for r in rows))
    fig, axes = plt.subplots(len(workloads), len(formats), figsize=(5.2 * len(formats), 2.9 * len(workloads)),
                             squeeze=False)
    for (i, workload), (j, fmt) in ((a, b) for a in enumerate(workloads) for b in enumerate(formats)):
        ax = axes[i][j]
        sel = [r for r in rows if (r["workload"], r["fmt"]) == (workload, fmt) and "skipped" not in r]
        names = [r["peer"] for r in sel]
        values = [r["files_per_s"] for r in sel]
        colours = ["#d62728" if n == "fastdcm" else "#7f7f7f" if n in ("floor", "j2k-decode") else "#1f77b4"
                   for n in names]
        y = list(range(len(sel)))
        ax.barh(y, values, color=colours)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        if i == len(workloads) - 1:
            ax.set_xlabel("files/s (more is better)")
        title = f"{workload}, {fmt.upper()}"
        block = summary.get(workload, {}).get(fmt, {})
        if "efficiency" in block:
            title += f": efficiency {block['efficiency']:.2f}"
        if "vs_decoder" in block:
            title += f": decoder time / fastdcm time {block['vs_decoder']:.2f}"
        ax.set_title(title, fontsize=10)
        for yi, r in zip(y, sel):
            ratio = block.get("ratios", {}).get(r["peer"])
            v = r["files_per_s"]
            label = (f"{v:.0f}" if v >= 10 else f"{v:.2f}") + (f"  (fastdcm {ratio:.2f}x)" if ratio and r["peer"] != "fastdcm" else "")
            ax.text(v, yi, " " + label, va="center", fontsize=7)
        ax.set_xlim(0, max(values or [1]) * 1.6)
    workers = rows[0]["workers"] if rows else "?"
    fig.suptitle(f"fastdcm vs peers, {workers} workers, same files; {info['cores']} cores {info['cpu']}, "
                 f"python {info['python']}, fastdcm {info.get('git_commit', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fastdcm vs its peers and the floor, side by side.")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    p.add_argument("--count", type=int, default=None, help="files per workload (default: the corpus default)")
    p.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--floor-encoder", default="fastdcm", help="the floor's encoder: fastdcm (default) or default")
    p.add_argument("--fastdcm-option", action="append", default=[], metavar="KEY=VALUE",
                   help="another keyword option for fastdcm.convert, e.g. batch_size=1 (repeatable)")
    p.add_argument("--repeat", type=int, default=1, help="runs per entry; the median run is reported")
    p.add_argument("--as-user", action="store_true",
                   help="run every entry as a fresh process, start-up counted: fastdcm's command line against "
                        "each peer's own script (peers.py --script); ct and mixed, no floor")
    p.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    p.add_argument("--replot", type=Path, default=None, metavar="JSON",
                   help="only redraw the chart of a report JSON (next to it, .png)")
    p.add_argument("--work-dir", type=Path, default=None, help="scratch folder for outputs (default: a temp dir)")
    args = p.parse_args(argv)
    if args.as_user and "mammo" in args.workloads:
        p.error("--as-user runs the ct and mixed workloads (mammo compares with a decoder, not a tool)")
    if args.replot:
        doc = json.loads(args.replot.read_text())
        chart(doc["rows"], doc["summary"], doc["machine"], args.replot.with_suffix(".png"))
        return 0
    if args.floor_encoder == "default":
        args.floor_encoder = None
    options = {}
    for item in args.fastdcm_option:
        key, _, value = item.partition("=")
        options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else value.strip()
    args.fastdcm_option = options

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['ram_gb']} GB, python {info['python']}, "
          f"load {info['load_average_at_start']}", file=sys.stderr)
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="fastdcm-report-"))
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    corpora = {}
    t_start = time.perf_counter()
    try:
        for workload in args.workloads:
            count = args.count if workload != "mammo" else None
            folder = ensure_corpus(workload, count, progress=True)
            files = corpus_files(folder)
            corpora[workload] = {"folder": str(folder), "files": len(files),
                                 "bytes": sum(os.path.getsize(f) for f in files)}
            warm_page_cache(files)
            print(f"{workload}: {len(files)} files, {corpora[workload]['bytes'] / 1e6:.0f} MB; "
                  f"{args.workers} workers", file=sys.stderr)
            for fmt in args.formats:
                for row in run_entries(entries_for(workload, args), workload, folder, files, root, fmt, args):
                    name = row["peer"]
                    rows.append(row)
                    if "skipped" in row:
                        print(f"  {fmt:5} {name:11} skipped: {row['skipped']}", file=sys.stderr, flush=True)
                    else:
                        print(f"  {fmt:5} {name:11} {row['files_per_s']:9.1f} files/s {row['mb_per_s']:8.1f} MB/s "
                              f"{row['seconds']:7.2f} s errors={row['errors']} {row['error_samples'][:1]}",
                              file=sys.stderr, flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarise(rows)
    verdicts = goals(summary)
    info["load_average_at_end"] = list(os.getloadavg())
    table = format_table(rows, summary)
    print(table)
    for g in verdicts:
        if g["value"] is not None:
            print(f"goal {g['workload']} {g['fmt']}: {g['what']} {g['value']:.2f} >= {g['target']:.2f}: "
                  f"{'met' if g['met'] else 'MISSED'}")
    doc = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "settings": {"workers": args.workers, "formats": args.formats, "quality": args.quality, "as_user": args.as_user,
                     "floor_encoder": args.floor_encoder or "default", "repeat": args.repeat,
                     "frames": "first", "fastdcm_options": args.fastdcm_option},
        "corpora": corpora,
        "rows": rows,
        "summary": summary,
        "goals": verdicts,
        "table": table,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(doc, indent=1) + "\n")
    chart(rows, summary, info, args.out / "latest.png")
    print(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
