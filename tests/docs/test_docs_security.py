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


def test_every_test_the_security_page_names_exists() -> None:
    """The threat model cites a test for each refusal: a renamed or deleted test must take the
    page's claim with it, not leave it standing on nothing."""
    page = (DOCS / "security.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", page)
    assert len(cited) > 40, "the threat-model table cites its tests"
    for path, name in cited:
        source = DOCS.parent / path
        assert source.is_file(), path
        if name:
            assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{path}::{name}"


def test_the_threat_model_covers_every_input_an_author_controls() -> None:
    page = (DOCS / "security.md").read_text()
    table = page[page.index("### Untrusted inputs, one by one") : page.index("### What the worker pod can reach")]
    for section in ("The manifest", "Storage", "A model folder", "Data", "Task files", "The output prefix"):
        assert f"| **{section}** (" in table, section
    for word in ("ValidatingAdmissionPolicy", "spec.worker.image", "activeDeadlineSeconds"):
        assert word in page, word
