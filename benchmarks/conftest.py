"""Shared benchmark fixtures and the ratio report.

Every benchmark group holds fastdcm and the peers it is compared with, timed in the same
run. At the end of a run with timings on, the table of ratios (peer median / fastdcm median)
is printed next to the target from TARGETS; ``--enforce-targets`` makes a missed target
fail the session. ``gate.py`` (the gate) compares medians against the committed baseline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

#: group -> (fastdcm's benchmark, the peer, what peer/fastdcm must at least be, what it measures)
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "kernel-ct": ("test_kernel_ct[fastdcm]", "test_kernel_ct[pydicom]", 20.0, "fused kernel vs pydicom LUT functions, 512x512 int16"),
    "kernel-mammo": ("test_kernel_mammo[fastdcm]", "test_kernel_mammo[numpy-copy]", 1 / 1.5, "fused kernel within 1.5x of one numpy copy, 4096x3328 uint16"),
    "render-ct": ("test_render_ct[fastdcm]", "test_render_ct[recipe]", 4.0, "render(path) at most 0.25x the pydicom recipe"),
    "kernel-int16-12bit-512": ("test_kernel[int16-12bit-512-fastdcm]", "test_kernel[int16-12bit-512-pydicom]", 5.0, "plan + fused kernel vs pydicom LUT functions, 512x512 12-bit"),
    "kernel-uint16-16bit-4096x3328": ("test_kernel[uint16-16bit-4096x3328-kernel]", "test_kernel[uint16-16bit-4096x3328-numpy]", 2.0, "fused kernel vs its numpy twin, 4096x3328 16-bit"),
    "kernel-float32-2048": ("test_kernel[float32-2048-kernel]", "test_kernel[float32-2048-numpy]", 2.0, "float path kernel vs its numpy twin, 2048x2048"),
    "header-ct": ("test_header[ct-fastdcm]", "test_header[ct-dcmread-stop]", 2.0, "open_image vs dcmread(stop_before_pixels), CT slice"),
    "resize-encode-ct": ("test_resize_encode_ct[fastdcm]", "test_resize_encode_ct[opencv]", 1.0, "--size 256 + PNG vs cv2.resize INTER_AREA + cv2.imencode, 512x512"),
    # a stack writes 3x the bytes and computes 3 lines a pixel: 1.5x is the goal, not met (training.py, README)
    "window-stack-ct": ("test_window_stack_ct[three]", "test_window_stack_ct[one]", 1 / 1.5, "3 windows within 1.5x of one, render_frame 512x512"),
    "decode-jpeg-ls": ("test_decode[jpeg-ls-fastdcm]", "test_decode[jpeg-ls-pydicom]", 1.0, "stored_frame vs pixel_array, JPEG-LS 1024x1024"),
}


def pytest_addoption(parser):
    parser.addoption("--enforce-targets", action="store_true", help="fail when a ratio target in TARGETS is missed")


@pytest.fixture(scope="session", autouse=True)
def _warm_numba():
    from fastdcm import kernels

    kernels.warmup(full=True)


def _medians(config) -> dict[str, dict[str, float]]:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled:
        return {}
    out: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        if bench.stats is not None and getattr(bench.stats, "median", None):
            out.setdefault(bench.group or "", {})[bench.name] = bench.stats.median
    return out


def ratio_rows(config):
    medians = _medians(config)
    rows = []
    for group, (ours, peer, target, what) in TARGETS.items():
        times = medians.get(group, {})
        if ours in times and peer in times:
            ratio = times[peer] / times[ours]
            rows.append((group, what, ratio, target, ratio >= target))
    return rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = ratio_rows(config)
    if not rows:
        return
    tr = terminalreporter
    tr.section("fastdcm ratios (peer median / fastdcm median, one run)")
    tr.write_line(f"machine: {os.cpu_count()} cores, {sys.platform}, python {sys.version.split()[0]}")
    for group, what, ratio, target, ok in rows:
        tr.write_line(f"{group:14s} {ratio:8.2f}x  target >= {target:.2f}x  {'ok' if ok else 'MISSED'}   {what}")


def pytest_sessionfinish(session, exitstatus):
    if session.config.getoption("--enforce-targets") and any(not ok for *_, ok in ratio_rows(session.config)):
        session.exitstatus = 1
