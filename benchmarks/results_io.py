"""The result files of the benchmark scripts (``benchmarks/results/*.json``): one way to write them."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any


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
