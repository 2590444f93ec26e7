"""Shared pytest setup: makes tests/ importable (factories, testbed), registers the test bed fixtures
and the fixtures more than one folder uses."""

from __future__ import annotations

import sys
from collections.abc import Iterator
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
    kueue,
    namespace,
    prometheus,
    pushgateway,
    s3,
)
from testbed.node import real_node  # noqa: E402,F401


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: these tiny models train no faster on two, and on a shared
    2-core machine two threads wait at OpenMP barriers whenever another process holds a core (a 2 s
    training took 27 s that way). The step, pipeline and measurement tests use it for every test
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch  # on first use: the API and chart tests never load torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_TEST_BED_FIXTURES = frozenset(
    {"kube", "namespace", "s3", "gcs", "azurite", "prometheus", "pushgateway", "helm", "kueue", "real_node"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a test bed server as `cluster`, so `-m "not cluster"` (make
    test-fast) really needs no server, whether or not the test remembered the marker."""
    for item in items:
        if _TEST_BED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
