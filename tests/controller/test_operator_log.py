"""The operator's log at its default level: what it did, not one line per watch event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubectl import apply_cr, running_pod, wait_phase
from operator_process import OperatorProcess, install_crd

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


def test_handler_success_is_not_logged_by_default(kube: Any, namespace: str, tmp_path: Path) -> None:
    install_crd(kube)
    quiet = OperatorProcess(kube, tmp_path, "--namespaces", namespace, verbose=False).start()
    try:
        apply_cr(kube, namespace, "quiet", resources={"gpus": 1})
        running_pod(kube, namespace, "quiet")
        wait_phase(kube, namespace, "quiet", "Running")
        kube.kubectl("-n", namespace, "delete", "compressionjob", "quiet", "--wait=true")
    finally:
        quiet.stop()
    log = quiet.log.read_text()
    assert f"created Job {namespace}/quiet" in log, "the operator's own INFO lines are kept"
    noisy = [line for line in log.splitlines() if "succeeded" in line.lower()]
    assert not noisy, noisy[:5]
