"""What images for training cost: --size, the OpenCV peer, mammograms, window stacks (issue 11).

    python benchmarks/training.py                   # table + benchmarks/results/training.json
    python benchmarks/training.py --files 1000 --rounds 3

``resize``  the ct workload (``make_corpus.py ct``: nested 512x512 CT slices), ``fastdcm convert``
            run as a user runs it (the command, its start-up counted, 2 workers, outputs written),
            without and with ``--size 256``, alternated round by round into fresh folders, PNG and
            JPEG q90; the median of each, files/s, and the ratio (the issue's goal: ``--size 256``
            at least 1.1x the throughput of no resize).
``peer``    on the same rendered images (the ct workload's first 200 slices, rendered once), one
            process: fastdcm's resize (``resize.apply``, the kernel) + its PNG encoder against
            OpenCV's ``cv2.resize(INTER_AREA)`` + ``cv2.imencode(".png")``, and each stage alone;
            per image, the median of ``--repeat`` passes.
``mammo``   the mammo workload (4096x3328 12-bit JPEG 2000 lossless): ``fastdcm.render(path)``
            (decode + VOI) against ``fastdcm.render(path, size=1024)`` per file, one process,
            alternated; the share the resize adds to the decode (goal: at most 5 %); and the two
            ``fastdcm convert`` runs (``--size 1024``), files/s.
``stacks``  the ct workload: ``fastdcm convert --window 40,80`` against ``--windows
            brain,subdural,bone`` (one RGB image a slice), PNG and JPEG q90 (4:4:4), as in
            ``resize``; the render alone (decode + VOI, in one process, 200 slices) for one window
            and for the stack of 3; the encoders alone on the rendered images; and the kernel alone
            on one slice with its output allocated once (``lut_affine`` against
            ``lut_affine_stack``): the goal, a stack of 3 at most 1.5x one window. And the floor
            the encoder sets: each window of the stack coded alone as a grey image (their sum
            against the stack's encode), and ``floor_three_over_one``: the cost a stack would have
            if nothing but its encode cost more than one window's, from the encode times the runs'
            workers recorded in their manifests against one window's CPU a file.

Work folders are made in ``benchmarks/.cache`` beside the corpora (``results_io.work_dir``), and
outputs stay until the end of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results_io import machine, today, work_dir, write_result  # noqa: E402
FASTDCM = [sys.executable, "-m", "fastdcm"]


def _corpus(work: Path, name: str, files: int) -> Path:
    sys.path.insert(0, str(HERE))
    import make_corpus

    folder = work / name
    make_corpus.build_corpus(name, folder, files)
    return folder


def _convert_runs(corpus: Path, work: Path, variants: dict[str, list[str]], rounds: int, workers: int, files: int) -> dict:
    """``fastdcm convert`` per variant, alternated round by round; seconds and files/s (median), and the
    CPU seconds of the command and its workers (user + system: less swayed than wall time by this
    VM's neighbours, which moved one variant's files/s by 15-20 % between two runs of the script)."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # (the command and, through it, its workers)
        return usage.ru_utime + usage.ru_stime

    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in variants}  # mean a file, per round
    for i in range(-1, rounds):  # round -1: warm the page cache and Numba's disk cache
        for name, flags in variants.items():
            out = Path(tempfile.mkdtemp(prefix=f"out-{name}-{i}-", dir=work))
            c0, t0 = cpu(), time.perf_counter()
            subprocess.run([*FASTDCM, "convert", str(corpus), "-o", str(out), "--workers", str(workers), "--quiet", *flags],
                           check=True, capture_output=True)
            if i >= 0:
                times[name].append(time.perf_counter() - t0)
                cpus[name].append(cpu() - c0)
            records = [json.loads(line) for line in open(out / "manifest.jsonl")]
            assert len(records) == files and all(r["status"] == "converted" for r in records), name
            if i >= 0:  # each stage's time in the run, as the workers' timers saw it
                for stage in ("read", "render", "encode", "write"):
                    stages[name].setdefault(stage, []).append(
                        statistics.fmean(r.get("timings", {}).get(stage, 0.0) for r in records))
            # (outputs stay until the end: deleting thousands of files slows the next run's creations)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "files_per_s": {k: round(files / v, 1) for k, v in med.items()},
            "cpu_seconds": {k: [round(x, 3) for x in v] for k, v in cpus.items()},
            "cpu_ms_per_file": {k: round(statistics.median(v) / files * 1e3, 3) for k, v in cpus.items()},
            "stage_us_per_file": {k: {s: round(statistics.median(v) * 1e6, 1) for s, v in st.items()}
                                  for k, st in stages.items()}}


