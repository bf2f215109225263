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


FAILED_TEST_LOGS = pytest.StashKey[list]()  # (title, text) of logs a failed test left (test_cluster's Dask logs)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Logs that failed tests asked to show, last in the output: a CI log cut to its tail keeps them."""
    for title, text in config.stash.get(FAILED_TEST_LOGS, []):
        terminalreporter.section(f"log of a failed test: {title}", sep="-")
        terminalreporter.write_line(text)
