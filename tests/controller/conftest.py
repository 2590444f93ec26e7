"""The operator process the cluster tests share: one per test module, on the CRD from crds/. A module
that needs flags of its own names them in OPERATOR_ARGS."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
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