def resize(work: Path, corpus: Path, files: int, rounds: int, workers: int) -> dict:
    out = {}
    for fmt in ("png", "jpeg"):
        runs = _convert_runs(corpus, work, {"full": ["--format", fmt], "size256": ["--format", fmt, "--size", "256"]},
                             rounds, workers, files)
        fps = runs["files_per_s"]
        runs["ratio"] = round(fps["size256"] / fps["full"], 3)
        cpu = runs["cpu_ms_per_file"]
        runs["cpu_ratio"] = round(cpu["full"] / cpu["size256"], 3)
        out[fmt] = runs
    return out


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peer(corpus: Path, repeat: int) -> dict:
    import cv2
    import numpy as np

    import fastdcm
    from fastdcm.encoders import get_encoder
    from fastdcm.resize import Fit, apply, resize_plan

    paths = sorted(corpus.rglob("*.dcm"))[:200]
    images = [fastdcm.render(p) for p in paths]
    png = get_encoder("png")
    plans = [resize_plan(*img.shape[:2], 256, Fit.PAD, None) for img in images]
    ours_small = [apply(img, plan, 255) for img, plan in zip(images, plans)]
    cv_small = [cv2.resize(img, (plan.scaled[1], plan.scaled[0]), interpolation=cv2.INTER_AREA) for img, plan in zip(images, plans)]
    assert max(int(np.abs(a.astype(int) - b).max()) for a, b in zip(ours_small, cv_small)) <= 1
    n = len(images)
    cases = {
        "fastdcm_resize": lambda: [apply(img, plan, 255) for img, plan in zip(images, plans)],
        "opencv_resize": lambda: [cv2.resize(img, (plan.scaled[1], plan.scaled[0]), interpolation=cv2.INTER_AREA)
                                  for img, plan in zip(images, plans)],
        "fastdcm_encode": lambda: [png.encode(img) for img in ours_small],
        "opencv_encode": lambda: [cv2.imencode(".png", img) for img in cv_small],
        "fastdcm_resize_encode": lambda: [png.encode(apply(img, plan, 255)) for img, plan in zip(images, plans)],
        "opencv_resize_encode": lambda: [cv2.imencode(".png", cv2.resize(img, (plan.scaled[1], plan.scaled[0]),
                                                                      interpolation=cv2.INTER_AREA))
                                         for img, plan in zip(images, plans)],
    }
    for fn in cases.values():
        fn()
    us = {name: round(_best(fn, repeat) / n * 1e6, 1) for name, fn in cases.items()}
    sizes = {"fastdcm_png_bytes": int(np.mean([len(png.encode(i)) for i in ours_small])),
             "opencv_png_bytes": int(np.mean([len(cv2.imencode(".png", i)[1]) for i in cv_small]))}
    return {"images": n, "from": list(images[0].shape), "to": list(ours_small[0].shape), "us_per_image": us,
            "ratio_opencv_over_fastdcm": round(us["opencv_resize_encode"] / us["fastdcm_resize_encode"], 3), **sizes}


def mammo(work: Path, corpus: Path, repeat: int, workers: int) -> dict:
    import fastdcm

    paths = sorted(corpus.rglob("*.dcm"))
    for p in paths:
        fastdcm.render(p, size=1024)
    full, small = [], []
    for _ in range(repeat):
        for p in paths:
            t0 = time.perf_counter()
            fastdcm.render(p)
            t1 = time.perf_counter()
            fastdcm.render(p, size=1024)
            t2 = time.perf_counter()
            full.append(t1 - t0)
            small.append(t2 - t1)
    f, s = statistics.median(full), statistics.median(small)
    runs = _convert_runs(corpus, work, {"full": [], "size1024": ["--size", "1024"]}, repeat, workers, len(paths))
    return {"files": len(paths), "render_ms": round(f * 1e3, 1), "render_size1024_ms": round(s * 1e3, 1),
            "added": round(s / f - 1, 4), "convert": runs}


