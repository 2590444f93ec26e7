"""The CompressionSweep CRD is generated from the typed model like the CompressionJob's: drift fails,
the schema is structural and documented, and its template is the job's spec, defaulted alike."""

from __future__ import annotations

from typing import Any

from api_cases import ROOT
from test_crd import _walk

from kompression.api.crd import CRD_FILES, build_crd, build_sweep_crd
from kompression.cli import main


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = build_sweep_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_committed_crds_match_the_model() -> None:
    for _kind, (name, render) in CRD_FILES.items():
        for folder in ("crds", "deploy/crds", "charts/kompression/files/crds"):
            path = ROOT / folder / name
            assert path.read_text() == render(), f"{path} is stale: run `make crd`"


def test_the_cli_prints_either_crd(capsys: Any) -> None:
    assert main(["crd", "--kind", "CompressionSweep"]) == 0
    assert capsys.readouterr().out == CRD_FILES["CompressionSweep"][1]()
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == CRD_FILES["CompressionJob"][1]()


def test_names_columns_and_categories() -> None:
    crd = build_sweep_crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (
        "CompressionSweep",
        "compressionsweeps",
        ["ksweep"],
    )
    assert names["categories"] == build_crd()["spec"]["names"]["categories"]
    columns = {c["name"]: c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Done"] == ".status.trialsDone" and columns["Total"] == ".status.trialsTotal"
    assert columns["BestRatio"] == ".status.best.metrics.compressionRatio"
    assert columns["BestAccDelta"] == ".status.best.metrics.accuracyDelta"
    assert "Age" in columns


def test_schema_is_structural_and_every_field_described() -> None:
    for path, node in _walk(_schema(), ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not {"$ref", "anyOf", "allOf", "oneOf", "const"} & node.keys(), path
        if path.startswith((".spec", ".status")) and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_the_template_is_the_job_spec_with_its_defaults_and_rules() -> None:
    template = _schema()["properties"]["spec"]["properties"]["template"]
    job_spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert template["properties"] == job_spec["properties"]
    assert template["x-kubernetes-validations"] == job_spec["x-kubernetes-validations"]
    values = _schema()["properties"]["spec"]["properties"]["parameters"]["items"]["properties"]["values"]
    assert values["items"]["x-kubernetes-preserve-unknown-fields"] is True
    trials = _schema()["properties"]["status"]["properties"]["trials"]
    assert trials["x-kubernetes-list-map-keys"] == ["name"]
