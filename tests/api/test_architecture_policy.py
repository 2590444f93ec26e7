"""`architecture` may only name modules the cluster's operator allows: `kompression validate`
checks it, the operator hands its list to every worker, and the worker checks it again
(tests/worker/formats/test_worker_formats.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import ROOT

from kompression.api.architectures import DEFAULT_ARCHITECTURE_MODULES, module_allowed, reference_allowed
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


# --------------------------------------------------------------------------------------------
# inside the zoos: model builders only, and no argument that fetches weights or code

PAYLOAD = """\
import os
import pathlib

pathlib.Path(os.environ["KOMPRESSION_TEST_MARKER"]).write_text("the folder's Python ran")


class Net:
    pass
"""


def _hostile_job(tmp_path: Path, ref: str, arguments: dict[str, Any]) -> Path:
    """A SafeTensors job whose architecture names a loader, pointed at a folder of planted Python."""
    doc: dict[str, Any] = yaml.safe_load(DISTILL.read_text())
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")  # an empty safetensors file
    doc["spec"]["model"].update(
        format="SafeTensors", uri=weights.as_uri(), architecture=ref, architectureArguments=arguments
    )
    doc["spec"]["output"]["uri"] = (tmp_path / "out").as_uri() + "/"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("modules", ["", "transformers", "transformers,transformers.dynamic_module_utils"])
def test_a_transformers_loader_never_runs_the_folders_python(
    modules: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_class_from_dynamic_module imports a local folder's Python (the first assertion shows it
    does): validate refuses the reference, and `kompression run` refuses it before anything is
    downloaded or imported, whatever transformers prefix the cluster lists."""
    folder = tmp_path / "planted"
    folder.mkdir()
    (folder / "payload.py").write_text(PAYLOAD)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "operator"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        ENV_ARCHITECTURE_MODULES: modules,
        "KOMPRESSION_WORKDIR": str(tmp_path / "work"),
    }
    proof = tmp_path / "proof"
    loader = "from transformers.dynamic_module_utils import get_class_from_dynamic_module as g; "
    subprocess.run(
        [sys.executable, "-c", loader + f"g('payload.Net', {str(folder)!r})"],
        env={**env, "KOMPRESSION_TEST_MARKER": str(proof)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert proof.read_text() == "the folder's Python ran"

    marker = tmp_path / "marker"
    env["KOMPRESSION_TEST_MARKER"] = str(marker)
    ref = "transformers.dynamic_module_utils:get_class_from_dynamic_module"
    for arguments in (
        {"class_reference": "payload.Net", "pretrained_model_name_or_path": str(folder)},
        {"class_reference": "payload.Net", "repo_id": str(folder)},
    ):
        job = _hostile_job(tmp_path, ref, arguments)
        validate = subprocess.run(
            [sys.executable, "-m", "kompression", "validate", str(job)],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        run = subprocess.run(
            [sys.executable, "-m", "kompression", "run", "--progress", "json", str(job)],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert validate.returncode == 1, validate.stderr  # validate's "invalid"
        assert run.returncode == 2, run.stderr  # InvalidSpec, never retried
        for err in (validate.stderr, run.stderr):
            assert "spec.model.architecture: transformers.dynamic_module_utils is not one of the transformers" in err
            assert "worker.architectureModules" in err
        assert not marker.exists()
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("transformers:AutoConfig", "not a transformers model class"),
        ("transformers:AutoTokenizer", "not a transformers model class"),
        ("transformers:pipeline", "not a transformers model class"),
        ("transformers:DataCollatorForLanguageModeling", "not a transformers model class"),
        ("transformers.models.auto.configuration_auto:AutoConfig", "not one of the transformers modules"),
        ("transformers.models.bert.tokenization_bert:BertTokenizer", "not one of the transformers modules"),
        ("transformers.pipelines:pipeline", "not one of the transformers modules"),
        ("transformers.utils.hub:cached_file", "not one of the transformers modules"),
        ("torchvision.models:get_weight", "not a model builder"),
        ("torchvision.models:get_model", "not a model builder"),
        ("torchvision.models:ResNet18_Weights", "not a model builder"),
        ("torchvision.models._api:get_weight", "not one of the torchvision modules"),
        ("timm:load_checkpoint", "not a model builder"),
        ("timm:list_models", "not a model builder"),
        ("timm.models:load_pretrained", "not a model builder"),
        ("timm.layers:Mlp", "not one of the timm modules"),
    ],
)
def test_validate_admits_only_model_builders_inside_the_zoos(
    ref: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    assert not reference_allowed(ref, DEFAULT_ARCHITECTURE_MODULES)
    assert main(["validate", str(manifest(tmp_path, model_ref=ref))]) == 1
    err = capsys.readouterr().err
    assert "spec.model.architecture: " in err and reason in err and "worker.architectureModules" in err


@pytest.mark.parametrize(
    "ref",
    [
        "transformers:AutoModelForSequenceClassification",
        "transformers:GPT2LMHeadModel",
        "transformers.models.bert.modeling_bert:BertModel",
        "transformers.models.bert:BertForMaskedLM",
        "torchvision.models.detection:fasterrcnn_resnet50_fpn",
        "torchvision.models:ResNet",
        "timm.models.resnet:resnet50",
    ],
)
def test_model_builders_inside_the_zoos_pass(ref: str) -> None:
    assert reference_allowed(ref, DEFAULT_ARCHITECTURE_MODULES)


def test_every_torchvision_builder_passes() -> None:
    models = pytest.importorskip("torchvision.models")
    refused = [n for n in models.list_models() if not reference_allowed(f"torchvision.models:{n}", ("torchvision",))]
    assert refused == []


def test_transformers_names_that_pass_are_defined_in_modeling_modules() -> None:
    """The name rule (all `kompression validate` can check without importing) admits no top-level
    transformers name that is defined outside a modeling module (which the worker's import refuses)."""
    transformers = pytest.importorskip("transformers")
    homes: dict[str, str] = transformers._class_to_module  # the lazy module's name -> submodule map
    assert len(homes) > 1000
    passing = {n: m for n, m in homes.items() if reference_allowed(f"transformers:{n}", ("transformers",))}
    outside = {n: m for n, m in passing.items() if not module_allowed(f"transformers.{m}", ("transformers",))}
    assert outside == {}
    assert {"AutoModel", "AutoModelForCausalLM", "BertForSequenceClassification"} <= set(passing)
    assert not {"AutoConfig", "AutoTokenizer", "AutoProcessor", "PreTrainedTokenizer"} & set(passing)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"pretrained": True}, "pretrained"),
        ({"weights": "DEFAULT", "num_classes": 10}, "weights"),
        ({"weights_backbone": "IMAGENET1K_V1"}, "weights_backbone"),
        ({"checkpoint_path": "/var/run/secrets/x"}, "checkpoint_path"),
        ({"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, "pretrained_cfg_overlay"),
        ({"trust_remote_code": True}, "trust_remote_code"),
    ],
)
@pytest.mark.parametrize("where", ["model", "student"])
def test_validate_refuses_arguments_that_fetch_weights(
    arguments: dict[str, Any],
    named: str,
    where: str,
    *,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    doc: dict[str, Any] = yaml.safe_load(
        manifest(tmp_path, "timm:create_model", "torchvision.models:resnet18").read_text()
    )
    if where == "model":
        doc["spec"]["model"]["architectureArguments"] = arguments
        field = "spec.model.architectureArguments"
    else:
        student = next(s for s in doc["spec"]["steps"] if "distill" in s)["distill"]["student"]
        student["architectureArguments"] = arguments
        field = ".distill.student.architectureArguments"
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert field in err and named in err and "spec.model.uri" in err


def test_null_or_false_download_arguments_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    doc: dict[str, Any] = yaml.safe_load(manifest(tmp_path, "torchvision.models:resnet18").read_text())
    doc["spec"]["model"]["architectureArguments"] = {"weights": None, "pretrained": False, "num_classes": 10}
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 0
