"""The security page and the storage page's retry example: the example runs as written, and the pages keep naming what they promise."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kompression.api.constants import ExitCode
from kompression.api.validation import parse_job

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_retry_budget_example_is_a_valid_output() -> None:
    page = (DOCS / "storage.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", page, re.S) if "retrySeconds" in b]
    spec = yaml.safe_load(block)["spec"]
    job = parse_job(
        {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "docs", "namespace": "ml"},
            "spec": {
                "model": {
                    "uri": "s3://models/m.pt2",
                    "format": "TorchExport",
                    "inputs": [{"name": "x", "shape": [-1, 4]}],
                },
                "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
                **spec,
            },
        }
    )
    assert job.spec.output.retrySeconds == 300


def test_security_page_states_the_storage_rules() -> None:
    page = (DOCS / "security.md").read_text()
    assert "## Storage and publication" in page
    for word in ("OutputPrefixInUse", "If-Match", "symbolic link", "AbortIncompleteMultipartUpload", "retrySeconds"):
        assert word in page, word
    assert f"exit {ExitCode.STORAGE_REFUSED}" in page and f"exit {ExitCode.STORAGE_ERROR}" in page
