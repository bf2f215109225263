"""One image in a fresh process: ``fastdcm render`` against the plain recipe and dcmtk.

    python benchmarks/startup.py                    # table + benchmarks/results/startup.json
    python benchmarks/startup.py --rounds 15 --file path/to/one.dcm

What a user waits for when converting one file from a shell, start-up included, each command
in a new process, interleaved round by round (so all see the same machine state); the median
of ``--rounds`` runs each:

``fastdcm``   ``fastdcm render FILE -o OUT.png`` (the installed command; warm Numba cache,
              though one-image commands use the numpy twins and never load Numba);
``recipe``    a one-file script of the plain recipe, python + pydicom + numpy + Pillow: read,
              rescale, window as the file says, save the PNG (this file's ``RECIPE``);
``dcmj2pnm``  dcmtk's ``dcmj2pnm --write-png --min-max-window`` (when installed).

The ratio is fastdcm's time over the recipe's (the issue's goal: at most 1.25).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import machine, today, write_result  # noqa: E402

RECIPE = r'''
import sys
import numpy as np
import pydicom
from PIL import Image

ds = pydicom.dcmread(sys.argv[1])
x = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
if c is not None and w is not None:
    c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
    w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
    lo, hi = c - w / 2, c + w / 2
else:
    lo, hi = float(x.min()), float(x.max())
y = np.clip((x - lo) / max(hi - lo, 1e-9), 0, 1) * 255
Image.fromarray(np.rint(y).astype(np.uint8)).save(sys.argv[2])
'''


def default_file() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def commands(path: str, out: str) -> dict[str, list[str]]:
    fastdcm = shutil.which("fastdcm", path=os.path.dirname(sys.executable)) or shutil.which("fastdcm")
    cmds = {
        "fastdcm": [fastdcm, "render", path, "-o", os.path.join(out, "fastdcm.png")] if fastdcm
        else [sys.executable, "-m", "fastdcm", "render", path, "-o", os.path.join(out, "fastdcm.png")],
        "recipe": [sys.executable, os.path.join(out, "recipe.py"), path, os.path.join(out, "recipe.png")],
    }
    if shutil.which("dcmj2pnm"):
        cmds["dcmj2pnm"] = ["dcmj2pnm", "--write-png", "--min-max-window", path, os.path.join(out, "dcmtk.png")]
    return cmds


def compile_package() -> None:
    """Byte-compile fastdcm as ``pip install`` does for an installed package (an editable
    install, or PYTHONDONTWRITEBYTECODE=1, would otherwise compile every module at every start:
    about 60 ms here, a cost the installed command does not have)."""
    import compileall

    import fastdcm

    compileall.compile_dir(os.path.dirname(fastdcm.__file__), quiet=1)


def measure(path: str, rounds: int) -> dict:
    compile_package()
    with tempfile.TemporaryDirectory() as out:
        with open(os.path.join(out, "recipe.py"), "w") as f:
            f.write(RECIPE)
        cmds = commands(path, out)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for name, cmd in cmds.items():  # once untimed: the Numba cache and the page cache are warm
            subprocess.run(cmd, check=True, capture_output=True)
        for _ in range(rounds):
            for name, cmd in cmds.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
        for name in cmds:  # every command made its picture
            png = {"fastdcm": "fastdcm.png", "recipe": "recipe.png", "dcmj2pnm": "dcmtk.png"}[name]
            assert os.path.getsize(os.path.join(out, png)) > 0, name
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "file": path,
        "rounds": rounds,
        "median_s": {k: round(v, 4) for k, v in medians.items()},
        "ratio_fastdcm_over_recipe": round(medians["fastdcm"] / medians["recipe"], 3),
        "machine": machine(),
        "date": today(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=None, help="the DICOM file (default: pydicom's CT_small.dcm)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results", "startup.json"))
    args = parser.parse_args(argv)
    result = measure(args.file or default_file(), args.rounds)
    for name, t in result["median_s"].items():
        print(f"{name:<9} {t * 1000:7.0f} ms")
    print(f"fastdcm / recipe = {result['ratio_fastdcm_over_recipe']:.2f} (goal: at most 1.25)")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
