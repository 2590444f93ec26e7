"""docs/crd-reference.md is generated from the typed model; a stale copy fails here."""

from __future__ import annotations

from pathlib import Path

from kompression.api.reference import render_reference

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "crd-reference.md"


def test_reference_has_no_drift() -> None:
    assert PAGE.read_text() == render_reference(), (
        "docs/crd-reference.md is stale: run `python -m kompression.api.reference > docs/crd-reference.md`"
    )


def test_reference_covers_every_spec_and_status_model() -> None:
    page = render_reference()
    for name in (
        "CompressionJobSpec",
        "CompressionJobStatus",
        "PruneStep",
        "DistillStep",
        "QuantizeStep",
        "OnnxStep",
        "TensorRTStep",
        "Acceptance",
        "RunPolicy",
        "Condition",
        "Artifact",
    ):
        assert f"## {name}\n" in page
    assert "One of: `L1Unstructured`, `GlobalMagnitude`" in page
    assert "Range: 0 < value < 1." in page  # prune.sparsity's exclusive bounds
    assert "each step needs exactly one technique" in page


def test_every_section_is_linked_from_somewhere() -> None:
    page = render_reference()
    sections = [line[3:] for line in page.splitlines() if line.startswith("## ")]
    assert sections[0] == "CompressionJob"
    for name in sections[1:]:
        assert f"(#{name.lower()})" in page, name
