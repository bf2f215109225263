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
