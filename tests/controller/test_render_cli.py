"""`kompression render` prints what the operator would create."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kompression.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_render_prints_configmap_and_job(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMPRESSION_WORKER_IMAGE", "from-env:1")
    assert main(["render", str(EXAMPLES / "full-pipeline.yaml"), "--gpu-resource", "example.com/gpu"]) == 0
    cm, job = yaml.safe_load_all(capsys.readouterr().out)
    assert (cm["kind"], job["kind"]) == ("ConfigMap", "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "from-env:1"
    assert container["resources"]["limits"]["example.com/gpu"] == "1"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"


def test_render_rejects_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["spec"]["resources"] = {"gpus": 0, "gpuProduct": "X"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["render", str(bad)]) == 1
    assert "gpuProduct" in capsys.readouterr().err


def test_render_refuses_an_architecture_the_operator_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """render prints what the operator would create: for a loader named as the architecture, nothing."""
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc["spec"]["model"] |= {
        "format": "SafeTensors",
        "architecture": "transformers.dynamic_module_utils:get_class_from_dynamic_module",
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert main(["render", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "spec.model.architecture" in captured.err and "dynamic_module_utils" in captured.err
    assert captured.out == ""


def test_render_prints_an_llm_jobs_planning_job_before_its_worker_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(EXAMPLES / "llm-multi-gpu.yaml")]) == 0
    kinds = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds == [("ConfigMap", "llama-70b-w4a16-job"), ("Job", "llama-70b-w4a16-plan"), ("Job", "llama-70b-w4a16")]
