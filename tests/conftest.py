"""Shared pytest setup: makes tests/ importable and registers the test bed fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ has no __init__.py, so put it on sys.path explicitly: `testbed` then imports the same
# way here, in test modules and in `python -m testbed.cluster` (PYTHONPATH=tests).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# Imported by name (not via pytest_plugins) so this works whichever conftest pytest loads first.
from testbed.fixtures import (  # noqa: E402,F401
    azurite,
    gcs,
    helm,
    kube,
    namespace,
    prometheus,
    pushgateway,
    s3,
)

_TEST_BED_FIXTURES = frozenset({"kube", "namespace", "s3", "gcs", "azurite", "prometheus", "pushgateway", "helm"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a test bed server as `cluster`, so `-m "not cluster"` (make
    test-fast) really needs no server, whether or not the test remembered the marker."""
    for item in items:
        if _TEST_BED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
