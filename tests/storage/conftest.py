"""Fixtures of the storage tests."""

from __future__ import annotations

import pytest

from graft import storage


@pytest.fixture()
def budget():
    """Set this process's retry budget for a test, and put the default back after it."""
    yield storage.configure
    storage.configure(storage.DEFAULT_RETRY_SECONDS)