def stacks(work: Path, corpus: Path, files: int, rounds: int, workers: int, repeat: int) -> dict:
    import fastdcm
    from fastdcm.render import open_image
    from fastdcm.options import RenderOptions

    runs = {}
    for fmt in ("png", "jpeg"):
        run = _convert_runs(corpus, work, {"one": ["--window", "40,80", "--format", fmt],
                                           "three": ["--windows", "brain,subdural,bone", "--format", fmt]},
                            rounds, workers, files)
        run["cost_three_over_one"] = round(run["files_per_s"]["one"] / run["files_per_s"]["three"], 3)
        run["cpu_cost_three_over_one"] = round(run["cpu_ms_per_file"]["three"] / run["cpu_ms_per_file"]["one"], 3)
        runs[fmt] = run
    paths = sorted(corpus.rglob("*.dcm"))[:200]
    images = [open_image(p) for p in paths]
    one, three = RenderOptions(window=(40, 80)), RenderOptions(windows="brain,subdural,bone")
    # the kernels alone, on one slice, outputs allocated once: what one pass over the stored values costs
    import numpy as np

    from fastdcm import kernels
    from fastdcm.decoders import stored_frame
    from fastdcm.plan import build_plan, build_stack
    from fastdcm.render import _as_unsigned

    image = images[0]
    raw = _as_unsigned(stored_frame(image._header, 0))
    plan = build_plan(image._header.attrs, image.spec, 0, one)
    stack = build_stack(image._header.attrs, image.spec, 0, three)
    assert plan.affine is not None and stack.kind == "affine"
    narrow = raw.dtype.type
    out1, out3 = np.empty(raw.shape[0], np.uint8), np.empty((raw.shape[0], 3), np.uint8)
    k1 = lambda: kernels.lut_affine(raw, narrow(plan.mask), narrow(plan.flip), *plan.affine, np.float32(255), out1)  # noqa: E731
    k3 = lambda: kernels.lut_affine_stack(raw, narrow(stack.mask), narrow(stack.flip), *stack.lines, np.float32(255), out3)  # noqa: E731
    k1(), k3()
    kernel_one = _best(lambda: [k1() for _ in range(100)], repeat) / 100
    kernel_three = _best(lambda: [k3() for _ in range(100)], repeat) / 100
    for img in images:
        img.render_frame(0, one), img.render_frame(0, three)
    def render_all(options: RenderOptions) -> None:
        for img in images:  # each output dropped as convert drops it: 200 kept would cost page faults
            img.render_frame(0, options)  # (kept: 186 vs 448 us a slice, against 46 vs 104 us)

    t_one = _best(lambda: render_all(one), repeat) / len(images)
    t_three = _best(lambda: render_all(three), repeat) / len(images)
    assert fastdcm.render(paths[0], windows="brain,subdural,bone").shape[2] == 3
    # the encoders alone on the rendered images: the floor a stack's convert run stands on
    from fastdcm.encoders import get_encoder, stack_options

    rendered = {"one": [img.render_frame(0, one).array for img in images],
                "three": [img.render_frame(0, three).array for img in images]}
    encode_us = {}
    for fmt in runs:
        enc = get_encoder(fmt)
        # as convert encodes a stack (a JPEG's channels not subsampled: each is a window)
        options = {"one": {}, "three": stack_options(enc, 3)}
        encode_us[fmt] = {k: round(_best(lambda: [enc.encode(a, quality=90, **options[k])
                                                  for a in arrays], repeat) / len(arrays) * 1e6, 1)
                          for k, arrays in rendered.items()}
        # each of the stack's windows coded alone as a grey image, summed: what the stack's encode
        # stands against (libjpeg-turbo and ISA-L code a channel about as a grey image of it)
        greys = [[np.ascontiguousarray(a[:, :, c]) for a in rendered["three"]] for c in range(3)]
        per_channel = [_best(lambda: [enc.encode(g, quality=90) for g in arrays], repeat) / len(arrays) * 1e6
                       for arrays in greys]
        encode_us[fmt]["channels_as_grey"] = [round(x, 1) for x in per_channel]
        # The floor: a stack that cost nothing more than one window but its encode, with the encodes
        # as the run's own workers timed them (one window's run: its CPU a file, all of it counted)
        run = runs[fmt]
        stage = run["stage_us_per_file"]
        extra = stage["three"]["encode"] - stage["one"]["encode"]
        run["floor_three_over_one"] = round(1 + extra / (run["cpu_ms_per_file"]["one"] * 1e3), 3)
    return {"convert": runs, "encode_us": encode_us, "render_us_one": round(t_one * 1e6, 1), "render_us_three": round(t_three * 1e6, 1),
            "render_three_over_one": round(t_three / t_one, 3), "kernel_us_one": round(kernel_one * 1e6, 1),
            "kernel_us_three": round(kernel_three * 1e6, 1), "kernel_three_over_one": round(kernel_three / kernel_one, 3)}


SECTIONS = ("resize", "peer", "stacks", "mammo")


