"""`architecture` may only name modules the cluster's operator allows: `kompression validate`
checks it, the operator hands its list to every worker, and the worker checks it again
(tests/worker/test_worker_formats.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import ROOT

from kompression.api.architectures import DEFAULT_ARCHITECTURE_MODULES, reference_allowed
from kompression.api.constants import ENV_ARCHITECTURE_MODULES
from kompression.api.validation import parse_job
from kompression.cli import main
from kompression.controller.builders import build_job
from kompression.controller.cli import register, settings_from
from kompression.controller.settings import Settings

DISTILL = ROOT / "examples" / "distill.yaml"


def manifest(tmp_path: Path, model_ref: str | None = None, student_ref: str | None = None) -> Path:
    doc: dict[str, Any] = yaml.safe_load(DISTILL.read_text())
    if model_ref is not None:
        doc["spec"]["model"].update(
            format="SafeTensors", uri="s3://m/w.safetensors", architecture=model_ref, architectureArguments={"a": 1}
        )
    if student_ref is not None:
        student = next(s for s in doc["spec"]["steps"] if "distill" in s)["distill"]["student"]
        student.clear()
        student["architecture"] = student_ref
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("refs", "field"),
    [
        (("os:system", None), "spec.model.architecture"),
        (("builtins:exec", None), "spec.model.architecture"),
        ((None, "subprocess:run"), ".distill.student.architecture"),
        (("torchvisionx.models:resnet18", None), "spec.model.architecture"),
        (("torchvision.datasets:MNIST", None), "spec.model.architecture"),
    ],
)
def test_validate_refuses_architectures_outside_the_default_list(
    refs: tuple[str | None, str | None],
    field: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    assert main(["validate", str(manifest(tmp_path, *refs))]) == 1
    err = capsys.readouterr().err
    assert field in err and "worker.architectureModules" in err


def test_validate_accepts_the_default_zoos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    assert main(["validate", str(manifest(tmp_path, "torchvision.models:resnet18", "timm:create_model"))]) == 0
    for ref in ("transformers:BertForSequenceClassification", "kompression.worker.example_model:DigitsCNN"):
        assert reference_allowed(ref, DEFAULT_ARCHITECTURE_MODULES)


def test_validate_takes_the_clusters_list_from_flag_or_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    path = manifest(tmp_path, "mycompany.models:Net")  # its student is torchvision's
    assert main(["validate", str(path)]) == 1
    assert main(["validate", "--architecture-modules", "mycompany.models", str(path)]) == 1
    assert main(["validate", "--architecture-modules", "mycompany.models,torchvision.models", str(path)]) == 0
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "mycompany,torchvision")
    assert main(["validate", str(path)]) == 0
    with pytest.raises(SystemExit):
        main(["validate", "--architecture-modules", "my company", str(path)])
    assert "not a module path" in capsys.readouterr().err


def _operator_settings(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return settings_from(parser.parse_args(["operator", *argv]))


def _worker_env(settings: Settings) -> dict[str, str]:
    job = yaml.safe_load(DISTILL.read_text())
    job["metadata"].update(namespace="ml", uid="u-1")
    container = build_job(parse_job(job), settings)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_operator_hands_its_list_to_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    default = _worker_env(_operator_settings([]))
    assert default[ENV_ARCHITECTURE_MODULES] == ",".join(DEFAULT_ARCHITECTURE_MODULES)
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "torchvision.models, mycompany.zoo")  # the chart's value
    assert _worker_env(_operator_settings([]))[ENV_ARCHITECTURE_MODULES] == "torchvision.models,mycompany.zoo"
    flagged = _operator_settings(["--architecture-modules", "timm"])
    assert _worker_env(flagged)[ENV_ARCHITECTURE_MODULES] == "timm"
