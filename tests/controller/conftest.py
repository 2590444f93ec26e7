"""The operator process the cluster tests share: one per test module, on the CRD from crds/. A module
that needs flags of its own names them in OPERATOR_ARGS. And the `pvc://` tests' claims."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from claims import host_path_claims
from kueue_queues import make_queue, priority_classes  # noqa: F401 (fixtures of the Kueue tests)
from operator_process import OperatorProcess, install_crd


@pytest.fixture(scope="module")
def operator(
    kube: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_crd(kube)
    args = getattr(request.module, "OPERATOR_ARGS", ())
    proc = OperatorProcess(kube, tmp_path_factory.mktemp(f"operator-{request.module.__name__}"), *args).start()
    yield proc
    proc.stop()


@pytest.fixture
def volumes(kube: Any, namespace: str, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The claims `models` and `results`, each bound to a host-path volume of its own under tmp_path."""
    with host_path_claims(kube, namespace, tmp_path / "volumes") as dirs:
        yield dirs
