"""What the dataset products cost: the metadata table and the gallery's thumbnails, side by side
with a plain run, and memory as the table grows.

    python benchmarks/dataset.py                   # table + benchmarks/results/dataset.json
    python benchmarks/dataset.py --files 1000 --rounds 3 --rows 1000 100000
    python benchmarks/dataset.py --formats jpeg    # the cost in JPEG only (the other sections as always)

``cost``    the ct workload (``make_corpus.py ct``: nested CT slices), JPEG q90 (``cost``) and PNG
            (``cost_png``; ``--formats``: report.py's ct workload is both), 2 workers:
            ``fastdcm.convert`` plain, with ``metadata="metadata.parquet"`` (default columns), with
            ``gallery=True`` (thumbnails in the same pass and the page built at the end), with
            both, and with both while the gallery's image work is (nearly) free (``both_images_free``:
            a bound, see images_free()), alternated round by round (the order rotated each round, each run after an
            ``os.sync``) into fresh folders; the median of each, files/s, and
            each one's ratio to the plain run (the issue's goal: at most 10 %, a ratio of at least 0.90),
            in wall time and in CPU time (the process and its workers: RUSAGE_CHILDREN counts
            workers once they have exited, which they have when ``convert`` returns), and the median
            of each round's own ratio in wall time, with their range; then the same
            variants in one process (``workers=0``), alternated, CPU time per file: what each costs
            without the pool, the second core or the parent in between; where "both" goes, each
            piece it adds timed in one-process runs of its own (``serial_both_pieces_us``, see
            pieces()); and the ``floor``: the
            compiled work the table and the gallery add per input (header walk, thumbnail kernel,
            sheet JPEG and write, Arrow and Parquet) timed alone, and the ratio it leaves (see floor()).
``gallery`` the gallery of 1,000 and 100,000 images: build time, what the browser loads first, how
            long headless chromium takes to show the first page, and the peak memory of a build in a
            process of its own (an image's share: the peak over the resident size before the build).
``memory``  peak resident memory of a ``fastdcm.convert`` process (``ru_maxrss``, workers not
            included) over copies of a 10-frame MR (64 x 64, PNG), one row per frame, for tables of
            ``--rows`` rows, each run also without the table: the table's own share is the
            difference (the run itself grows a little with the outputs: its name registry keeps
            every output name to catch two inputs writing one). The goal: the largest run with the
            table within 10 % of the smallest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_io import machine, today, work_dir, write_result  # noqa: E402


def cost(work: Path, files: int, rounds: int, workers: int, fmt: str = "jpeg") -> dict:
    import fastdcm

    sys.path.insert(0, str(HERE))
    import make_corpus

    corpus = work / "ct"
    if not corpus.exists():  # (one corpus for every format)
        make_corpus.build_corpus("ct", corpus, files)
    fastdcm.convert([str(corpus)], str(work / f"warm-{fmt}"), workers=workers, format=fmt, quiet=True,
                    metadata="m.parquet", gallery=True)
    variants = {
        "plain": {},
        "metadata": {"metadata": "metadata.parquet"},
        "gallery": {"gallery": True},
        "both": {"metadata": "metadata.parquet", "gallery": True},
        # a bound, not a product: "both" with the gallery's image work (nearly) free (images_free)
        "both_images_free": {"metadata": "metadata.parquet", "gallery": True},
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(rounds):
        # Each round starts with another variant (a rotation), so none always runs right after
        # the others have filled the page cache; and every run starts with no dirty pages of
        # earlier runs left to write back (os.sync, not timed): the kernel's writeback of 6,000
        # files made just before otherwise lands on whichever variant runs last.
        for name in names[i % len(names):] + names[: i % len(names)]:
            extra = variants[name]
            out = work / f"{fmt}-{name}-{i}"
            os.sync()
            c0 = _cpu()
            t0 = time.perf_counter()
            with images_free(name.endswith("_images_free")):
                report = fastdcm.convert([str(corpus)], str(out), workers=workers, format=fmt, quiet=True, **extra)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu() - c0)
            assert report.ok and report.converted == files, report.summary()
            if "metadata" in extra:
                assert fastdcm.read_metadata(out / "metadata.parquet").num_rows == files
            if "gallery" in extra:
                assert f"({files} images" in report.gallery and "made from the output" not in report.gallery, report.gallery
            # (outputs stay until the end: deleting thousands of files slows the next run's creations)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    # One process (workers=0), the same variants alternated: the CPU time each costs per file, with no
    # pool, no second core and no parent in between (a 1-second parallel run on this VM swings by 30 %)
    serial: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(max(3, rounds // 2)):
        for name in names[i % len(names):] + names[: i % len(names)]:
            out = work / f"serial-{fmt}-{name}-{i}"
            c0 = time.process_time()
            with images_free(name.endswith("_images_free")):
                report = fastdcm.convert([str(corpus)], str(out), workers=0, format=fmt, quiet=True, **variants[name])
            serial[name].append((time.process_time() - c0) / files * 1e6)
            assert report.ok and report.converted == files, report.summary()
    us = {k: statistics.median(v) for k, v in serial.items()}
    # Where "both" goes: its pieces timed in runs of their own (the timing costs ~12 us a file, which
    # the CPU figures above must not include)
    spent: dict[str, list[float]] = {}  # each piece's thread CPU time per file, a list entry per run
    for i in range(max(3, rounds // 2)):
        with pieces(spent, files):
            report = fastdcm.convert([str(corpus)], str(work / f"pieces-{fmt}-{i}"), workers=0, format=fmt,
                                     quiet=True, **variants["both"])
        assert report.ok and report.converted == files, report.summary()
    least = floor(work, files, fmt, us["plain"], work / f"serial-{fmt}-metadata-0" / "metadata.parquet")
    pairs = {k: [p / v for p, v in zip(times["plain"], times[k])] for k in variants if k != "plain"}
    return {
        "format": fmt, "files": files, "workers": workers, "rounds": rounds,
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
        "files_per_s": {k: round(files / v, 1) for k, v in med.items()},
        "ratio_over_plain": {k: round(med["plain"] / med[k], 3) for k in variants if k != "plain"},
        # CPU time of the run and its workers: less swayed than wall time by the VM's neighbours
        "cpu_ratio_over_plain": {k: round(med_cpu["plain"] / med_cpu[k], 3) for k in variants if k != "plain"},
        # each round's own ratio (its plain run over its variant's, run next to each other): the VM's
        # speed drifts within a run (plain 0.94 -> 1.34 s from one round to the next once), which the
        # medians above mix; the median of these pairs does not, and their spread shows the noise
        "paired_ratios": {k: [round(x, 3) for x in v] for k, v in pairs.items()},
        "paired_ratio_over_plain": {k: round(statistics.median(v), 3) for k, v in pairs.items()},
        "serial_cpu_us_per_file": {k: [round(x, 1) for x in v] for k, v in serial.items()},
        "serial_added_us": {k: round(us[k] - us["plain"], 1) for k in variants if k != "plain"},
        "serial_ratio_over_plain": {k: round(us["plain"] / us[k], 3) for k in variants if k != "plain"},
        # where "both" went in one process: each piece's thread CPU time per file (medians over the runs)
        "serial_both_pieces_us": {k: round(statistics.median(v), 1) for k, v in spent.items()},
        "floor": least,
    }


#: What a run with the table and the gallery does per input for them, as (label, module, owner, name)
#: (a plain run reads the name guard's header values and makes a manifest record too, smaller):
#: ``pieces`` times each call of ``owner.name`` (module attributes are looked up when a run starts).
PIECES = (
    ("header values (the table's, the gallery's, the name guard's)", "fastdcm.run.pipeline", "_Attributes", "read"),
    ("each selection's copy of them", "fastdcm.run.pipeline", "_Attributes", "of"),
    ("thumbnail", "fastdcm.run.pipeline", None, "thumbnail"),
    ("tile placed on the sheet", "fastdcm.run.thumbs", "Sheet", "add"),
    ("sheet coded and written", "fastdcm.run.pipeline", "Pipeline", "_write_sheet"),
    ("manifest record (all of it: a plain run makes one too)", "fastdcm.run.sinks.manifest", "Record", "data_of"),
    ("gallery entry kept", "fastdcm.gallery", None, "entry_of"),
    ("table row", "fastdcm.run.sinks.table", "MetadataSink", "accept"),
    ("table rows to Arrow", "fastdcm.run.sinks.table", "MetadataSink", "flush"),
    ("table's end (settle, Parquet)", "fastdcm.run.sinks.table", "MetadataSink", "close"),
    ("gallery page", "fastdcm.gallery", None, "build_gallery"),
)


@contextlib.contextmanager
def pieces(spent: dict[str, list[float]], files: int) -> Iterator[None]:
    """While it is open, each of :data:`PIECES` is timed (thread CPU time, so the
    table's end in its own thread counts too) and its time per file appended to ``spent[label]``.
    In one process only (``workers=0``): a forked worker's time stays in the worker. A timed call
    costs about 1.3 us more here (the wrapper and two clock reads), 0.66 us of it within the time it
    counts (a timed call of a function that does nothing), so each piece reads that much high a call
    (the selections' copies, three calls an input, about 2 us)."""
    import importlib

    totals = dict.fromkeys((label for label, *_ in PIECES), 0.0)
    saved = []

    def timed(label, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] += time.thread_time() - t0
        return call

    for label, module, owner, name in PIECES:
        target = importlib.import_module(module)
        if owner is not None:
            target = getattr(target, owner)
        fn = target.__dict__[name]  # (a staticmethod stays one)
        saved.append((target, name, fn))
        wrapped = staticmethod(timed(label, fn.__func__)) if isinstance(fn, staticmethod) else timed(label, fn)
        setattr(target, name, wrapped)
    try:
        yield
    finally:
        for target, name, fn in saved:
            setattr(target, name, fn)
        for label, total in totals.items():
            spent.setdefault(label, []).append(total / files * 1e6)


@contextlib.contextmanager
def images_free(on: bool = True) -> Iterator[None]:
    """While it is open (and ``on``), a run's gallery costs nothing but its bookkeeping: each
    thumbnail is a constant tile of the size the kernel would make (no pass over the image: what a
    thumbnail folded into the render kernel could at best cost) and each sheet is coded as an
    uncompressed 8-bit BMP through Pillow (no JPEG coding: about 60 against 165 us a sheet of 16
    here, the cheapest picture a browser shows), its file still written. The pool's workers are forked
    from this process, so they run with the same stand-ins. What "both" costs then is the least the
    table and the gallery together can cost without a lighter gallery (fewer, smaller or no
    thumbnails): the header values, the results' transport, the manifest's records, the table's rows
    and the page."""
    if not on:
        yield
        return
    import io

    import numpy as np
    from PIL import Image

    from fastdcm.run import pipeline, thumbs

    tiles: dict = {}
    real = pipeline.thumbnail

    def thumbnail(array):
        tile = tiles.get(array.shape)
        if tile is None:  # (the real one's size, made once a shape)
            tile = tiles[array.shape] = np.zeros_like(real(array))
        return tile

    def encode(sheet):
        mosaic = sheet.mosaic()
        out = io.BytesIO()
        Image.fromarray(mosaic[:, :, 0] if mosaic.shape[2] == 1 else mosaic).save(out, "BMP")
        return out.getvalue()

    saved = thumbs.Sheet.encode
    pipeline.thumbnail, thumbs.Sheet.encode = thumbnail, encode
    try:
        yield
    finally:
        pipeline.thumbnail, thumbs.Sheet.encode = real, saved


def floor(work: Path, files: int, fmt: str, plain_us: float, table_path: Path) -> dict:
    """What the table and the gallery cannot cost less than in this design: the compiled work they
    add per input, timed alone in one process over the cost run's corpus, with no Python around
    it but the calls: the header walk of the table's and the gallery's attributes
    (``fastheader.find_changed``, the values' bytes compared with the last file's), the thumbnail
    kernel (``box_shrink``, scratch made once) on each image just rendered, each 16 thumbnails' sheet
    coded as JPEG (``simplejpeg``, the mosaic made once) and written through the output root, and
    the table's rows as Arrow columns (``pa.array`` per column) coded as Parquet (zstd), its values
    read back from the table at ``table_path`` (a ``metadata`` run's). ``ratio`` is ``plain_us`` (the
    plain run's CPU per file in one process) over itself plus this floor: the best "both" could do here.
    The thumbnail's scale and scratch and the tiles' places are made here as ``thumbs.thumbnail`` and
    ``thumbs.Sheet`` make them, not by calling them: their Python is what this leaves out."""
    import glob

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import simplejpeg

    import fastdcm
    from fastdcm import fastheader, kernels
    from fastdcm.gallery import GALLERY_TAGS
    from fastdcm.options import RenderOptions
    from fastdcm.render import open_image
    from fastdcm.run.tags import DEFAULT_TAGS, _selection, parse_tags
    from fastdcm.run.thumbs import COLUMNS, QUALITY, TILE
    from fastdcm.run.write import OutputRoot

    paths = sorted(glob.glob(str(work / "ct" / "**" / "*.dcm"), recursive=True))[:files]
    specs = parse_tags(list(dict.fromkeys(DEFAULT_TAGS + GALLERY_TAGS)))
    selection = _selection(specs)
    box = kernels.impl().box_shrink
    out_root = work / f"floor-{fmt}"
    out_root.mkdir()
    root = OutputRoot(str(out_root))
    scratch: dict = {}  # per image shape: k, the kernel's scratch and the tile (made once)
    mosaic = None  # 16 tiles in two rows of COLUMNS, each in whole 8-pixel blocks (as thumbs.Sheet places them)
    render = RenderOptions()
    spent = {"header_walk": 0.0, "thumbnail": 0.0, "sheet_jpeg": 0.0, "sheet_write": 0.0}
    for rnd in range(2):  # the first pass loads the kernels and the codec; the second is timed
        for key in spent:
            spent[key] = 0.0
        last = selection.last()
        for i, path in enumerate(paths):
            image = open_image(path)
            array = image.render_frame(0, render).array
            t0 = time.perf_counter()
            fastheader.find_changed(image.header_bytes, selection.tags, image.file_size, last.bytes, last.seen,
                                    last.changed)
            spent["header_walk"] += time.perf_counter() - t0
            rows, cols = array.shape[:2]
            made = scratch.get(array.shape)
            if made is None:
                k = -(-max(rows, cols) // TILE)
                made = scratch[array.shape] = (k, np.empty(cols, np.uint16), np.empty(-(-cols // k), np.int64),
                                               np.empty((-(-rows // k), -(-cols // k), 1), np.uint8))
            k, acc, sums, tile = made
            t1 = time.perf_counter()
            box(array.reshape(rows, cols, 1), k, 0, acc, sums, tile)
            spent["thumbnail"] += time.perf_counter() - t1
            height, width = -(-tile.shape[0] // 8) * 8, -(-tile.shape[1] // 8) * 8
            if mosaic is None:
                mosaic = np.zeros((2 * height, COLUMNS * width, 1), np.uint8)
            j = i % 16
            y, x = j // COLUMNS * height, j % COLUMNS * width
            t0 = time.perf_counter()
            mosaic[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
            spent["sheet_jpeg"] += time.perf_counter() - t0
            if j == 15 or i == len(paths) - 1:  # a sheet every 16 thumbnails, and the last one
                t0 = time.perf_counter()
                data = simplejpeg.encode_jpeg(mosaic, quality=QUALITY, colorspace="GRAY")
                t1 = time.perf_counter()
                root.write(f"s{rnd}-{i}.jpg", data, replace=False)
                spent["sheet_write"] += time.perf_counter() - t1
                t2 = time.perf_counter()
                mosaic[:] = 0  # (a Sheet's mosaic starts as zeros; a last, partial sheet holds no earlier tile)
                spent["sheet_jpeg"] += time.perf_counter() - t2 + t1 - t0
    root.close()
    shutil.rmtree(out_root)
    table = fastdcm.read_metadata(table_path)
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    arrow = []
    for _ in range(5):
        t0 = time.perf_counter()
        arrays = [pa.array(columns[f.name], type=f.type) for f in table.schema]
        pq.write_table(pa.Table.from_arrays(arrays, schema=table.schema), pa.BufferOutputStream(), compression="zstd")
        arrow.append(time.perf_counter() - t0)
    per_file = {k: v / len(paths) * 1e6 for k, v in spent.items()}
    per_file["arrow_parquet"] = statistics.median(arrow) / len(paths) * 1e6
    total = sum(per_file.values())
    return {"files": len(paths), "us_per_file": {k: round(v, 1) for k, v in per_file.items()},
            "total_us": round(total, 1), "plain_us": round(plain_us, 1),
            "ratio": round(plain_us / (plain_us + total), 3)}


def _cpu() -> float:
    import resource

    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


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


_GALLERY_MEMORY = r"""
import sys
from fastdcm.gallery import build_gallery
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from the resident size now, after the imports (Linux)
base = status("VmRSS:")
build_gallery(sys.argv[1])
print(base, status("VmHWM:"))
"""


def gallery_scale(work: Path, images: int) -> dict:
    """The gallery of a run of ``images`` CT slices (10 studies, 100-image series), from a manifest
    made here (one record per image, as ``convert --gallery`` writes them, all on one real sheet):
    build time, the sizes the browser loads first (the page, the summary, one page of data), and
    the time headless chromium takes to open it and show page 1 (if chromium is installed)."""
    import shutil as sh

    from fastdcm.gallery import PER_PAGE, build_gallery
    from fastdcm.run.sinks.manifest import Record
    from fastdcm.run.thumbs import Sheet, thumbnail

    import numpy as np

    out = work / f"gallery-{images}"
    (out / "gallery" / "sheets").mkdir(parents=True)
    sheet = Sheet()
    rng = np.random.default_rng(0)
    boxes = sheet.add([thumbnail(rng.integers(0, 255, (512, 512), dtype=np.uint8)) for _ in range(16)])
    (out / "gallery" / "sheets" / "bench.jpg").write_bytes(sheet.encode())
    with open(out / "manifest.jsonl", "w") as f:
        for i in range(images):
            study, series = i % 10, i // 100
            gallery = {"StudyInstanceUID": f"1.2.3.{study}", "SeriesInstanceUID": f"1.2.3.{study}.{series}",
                       "Modality": "CT", "SeriesNumber": series, "InstanceNumber": i % 100 + 1,
                       "sheet": "gallery/sheets/bench.jpg", "thumbs": [boxes[i % 16]], "windows": [[40.0, 400.0]]}
            rel = f"study_{study}/series_{series}/IM{i % 100:04d}"
            record = Record(source=f"/data/{rel}.dcm", status="converted", outputs=[f"{rel}.png"], frames=1,
                            voi="window", gallery=gallery)
            f.write(record.to_json() + "\n")
    # the build's memory, in a process of its own: its peak over its resident size before the build
    proc = subprocess.run([sys.executable, "-c", _GALLERY_MEMORY, str(out)], capture_output=True, text=True, check=True)
    base, peak = (int(v) for v in proc.stdout.split())
    t0 = time.perf_counter()
    report = build_gallery(out)
    built = time.perf_counter() - t0
    data = out / "gallery" / "data"
    result = {
        "images": images, "pages": report.pages, "per_page": PER_PAGE, "build_s": round(built, 2),
        "build_peak_rss_mib": round(peak / 2**20, 1),
        "build_bytes_per_image": round((peak - base) / images),
        "index_html_bytes": (out / "gallery" / "index.html").stat().st_size,
        "summary_js_bytes": (data / "summary.js").stat().st_size,
        "page_js_bytes": (data / "p-1.js").stat().st_size,
    }
    chromium = sh.which("chromium") or sh.which("chromium-browser")
    if chromium:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={work / 'chromium'}", "--virtual-time-budget=10000", "--dump-dom"]
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            dom = subprocess.run([chromium, *flags, (out / "gallery" / "index.html").as_uri()],
                                 capture_output=True, text=True, timeout=300).stdout
            times.append(time.perf_counter() - t0)
            assert f'data-shown="{min(PER_PAGE, images)}"' in dom, dom[:500]
        result["chromium_open_s"] = round(statistics.median(times), 2)
    sh.rmtree(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="CT files of the cost run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png"], choices=["jpeg", "png"],
                        help="the cost section's output formats")
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--gallery-images", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--json", default=str(HERE / "results" / "dataset.json"))
    args = parser.parse_args(argv)
    with work_dir("dataset-") as tmp:
        work = Path(tmp)
        costs = {fmt: cost(work, args.files, args.rounds, args.workers, fmt) for fmt in args.formats}
        result = {
            "cost": costs.get("jpeg"),
            "cost_png": costs.get("png"),
            "memory": memory(work, args.rows),
            "gallery": [gallery_scale(work, n) for n in args.gallery_images],
            "machine": machine(),
            "date": today(),
        }
    m = result["memory"]
    for c in costs.values():
        print(f"ct {c['format'].upper()}, {c['files']} files, {c['workers']} workers, median of {c['rounds']} rounds: "
              f"plain {c['files_per_s']['plain']} files/s")
        for name, ratio in c["ratio_over_plain"].items():
            pairs = c["paired_ratios"][name]
            goal = "a bound: the thumbnails and sheets' coding free" if name.endswith("_images_free") else "goal >= 0.90"
            print(f"  with {name}: {c['files_per_s'][name]} files/s, {ratio:.2f} of plain ({goal}); "
                  f"CPU time {c['cpu_ratio_over_plain'][name]:.2f} of plain; round by round "
                  f"{c['paired_ratio_over_plain'][name]:.2f} ({min(pairs):.2f}-{max(pairs):.2f})")
        print(f"  one process, CPU per file (median of {len(c['serial_cpu_us_per_file']['plain'])}): "
              f"plain {statistics.median(c['serial_cpu_us_per_file']['plain']):.0f} us")
        for name, added in c["serial_added_us"].items():
            print(f"    with {name}: +{added:.0f} us, {c['serial_ratio_over_plain'][name]:.2f} of plain")
        print("    where both went, piece by piece (thread CPU per file): " + ", ".join(
            f"{k} {v:.1f}" for k, v in c["serial_both_pieces_us"].items()))
        f = c["floor"]
        print(f"    the compiled work both add, alone (the floor): {f['total_us']:.0f} us "
              f"({', '.join(f'{k} {v:.1f}' for k, v in f['us_per_file'].items())}), {f['ratio']:.2f} of plain at best")
    for n, run in m["runs"].items():
        print(f"{run['rows']} rows: peak RSS {run['peak_rss_mib_with']} MiB with the table, "
              f"{run['peak_rss_mib_without']} MiB without (the table's share: {run['table_mib']} MiB)")
    print(f"largest / smallest peak: {m['ratio_largest_over_smallest']:.2f} (goal <= 1.10)")
    for g in result["gallery"]:
        print(f"gallery of {g['images']} images: built in {g['build_s']} s; index.html {g['index_html_bytes']} B, "
              f"summary.js {g['summary_js_bytes']} B, a page {g['page_js_bytes']} B; "
              f"chromium shows page 1 in {g.get('chromium_open_s', 'n/a')} s; the build's peak memory "
              f"{g['build_peak_rss_mib']} MiB ({g['build_bytes_per_image']} B an image)")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
