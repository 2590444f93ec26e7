"""Fixtures for the worker's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _on_one_thread(one_thread: None) -> None:
    """Every worker test runs on one torch thread (see `one_thread` in tests/conftest.py)."""
