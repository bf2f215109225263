"""The result files of the benchmark scripts (``benchmarks/results/*.json``): one way to write them."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from typing import Any


def work_dir(prefix: str) -> "tempfile.TemporaryDirectory[str]":
    """A scratch folder for a script's runs in ``benchmarks/.cache`` beside the corpora, as
    bench_convert.py does (file creation in /tmp measured ~0.6 ms on this VM once; the same ct
    report in the two places differed by up to 1.6x here, cause not pinned down): one place for all."""
    from make_corpus import DEFAULT_ROOT

    DEFAULT_ROOT.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=prefix, dir=DEFAULT_ROOT)


def machine() -> dict[str, Any]:
    """What a result was measured on."""
    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}


def today() -> str:
    return time.strftime("%Y-%m-%d")


def write_result(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON to ``path`` (its folder made if needed); None: nothing."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
