"""Shared test fixtures."""

from __future__ import annotations

import pytest

from fastdcm.decoders import _candidates


@pytest.fixture(autouse=True)
def _fresh_decoder_choice():
    """The backend order per transfer syntax is cached per process (installed packages do not
    change); tests that patch the backend table start and end with an empty cache."""
    _candidates.cache_clear()
    yield
    _candidates.cache_clear()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (``item.rep_call``), for fixtures that add what a
    failed test leaves behind (the Dask workers' logs)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
