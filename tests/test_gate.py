"""The benchmark gate's compare logic on synthetic pytest-benchmark JSON (benchmarks/gate.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("fastdcm_gate", Path(__file__).parents[1] / "benchmarks" / "gate.py")
gate_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gate_mod  # dataclasses look their module up
_spec.loader.exec_module(gate_mod)

REF = "benchmarks/bench_kernels.py::test_reference_numpy"
A = "benchmarks/bench_kernels.py::test_kernel[uint8-512-fastdcm]"
B = "benchmarks/bench_decode.py::test_decode[rle-fastdcm]"


def doc(medians: dict[str, float]) -> dict:
    """A pytest-benchmark JSON document with these medians (seconds)."""
    benches = []
    for fullname, median in medians.items():
        name = fullname.split("::")[-1]
        impl = name.split("-")[-1].rstrip("]") if "[" in name else None
        benches.append({"fullname": fullname, "name": name, "group": "g",
                        "params": {"impl": impl} if impl else None,
                        "stats": {"median": median, "min": median, "mean": median}})
    return {"benchmarks": benches, "machine_info": {}, "version": "5.0"}


BASELINE = doc({REF: 1e-3, A: 1e-4, B: 5e-4})


class FakeRunner:
    """Hands out prepared runs in order, recording which benchmarks each call asked for."""

    def __init__(self, *runs: dict[str, float]):
        self.runs = list(runs)
        self.calls: list[list[str]] = []

    def __call__(self, names: list[str]) -> dict:
        self.calls.append(list(names))
        medians = self.runs.pop(0)
        return doc({n: m for n, m in medians.items() if n in names})


def test_ten_percent_slower_passes_without_rerun():
    run = FakeRunner({REF: 1e-3, A: 1.10e-4, B: 5.5e-4})
    out = gate_mod.gate(BASELINE, run)
    assert out.ok and out.runs == 1 and len(run.calls) == 1
    assert out.ratios[A] == pytest.approx(1.10) and out.ratios[B] == pytest.approx(1.10)
    assert "gate passed" in out.report()


def test_thirty_percent_regression_that_persists_fails_after_reruns():
    run = FakeRunner({REF: 1e-3, A: 1.30e-4, B: 5e-4}, {REF: 1e-3, A: 1.28e-4}, {REF: 1e-3, A: 1.32e-4})
    out = gate_mod.gate(BASELINE, run, threshold=0.15, reruns=2)
    assert not out.ok and out.runs == 3
    assert list(out.regressions) == [A]
    assert out.regressions[A] == pytest.approx([1.30, 1.28, 1.32])
    # reruns time only the regressed benchmark, with the reference to normalise by
    assert sorted(run.calls[1]) == sorted([A, REF]) and sorted(run.calls[2]) == sorted([A, REF])
    text = out.report(0.15)
    assert "REGRESSION" in text and "test_kernel[uint8-512-fastdcm]" in text and "+28.0 %" in text


def test_noisy_regression_that_passes_on_rerun_passes():
    run = FakeRunner({REF: 1e-3, A: 1.40e-4, B: 5e-4}, {REF: 1e-3, A: 1.02e-4})
    out = gate_mod.gate(BASELINE, run, reruns=2)
    assert out.ok and out.runs == 2 and not out.regressions
    assert len(run.calls) == 2  # no second rerun once it passed


def test_regression_on_first_and_last_run_only_passes():
    run = FakeRunner({REF: 1e-3, A: 1.40e-4, B: 5e-4}, {REF: 1e-3, A: 1.05e-4}, {REF: 1e-3, A: 1.4e-4})
    assert gate_mod.gate(BASELINE, run, reruns=2).ok


def test_medians_are_normalised_by_the_reference():
    # another machine, twice as slow across the board: no regression
    run = FakeRunner({REF: 2e-3, A: 2e-4, B: 1e-3})
    assert gate_mod.gate(BASELINE, run).ok
    # the same absolute medians while the reference got faster: a 2x regression of A and B
    run = FakeRunner({REF: 0.5e-3, A: 1e-4, B: 5e-4}, {REF: 0.5e-3, A: 1e-4, B: 5e-4},
                     {REF: 0.5e-3, A: 1e-4, B: 5e-4})
    out = gate_mod.gate(BASELINE, run)
    assert not out.ok and out.regressions[A] == pytest.approx([2.0, 2.0, 2.0])
    assert set(out.regressions) == {A, B}


def test_exactly_at_the_threshold_passes_and_just_above_fails():
    assert gate_mod.gate(BASELINE, FakeRunner({REF: 1e-3, A: 1.15e-4 * (1 - 1e-9), B: 5e-4})).ok
    run = FakeRunner({REF: 1e-3, A: 1.16e-4, B: 5e-4}, {REF: 1e-3, A: 1.16e-4}, {REF: 1e-3, A: 1.16e-4})
    assert not gate_mod.gate(BASELINE, run).ok


def test_benchmark_missing_from_the_run_fails():
    # pytest ran, but B's output check failed, so it is absent from the JSON
    run = FakeRunner({REF: 1e-3, A: 1e-4})
    out = gate_mod.gate(BASELINE, run)
    assert not out.ok and out.failed == [B]
    assert f"FAILED {B}" in out.report()


def test_no_reference_is_a_setup_error():
    with pytest.raises(gate_mod.GateError):
        gate_mod.gate(doc({A: 1e-4}), FakeRunner({A: 1e-4}))
    with pytest.raises(gate_mod.GateError):
        gate_mod.gate(BASELINE, FakeRunner({A: 1e-4, B: 5e-4}))


def test_is_gated_selects_fastdcm_and_the_reference():
    assert gate_mod.is_gated({"name": "test_kernel[uint8-512-kernel]", "params": {"impl": "kernel"}})
    assert gate_mod.is_gated({"name": "test_reference_numpy", "params": None})
    assert gate_mod.is_gated({"name": "test_png_small", "params": None})
    assert not gate_mod.is_gated({"name": "test_kernel[uint8-512-pydicom]", "params": {"impl": "pydicom"}})
    assert not gate_mod.is_gated({"name": "test_pillow_png_level6_reference", "params": None})


def test_committed_baseline_is_readable_and_gated():
    path = Path(gate_mod.BASELINE)
    if not path.exists():
        pytest.skip("no committed baseline yet")
    data = json.loads(path.read_text())
    assert all(gate_mod.is_gated(b) for b in data["benchmarks"])
    assert gate_mod.normalised_medians(data)[REF] == 1.0


def test_large_frames_are_normalised_by_the_memory_yardstick():
    """A busy neighbour slows memory far more than compute: big-frame kernels follow the copy."""
    mem = "benchmarks/bench_kernels.py::test_reference_copy"
    big = "benchmarks/bench_kernels.py::test_kernel[uint16-16bit-4096x3328-fastdcm]"
    assert gate_mod.memory_bound(big) and not gate_mod.memory_bound(A) and not gate_mod.memory_bound(B)
    baseline = doc({REF: 1e-3, mem: 2e-3, big: 2e-3, A: 1e-4})
    # memory 2.2x slower, compute 1.5x: the big kernel 2.2x slower is no regression, A 1.5x is none
    run = FakeRunner({REF: 1.5e-3, mem: 4.4e-3, big: 4.4e-3, A: 1.5e-4})
    out = gate_mod.gate(baseline, run)
    assert out.ok and out.ratios[big] == pytest.approx(1.0)
    # the big kernel 50 % slower than the copy in every run (its limit: 35 %): a regression,
    # rerun with both yardsticks
    slow = {REF: 1e-3, mem: 2e-3, big: 3e-3, A: 1e-4}
    run = FakeRunner(slow, slow, slow)
    out = gate_mod.gate(baseline, run)
    assert not out.ok and set(out.regressions) == {big}
    assert all(mem in call and REF in call for call in run.calls)
    assert gate_mod.is_gated({"name": "test_reference_copy", "params": None})
    assert gate_mod.limit(big, 0.15) == gate_mod.MEMORY_THRESHOLD and gate_mod.limit(A, 0.15) == 0.15
    # a baseline from before the memory yardstick: everything by the compute one, as before
    old = doc({REF: 1e-3, big: 2e-3, A: 1e-4})
    _, ratios = gate_mod.compare(old, doc({REF: 1e-3, mem: 9e-3, big: 2e-3, A: 1e-4}))
    assert ratios[big] == pytest.approx(1.0)


def test_a_persisting_regression_is_confirmed_against_the_baselines_code():
    slow = {REF: 1e-3, A: 1.5e-4, B: 5e-4}
    asked = []

    def same_as_baseline_code(names):  # the machine, not the code: as slow with the old code
        asked.append(names)
        return {n: 1.02 for n in names}

    out = gate_mod.gate(BASELINE, FakeRunner(slow, slow, slow), confirm=same_as_baseline_code)
    assert out.ok and asked == [[A]]
    out = gate_mod.gate(BASELINE, FakeRunner(slow, slow, slow), confirm=lambda names: {n: 1.4 for n in names})
    assert not out.ok and out.regressions[A][-1] == pytest.approx(1.4)
    out = gate_mod.gate(BASELINE, FakeRunner(slow, slow, slow), confirm=lambda names: None)  # no git history
    assert not out.ok and set(out.regressions) == {A}
