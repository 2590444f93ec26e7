"""`kompression validate` and parse_job: the API's rules, without a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import EXAMPLES, INVALID, expected_field

from kompression.api.validation import SpecInvalid, check_update, parse_job
from kompression.cli import main


def test_there_are_enough_cases() -> None:
    assert len(EXAMPLES) >= 6
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0
    assert "is valid" in capsys.readouterr().out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_every_invalid_manifest_is_rejected_naming_the_field(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{expected_field(path)}:" in err
    assert "Traceback" not in err


def test_unreadable_and_unparsable_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert main(["validate", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_wrong_kind_names_what_is_expected() -> None:
    with pytest.raises(SpecInvalid, match=r"expected kompression.dev/v1alpha1 CompressionJob, got v1 Pod"):
        parse_job({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {}})


def test_errors_list_every_problem_at_once() -> None:
    doc = yaml.safe_load((INVALID[0].parent / "prune-method-unknown.yaml").read_text())
    doc["spec"]["resources"]["gpus"] = -3
    with pytest.raises(SpecInvalid) as info:
        parse_job(doc)
    paths = {e.path for e in info.value.errors}
    assert {"spec.steps[0].prune.method", "spec.resources.gpus"} <= paths


def test_unset_fields_take_the_documented_defaults() -> None:
    job = parse_job(_quickstart())
    assert job.spec.runPolicy.backoffLimit == 2
    assert job.spec.measurement.batchSizes == [1]


def _quickstart() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((EXAMPLES[0].parent / "quickstart.yaml").read_text())  # type: ignore[no-any-return]


def test_spec_is_immutable_except_suspend_and_ttl() -> None:
    old = parse_job(_quickstart()).spec
    changed = _quickstart()
    changed["spec"]["runPolicy"] = {"suspend": True, "ttlSecondsAfterFinished": 60}
    assert check_update(old, parse_job(changed).spec) == []
    changed["spec"]["steps"][0]["prune"]["sparsity"] = 0.3
    errors = check_update(old, parse_job(changed).spec)
    assert errors and "create a new CompressionJob" in errors[0].message
    changed = _quickstart()
    changed["spec"]["runPolicy"] = {"backoffLimit": 5}
    assert check_update(old, parse_job(changed).spec)


def test_a_scheme_the_worker_cannot_read_is_refused_saying_what_works() -> None:
    doc = _quickstart()
    doc["spec"]["model"]["uri"] = "hf://google/vit-base-patch16-224@main"
    with pytest.raises(SpecInvalid) as info:
        parse_job(doc)
    (error,) = info.value.errors
    assert error.path == "spec.model.uri"
    for accepted in ("s3://BUCKET/PATH", "gs://BUCKET/PATH", "az://CONTAINER/PATH", "pvc://CLAIM/PATH", "file://PATH"):
        assert accepted in error.message
    assert "hf:// is not served" in error.message


@pytest.mark.parametrize(
    "uri",
    ["s3://b/k.pt2", "gs://b/k.pt2", "az://c/k.pt2", "pvc://models/k.pt2", "pvc://team.models-1/a/b", "file://k.pt2"],
)
def test_every_scheme_the_worker_reads_is_accepted(uri: str) -> None:
    doc = _quickstart()
    doc["spec"]["model"]["uri"] = uri
    assert parse_job(doc).spec.model.uri == uri


@pytest.mark.parametrize(
    "uri", ["pvc://claim/x/../out/", "pvc://claim/./out/", "pvc://claim//out/", "s3://b/out/..", "file://../x/"]
)
@pytest.mark.parametrize(
    ("field", "put"),
    [
        ("spec.model.uri", lambda doc, uri: doc["spec"]["model"].update(uri=uri)),
        ("spec.output.uri", lambda doc, uri: doc["spec"]["output"].update(uri=uri)),
        (
            "spec.data.evaluation.uri",
            lambda doc, uri: doc["spec"]["data"].update(evaluation={"uri": uri.rstrip("/") + "/v.npz"}),
        ),
    ],
)
def test_dot_and_empty_path_segments_are_refused(uri: str, field: str, put: Any) -> None:
    """One folder spelled two ways would let two jobs publish to it, and `..` could leave a claim."""
    doc = _quickstart()
    put(doc, uri)
    with pytest.raises(SpecInvalid) as info:
        parse_job(doc)
    (error,) = info.value.errors
    assert error.path == field
    assert "may not hold `.` or `..` path segments or an empty one" in error.message


@pytest.mark.parametrize(
    "uri", ["pvc://claim/.hidden/out/", "s3://b/a..b/", "file://.kompression/out/", "file:///abs/"]
)
def test_dots_inside_a_segment_are_fine(uri: str) -> None:
    doc = _quickstart()
    doc["spec"]["output"]["uri"] = uri
    assert parse_job(doc).spec.output.uri == uri


def test_the_largest_dimension_and_sequence_length_pass() -> None:
    """The bounds (tests/api/invalid/*-too-*.yaml one above them) admit what a real job uses."""
    doc = _quickstart()
    doc["spec"]["model"]["inputs"] = [{"name": "x", "shape": [-1, 1048576]}]
    assert parse_job(doc).spec.model.inputs[0].shape == [-1, 1048576]
    llm = yaml.safe_load((EXAMPLES[0].parent / "llm-w4a16.yaml").read_text())
    llm["spec"]["data"]["calibration"]["maxLength"] = 131072
    calibration = parse_job(llm).spec.data.calibration  # type: ignore[union-attr]
    assert calibration is not None and calibration.maxLength == 131072
