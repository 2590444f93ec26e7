"""Fixtures for the API's tests."""

from __future__ import annotations

from typing import Any

import pytest
from api_cases import ROOT

CRD_FILE = ROOT / "crds" / "compressionjobs.kompression.dev.yaml"


@pytest.fixture(scope="module")
def crd(kube: Any) -> None:
    """The generated CRD, installed on the test bed and Established."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube.wait_established("compressionjobs.kompression.dev")
