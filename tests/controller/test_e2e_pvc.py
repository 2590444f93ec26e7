"""pvc:// end to end on the test bed: the operator mounts the claims a job names in its Job (the
same volumes `kompression render` prints), the real scheduler places the pod once the claims are
bound, and the worker, run as the kubelet would run it (kubelet.py), reads the model and data from the
`models` claim and publishes to the `results` claim."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubelet
import numpy as np
import pytest
import yaml
from kubectl import apply_cr, finish, jobs, running_pod, status, wait_phase
from operator_process import OperatorProcess

from factories import LLAMA, example_model
from kompression.worker.data.arrays import digits

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]
CLAIMS = ("models", "results")


@pytest.fixture
def volumes(kube: Any, namespace: str, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The claims `models` and `results`, each bound to its own hostPath volume under tmp_path."""
    dirs = {claim: tmp_path / "volumes" / claim for claim in CLAIMS}
    for claim, folder in dirs.items():
        folder.mkdir(parents=True)
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{claim}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(folder)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": f"{namespace}-{claim}",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    for claim in CLAIMS:
        kube.wait(
            lambda c=claim: (
                kube.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{c}")
                .get("status", {})
                .get("phase")
                == "Bound"
            ),
            f"claim {claim} bound",
            timeout=60,
        )
    yield dirs
    for claim in CLAIMS:
        kube.kubectl("delete", "pv", f"{namespace}-{claim}", "--wait=false", check=False)


def _claim_volumes(pod_spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """claim -> volume source, and claim -> (mountPath, readOnly) of the worker container."""
    by_volume = {v["name"]: v["persistentVolumeClaim"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    mounts = {
        by_volume[m["name"]]["claimName"]: (m["mountPath"], m.get("readOnly", False))
        for m in pod_spec["containers"][0]["volumeMounts"]
        if m["name"] in by_volume
    }
    # The API server leaves out readOnly: false; the renderer writes it.
    sources = {v["claimName"]: {**v, "readOnly": v.get("readOnly", False)} for v in by_volume.values()}
    return sources, mounts


def test_pvc_job_mounts_the_claims_and_the_worker_reads_and_writes_through_them(
    kube: Any,
    namespace: str,
    operator: OperatorProcess,
    volumes: dict[str, Path],
    tmp_path: Path,
) -> None:
    models = volumes["models"] / "digits"
    example_model(f"file://{models}/model.pt2", tmp_path)
    evaluation = digits("eval")
    np.savez(models / "val.npz", inputs=evaluation.inputs["x"], labels=evaluation.labels)
    spec: dict[str, Any] = {
        "model": {
            "uri": "pvc://models/digits/model.pt2",
            "format": "TorchExport",
            "inputs": [{"name": "x", "shape": [-1, 1, 8, 8], "dtype": "float32"}],
        },
        "data": {"evaluation": {"uri": "pvc://models/digits/val.npz", "metric": "Top1Accuracy"}},
        "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
        "output": {"uri": "pvc://results/digits/"},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
        "measurement": {"iterations": 3, "warmupIterations": 1},
    }
    apply_cr(kube, namespace, "pvc", **spec)
    pod = running_pod(kube, namespace, "pvc")

    # The operator's Job mounts the models claim read-only and the results claim read-write ...
    claims, mounts = _claim_volumes(pod["spec"])
    assert {c: v["readOnly"] for c, v in claims.items()} == {"models": True, "results": False}
    assert mounts == {"models": ("/mnt/pvc/models", True), "results": ("/mnt/pvc/results", False)}
    # ... exactly as `kompression render` shows it.
    manifest = tmp_path / "pvc.yaml"
    cr = json.loads(kube.kubectl("-n", namespace, "get", "compressionjob", "pvc", "-o", "json").stdout)
    manifest.write_text(yaml.safe_dump({k: cr[k] for k in ("apiVersion", "kind", "metadata", "spec")}))
    render = subprocess.run(
        [sys.executable, "-m", "kompression.cli", "render", str(manifest)], capture_output=True, text=True, check=True
    )
    _, rendered = yaml.safe_load_all(render.stdout)
    assert _claim_volumes(rendered["spec"]["template"]["spec"]) == (claims, mounts)

    prepared = kubelet.prepare(kube, pod, tmp_path / "root", "worker")
    code = kubelet.run(prepared, tmp_path / "worker.log", timeout=400)
    assert code == 0, (tmp_path / "worker.log").read_text()[-4000:]
    message = prepared.termination_log.read_text()
    finish(kube, pod, code, message)
    final = wait_phase(kube, namespace, "pvc", "Succeeded", timeout=90)
    assert final["result"]["gatesPassed"] is True
    published = volumes["results"] / "digits"
    assert (published / "manifest.json").is_file()
    for artifact in final["artifacts"]:
        assert artifact["uri"].startswith("pvc://results/digits/"), artifact
        assert (published / artifact["uri"].removeprefix("pvc://results/digits/")).is_file()
    # The read-only claim only holds what was put there.
    assert sorted(p.name for p in volumes["models"].rglob("*") if p.is_file()) == ["model.pt2", "val.npz"]
    assert status(kube, namespace, "pvc")["phase"] == "Succeeded"


def test_a_task_file_on_a_claim_of_its_own_is_mounted_in_the_job(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    """The Job the real API server stores mounts the claim that only data.tasks names (read-only)."""
    spec: dict[str, Any] = {
        "model": LLAMA,
        "data": {
            "calibration": {"uri": "s3://data/calibration.jsonl", "samples": 8, "maxLength": 64},
            "tasks": [{"name": "arc", "uri": "pvc://tasks/arc/test.jsonl"}],
        },
        "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}],
        "acceptance": {"maxAccuracyDrop": 0.05},
        "output": {"uri": "s3://out/llama/"},
        "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
    }
    apply_cr(kube, namespace, "tasks-claim", **spec)
    job = kube.wait(lambda: next(iter(jobs(kube, namespace)), None), f"the Job of {namespace}/tasks-claim", timeout=60)
    claims, mounts = _claim_volumes(job["spec"]["template"]["spec"])
    assert {c: v["readOnly"] for c, v in claims.items()} == {"tasks": True}
    assert mounts == {"tasks": ("/mnt/pvc/tasks", True)}
