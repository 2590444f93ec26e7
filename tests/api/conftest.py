"""Fixtures for the API's tests."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from admission import DryRun, dry_run_create
from api_cases import ROOT

CRD_FILE = ROOT / "crds" / "compressionjobs.kompression.dev.yaml"
SWEEP_CRD_FILE = ROOT / "crds" / "compressionsweeps.kompression.dev.yaml"


@pytest.fixture(scope="module")
def crd(kube: Any) -> None:
    """The generated CRDs (CompressionJob's and CompressionSweep's, the examples hold both), installed on
    the test bed and Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE), "-f", str(SWEEP_CRD_FILE))
    kube.wait_established("compressionjobs.kompression.dev")
    kube.wait_established("compressionsweeps.kompression.dev")


@pytest.fixture(scope="module")
def dry_run(kube: Any, crd: None) -> DryRun:
    """dry_run(manifest, namespace="default"): the installed CRD's verdict on a job (admission.dry_run_create)."""
    return functools.partial(dry_run_create, kube)
