"""The Argo CD health check, run by a real Lua interpreter against health_test.yaml's cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kompression.api.v1alpha1 import CompressionJob
from kompression.api.validation import rule_errors
from testbed.argocd import health

HERE = Path(__file__).resolve().parent
CASES = yaml.safe_load((HERE / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(case: dict[str, dict[str, str]]) -> None:
    obj = yaml.safe_load((HERE / case["inputPath"]).read_text())
    job = CompressionJob.model_validate(obj)  # the testdata must be a valid CompressionJob, status included
    assert rule_errors(job.spec, "spec") == []  # ... that breaks none of the API's rules
    assert health(obj) == (case["healthStatus"]["status"], case["healthStatus"]["message"])


def test_every_testdata_file_has_a_case() -> None:
    listed = {case["inputPath"] for case in CASES}
    assert listed == {f"testdata/{p.name}" for p in (HERE / "testdata").glob("*.yaml")}


def test_strings_reach_lua_intact() -> None:
    obj = {
        "metadata": {},
        "status": {
            "phase": "Failed",
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "ModelError",
                    "message": 'bad "quote" \\ and\nnewline "1',
                }
            ],
        },
    }
    assert health(obj) == ("Degraded", 'ModelError: bad "quote" \\ and\nnewline "1')
