"""The generated CRD on a real kube-apiserver: examples accepted, invalid manifests rejected with
the field named (and the same verdict as `kompression validate`), immutability, defaults,
`kubectl explain` and printer columns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from admission import DryRun
from api_cases import EXAMPLES, INVALID, ROOT, expected_field
from option_cases import CASES, Case, refusal_names_option_and_users

from kompression.api.validation import SpecInvalid, parse_job

pytestmark = pytest.mark.cluster


def _create(kube: Any, namespace: str, path: Path) -> Any:
    # `kubectl create` validates strictly: unknown fields are errors, not silently pruned.
    return kube.kubectl("create", "-n", namespace, "-f", str(path), check=False)


def test_crd_is_established_with_its_names(kube: Any, crd: None) -> None:
    crd_obj = json.loads(kube.kubectl("get", "crd", "compressionjobs.kompression.dev", "-o", "json").stdout)
    names = crd_obj["status"]["acceptedNames"]
    assert names["shortNames"] == ["kjob", "kj"]
    assert names["categories"] == ["kompression"]


def test_every_example_is_accepted(kube: Any, crd: None, namespace: str) -> None:
    for path in EXAMPLES:
        proc = _create(kube, namespace, path)
        assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
    listed = json.loads(kube.kubectl("get", "kompression", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(listed) == len(EXAMPLES)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_like_the_cli_does(kube: Any, crd: None, namespace: str, path: Path) -> None:
    proc = _create(kube, namespace, path)
    assert proc.returncode != 0, f"the API server accepted {path.name}"
    assert expected_field(path) in proc.stderr, proc.stderr
    with pytest.raises(SpecInvalid) as cli_verdict:
        parse_job(yaml.safe_load(path.read_text()))
    assert any(e.path == expected_field(path) for e in cli_verdict.value.errors)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_options_a_method_does_not_use_are_refused_like_the_cli_does(dry_run: DryRun, case: Case) -> None:
    refusal = dry_run(case.manifest)
    if refusal is None:
        assert case.accepted, f"the API server accepted {case.field} with {case.manifest['spec']}"
    else:
        assert refusal.status == 422, refusal.body
        assert not case.accepted, f"the API server refused it: {refusal.causes}"
        messages = [c["message"] for c in refusal.causes if c.get("field") == case.field]
        assert any(refusal_names_option_and_users(case, m) for m in messages), refusal.causes


def test_spec_is_immutable_except_suspend_and_ttl(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, ROOT / "examples" / "quickstart.yaml").returncode == 0
    edit = kube.kubectl(
        "patch", "kjob", "quickstart", "-n", namespace, "--type=json",
        "-p", '[{"op": "replace", "path": "/spec/steps/0/prune/sparsity", "value": 0.3}]',
        check=False,
    )  # fmt: skip
    assert edit.returncode != 0
    assert "spec is immutable after creation" in edit.stderr
    assert "create a new CompressionJob" in edit.stderr
    allowed = '{"spec": {"runPolicy": {"suspend": true, "ttlSecondsAfterFinished": 60}}}'
    kube.kubectl("patch", "kjob", "quickstart", "-n", namespace, "--type=merge", "-p", allowed)
    stored = json.loads(kube.kubectl("get", "kjob", "quickstart", "-n", namespace, "-o", "json").stdout)
    assert stored["spec"]["runPolicy"]["suspend"] is True


def test_server_applies_the_documented_defaults(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, ROOT / "examples" / "quickstart.yaml").returncode == 0
    spec = json.loads(kube.kubectl("get", "kjob", "quickstart", "-n", namespace, "-o", "json").stdout)["spec"]
    local = parse_job(yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())).spec
    assert spec["runPolicy"]["backoffLimit"] == local.runPolicy.backoffLimit == 2
    # Every job has a deadline, so that a worker hung on its input does not hold a GPU for ever.
    assert spec["runPolicy"]["activeDeadlineSeconds"] == local.runPolicy.activeDeadlineSeconds == 86_400
    assert spec["measurement"]["batchSizes"] == local.measurement.batchSizes
    # An option only some methods use has no server default (the rule refusing it needs has());
    # its default applies where it is read.
    stored, parsed = spec["steps"][2]["quantize"], local.steps[2].quantize
    assert parsed is not None
    assert "perChannel" not in stored and "calibrator" in stored
    assert parsed.per_channel_or_default is True
    assert spec["worker"]["image"] == ""


def test_kubectl_explain_teaches_the_fields(kube: Any, crd: None) -> None:
    out = " ".join(kube.kubectl("explain", "kjob.spec.steps.prune").stdout.split())
    assert "KIND: CompressionJob" in out
    assert "physically remove channels and filters" in out
    assert "sparsity <number>" in out
    out = " ".join(kube.kubectl("explain", "compressionjob.spec.acceptance.maxAccuracyDrop").stdout.split())
    assert "Largest allowed drop in the evaluation metric" in out
    # An option without a schema default says what unset means, and which methods use it.
    out = " ".join(kube.kubectl("explain", "kjob.spec.steps.quantize.calibrator").stdout.split())
    assert "StaticInt8 only" in out and "unset means MinMax" in out
    out = " ".join(kube.kubectl("explain", "kjob.spec.runPolicy.activeDeadlineSeconds").stdout.split())
    assert "The default, 86400 (one day), bounds a worker that hangs" in out


def test_printer_columns_show_phase_step_ratio_and_accuracy(kube: Any, crd: None, namespace: str) -> None:
    assert _create(kube, namespace, ROOT / "examples" / "quickstart.yaml").returncode == 0
    header = kube.kubectl("get", "kjob", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "STEP", "RATIO", "ACCDELTA", "AGE"]
    wide = kube.kubectl("get", "kompression", "-n", namespace, "-o", "wide").stdout.splitlines()[0].split()
    assert {"PROGRESS", "SPEEDUP"} <= set(wide)