def _keep_unmeasured(result: dict, path: str | None, measured: set[str]) -> None:
    """Sections this run did not measure (``--sections``) keep their figures from the results file,
    each with the date and settings of the run that measured it (``kept``), instead of becoming null."""
    if not path or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return
    kept = dict(old.get("kept") or {})
    for name in SECTIONS:
        if name in measured or old.get(name) is None:
            kept.pop(name, None)
            continue
        result[name] = old[name]
        kept.setdefault(name, {k: old.get(k) for k in ("date", "files", "rounds", "workers")})
    if kept:
        result["kept"] = kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="CT files of the convert runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mammo", type=int, default=4, help="mammograms")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="what to measure (default: all; the others keep their figures in --json)")
    parser.add_argument("--json", default=str(HERE / "results" / "training.json"))
    args = parser.parse_args(argv)
    with work_dir("training-") as tmp:
        work = Path(tmp)
        ct = _corpus(work, "ct", args.files)
        want = set(args.sections)
        result = {
            "resize": resize(work, ct, args.files, args.rounds, args.workers) if "resize" in want else None,
            "peer": peer(ct, args.repeat) if "peer" in want else None,
            "stacks": stacks(work, ct, args.files, args.rounds, args.workers, args.repeat) if "stacks" in want else None,
            "mammo": mammo(work, _corpus(work, "mammo", args.mammo), args.repeat, args.workers) if "mammo" in want else None,
            "files": args.files, "workers": args.workers, "rounds": args.rounds,
            "machine": machine(),
            "date": today(),
        }
    for fmt, r in (result["resize"] or {}).items():
        print(f"ct {fmt}, {args.files} files, {args.workers} workers: full size {r['files_per_s']['full']} files/s, "
              f"--size 256 {r['files_per_s']['size256']} files/s: {r['ratio']:.2f}x (goal >= 1.10); CPU "
              f"{r['cpu_ms_per_file']['full']} vs {r['cpu_ms_per_file']['size256']} ms a file: {r['cpu_ratio']:.2f}x")
    p = result["peer"]
    if p:
        u = p["us_per_image"]
        print(f"resize + PNG of {p['images']} rendered slices {p['from']} -> {p['to']}, per image: fastdcm "
          f"{u['fastdcm_resize_encode']} us ({u['fastdcm_resize']} + {u['fastdcm_encode']}), OpenCV "
              f"{u['opencv_resize_encode']} us ({u['opencv_resize']} + {u['opencv_encode']}): OpenCV / fastdcm "
              f"{p['ratio_opencv_over_fastdcm']:.2f}; PNG {p['fastdcm_png_bytes']} vs {p['opencv_png_bytes']} bytes")
    m = result["mammo"]
    if m:
        print(f"mammo ({m['files']} x 4096x3328 JPEG 2000): render {m['render_ms']} ms, with --size 1024 "
              f"{m['render_size1024_ms']} ms: {m['added'] * 100:+.1f} % (goal <= +5 %); convert "
              f"{m['convert']['files_per_s']['full']} vs {m['convert']['files_per_s']['size1024']} files/s")
    s = result["stacks"]
    if s:
        for fmt, run in s["convert"].items():
            print(f"window stack of 3 vs one window, {fmt}: convert {run['files_per_s']['one']} vs "
                  f"{run['files_per_s']['three']} files/s, {run['cost_three_over_one']:.2f}x the cost (goal <= 1.5); CPU "
                  f"{run['cpu_ms_per_file']['one']} vs {run['cpu_ms_per_file']['three']} ms a file: {run['cpu_cost_three_over_one']:.2f}x")
        for fmt, e in s["encode_us"].items():
            grey = e["channels_as_grey"]
            st = s["convert"][fmt]["stage_us_per_file"]
            print(f"  the {fmt} encode alone: {e['one']} vs {e['three']} us an image, {e['three'] / e['one']:.2f}x; "
                  f"the stack's three windows each coded as a grey image: {' + '.join(map(str, grey))} = "
                  f"{sum(grey):.0f} us; in the runs {st['one']['encode']} vs {st['three']['encode']} us a file: "
                  f"a stack costing nothing more but its encode would be {s['convert'][fmt]['floor_three_over_one']:.2f}x")
        print(f"window stack of 3 vs one window: render {s['render_us_one']} vs {s['render_us_three']} us, {s['render_three_over_one']:.2f}x; "
              f"the kernel alone {s['kernel_us_one']} vs {s['kernel_us_three']} us, {s['kernel_three_over_one']:.2f}x (goal <= 1.5)")
    _keep_unmeasured(result, args.json, want)  # (after the printing: only this run's figures are printed)
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
