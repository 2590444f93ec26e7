"""End to end on the real node (hack/node.sh): the chart runs the operator image as a pod, and its
Jobs run in the CPU and LLM worker images on a real kubelet, with no stand-in anywhere between the
CR and the objects in S3.

The tests talk to the operator only through the API server: CRs, their status and Events, and its
metrics through the API server's proxy to its Service. The chart puts the operator pod and the
worker pods on the real node (nodeSelector, worker.nodeSelector). Workers run as UID 65532 with a
read-only root, resolve the operator's Service with CoreDNS and reach it through kube-proxy with
their projected token, reach the test bed's S3 at the pod bridge's address, and end with the
termination message the real kubelet wrote. Skipped, naming the fix, where the real node cannot start.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
import yaml
from claims import claim_volumes
from kubectl import apply_cr, conditions, events, pods, status, wait_phase

from factories import example_model
from kompression.worker.data.arrays import digits
from testbed.chart import installed, release_name
from testbed.node import OPERATOR_IMAGE, WORKER_LLM_IMAGE, RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
TINY_LLAMA = Path(__file__).resolve().parents[1] / "llm" / "fixtures" / "tiny-llama"


@pytest.fixture(scope="module")
def operator(real_node: RealNode, kube: Any, helm: Any) -> Iterator[str]:
    """The chart's operator, from the operator image, as a pod on the real node, with leader election
    and its workers sent to the real node in the CPU and LLM worker images; yields its Service's
    API-server proxy path."""
    for image in (OPERATOR_IMAGE, WORKER_LLM_IMAGE):
        if not real_node.has_image(image):
            pytest.skip(f"{image} is not built: run `make images`")
    release, system = release_name("e2e"), kube.create_namespace("kompression")
    operator_repository, operator_tag = OPERATOR_IMAGE.rsplit(":", 1)
    worker_repository, worker_tag = real_node.worker_image.rsplit(":", 1)
    llm_repository, llm_tag = WORKER_LLM_IMAGE.rsplit(":", 1)
    sets = (
        f"image.repository={operator_repository}",
        f"image.tag={operator_tag}",
        "image.pullPolicy=Never",
        f"nodeSelector.kubernetes\\.io/hostname={real_node.name}",
        "operator.peering.enabled=true",
        f"worker.image.repository={worker_repository}",
        f"worker.image.tag={worker_tag}",
        f"worker.llmImage.repository={llm_repository}",
        f"worker.llmImage.tag={llm_tag}",
        f"worker.nodeSelector.kubernetes\\.io/hostname={real_node.name}",
        # No network plugin here enforces NetworkPolicy; the node's own rules confine the pods.
        "networkPolicy.enabled=false",
    )
    with installed(kube, helm, release, system, *sets) as objects:
        service = next(o for o in objects if o["kind"] == "Service")["metadata"]["name"]

        def ready() -> bool:
            found = json.loads(kube.kubectl("-n", system, "get", "pods", "-o", "json").stdout)["items"]
            return any(
                c["type"] == "Ready" and c["status"] == "True"
                for p in found
                if p["spec"].get("nodeName") == real_node.name
                for c in p["status"].get("conditions", [])
            )

        kube.wait(ready, "the operator pod Ready on the real node", timeout=300)
        yield f"/api/v1/namespaces/{system}/services/{service}:metrics/proxy/metrics"


def _sha256(s3: Any, uri: str) -> str:
    parsed = urlparse(uri)
    body = s3.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    return hashlib.sha256(body).hexdigest()


def _credentials(kube: Any, namespace: str, s3: Any, real_node: RealNode) -> None:
    creds = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "AWS_ENDPOINT_URL": real_node.url(s3.endpoint_url),
    }
    literals = [f"--from-literal={k}={v}" for k, v in creds.items()]
    kube.kubectl("-n", namespace, "create", "secret", "generic", "s3-creds", *literals)


def _quickstart(name: str, model: str, output: str) -> dict[str, Any]:
    """examples/quickstart.yaml with its model and output on the test bed's S3."""
    doc: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["model"]["uri"] = model
    doc["spec"]["output"] = {"uri": output, "credentials": {"secretName": "s3-creds"}}
    doc["spec"]["resources"] = {"gpus": 0, "cpu": "1", "memory": "3Gi"}
    return doc


def _worker_pod(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = pods(kube, namespace, name)
        return found[0] if found else None

    pod: dict[str, Any] = kube.wait(probe, f"a pod of {namespace}/{name}", timeout=60)
    return pod


def test_the_quickstart_runs_in_the_cpu_worker_image_on_the_real_node(
    operator: str, real_node: RealNode, kube: Any, namespace: str, s3: Any, *, tmp_path: Path
) -> None:
    bucket = s3.create_bucket("real-node")
    model = f"s3://{bucket}/models/digits-cnn.pt2"
    example_model(model, tmp_path, env={**s3.env})
    _credentials(kube, namespace, s3, real_node)
    created = time.monotonic()
    kube.apply(_quickstart("quickstart", model, f"s3://{bucket}/out/"), namespace)

    pod = _worker_pod(kube, namespace, "quickstart")
    first_progress = kube.wait(
        lambda: (status(kube, namespace, "quickstart").get("progress") or {}).get("percentage"),
        "the first progress from the worker pod",
        timeout=300,
    )
    progressed = time.monotonic()
    final = wait_phase(kube, namespace, "quickstart", "Succeeded", timeout=1200)
    succeeded = time.monotonic()
    print(
        f"real node: CR created -> first progress {progressed - created:.1f} s ({first_progress}%),"
        f" -> Succeeded {succeeded - created:.1f} s"
    )

    done = json.loads(kube.kubectl("-n", namespace, "get", "pod", pod["metadata"]["name"], "-o", "json").stdout)
    assert done["spec"]["nodeName"] == real_node.name
    container = done["spec"]["containers"][0]
    assert container["image"] == real_node.worker_image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert done["spec"]["securityContext"]["runAsUser"] == 65532
    (state,) = done["status"]["containerStatuses"]
    terminated = state["state"]["terminated"]
    assert terminated["exitCode"] == 0
    # The real kubelet read the worker's termination log into the pod's status.
    assert json.loads(terminated["message"])["phase"] == "Succeeded"

    assert conditions(final)["Ready"]["status"] == "True"
    assert [s["name"] for s in final["steps"]] == ["prune", "distill", "int8", "export"]
    assert all(s["phase"] == "Succeeded" for s in final["steps"])
    assert final["result"]["gatesPassed"] is True
    assert any(a["kind"] == "ONNXModel" for a in final["artifacts"])
    for artifact in final["artifacts"]:
        assert artifact["uri"].startswith(f"s3://{bucket}/out/")
        assert artifact["sha256"] == _sha256(s3, artifact["uri"]), artifact["name"]
    assert "Succeeded" in events(kube, namespace, "quickstart")
    # The operator's own figures, through the API server's proxy to its Service.
    metrics = kube.kubectl("get", "--raw", operator).stdout
    assert 'kompression_jobs{phase="Succeeded"}' in metrics


@pytest.mark.usefixtures("operator")
def test_a_pvc_job_reads_and_writes_through_its_claims_on_the_real_node(
    real_node: RealNode, kube: Any, namespace: str, volumes: dict[str, Path], *, tmp_path: Path
) -> None:
    """The operator's Job mounts the claims a job names (the same volumes `kompression render`
    prints), and the real kubelet mounts their host-path volumes, the models claim read-only."""
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
    pod = _worker_pod(kube, namespace, "pvc")
    assert pod["spec"]["nodeName"] == real_node.name

    # The operator's Job mounts the models claim read-only and the results claim read-write ...
    claims, mounts = claim_volumes(pod["spec"])
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
    assert claim_volumes(rendered["spec"]["template"]["spec"]) == (claims, mounts)

    final = wait_phase(kube, namespace, "pvc", "Succeeded", timeout=600)
    assert final["result"]["gatesPassed"] is True
    published = volumes["results"] / "digits"
    assert (published / "manifest.json").is_file()
    for artifact in final["artifacts"]:
        assert artifact["uri"].startswith("pvc://results/digits/"), artifact
        assert (published / artifact["uri"].removeprefix("pvc://results/digits/")).is_file()
    # The read-only claim only holds what was put there.
    assert sorted(p.name for p in volumes["models"].rglob("*") if p.is_file()) == ["model.pt2", "val.npz"]
    assert status(kube, namespace, "pvc")["phase"] == "Succeeded"


@pytest.mark.usefixtures("operator")
def test_bad_data_fails_the_job_with_its_reason_through_the_real_pod_failure_policy(
    real_node: RealNode, kube: Any, namespace: str, s3: Any, tmp_path: Path
) -> None:
    bucket = s3.create_bucket("real-node-bad")
    model = f"s3://{bucket}/models/digits-cnn.pt2"
    example_model(model, tmp_path, env={**s3.env})
    s3.client.put_object(Bucket=bucket, Key="data/eval.npz", Body=b"not a zip archive")
    _credentials(kube, namespace, s3, real_node)
    doc = _quickstart("bad-data", model, f"s3://{bucket}/out/")
    doc["spec"]["data"] = {"evaluation": {"uri": f"s3://{bucket}/data/eval.npz", "metric": "Top1Accuracy"}}
    doc["spec"]["steps"] = [{"name": "int8", "quantize": {"method": "DynamicInt8"}}]
    doc["spec"].pop("acceptance", None)
    kube.apply(doc, namespace)

    final = wait_phase(kube, namespace, "bad-data", "Failed", timeout=600)
    assert conditions(final)["Failed"]["reason"] == "DataError"
    (pod,) = pods(kube, namespace, "bad-data")  # FailJob: no retry of an author's mistake
    assert pod["spec"]["nodeName"] == real_node.name
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 4
    message = json.loads(terminated["message"])["message"]
    assert message.startswith("spec.data.evaluation: eval.npz is not an .npz file"), message
    listed = s3.client.list_objects_v2(Bucket=bucket, Prefix="out/")
    assert listed.get("KeyCount", 0) == 0, "nothing is published by a failed job"


def test_an_llm_job_runs_in_the_llm_worker_image_on_the_real_node(
    operator: str, real_node: RealNode, kube: Any, namespace: str, s3: Any
) -> None:
    # Imported here: only this test needs the worker's text split, and it imports torch.
    from kompression.worker.llm.tiny_llama import paragraphs

    bucket = s3.create_bucket("real-node-llm")
    for f in sorted(TINY_LLAMA.iterdir()):
        s3.client.put_object(Bucket=bucket, Key=f"models/tiny-llama/{f.name}", Body=f.read_bytes())
    everything = paragraphs()
    texts = {"train.txt": [t for i, t in enumerate(everything) if i % 10], "eval.txt": everything[::10]}
    for name, lines in texts.items():
        s3.client.put_object(Bucket=bucket, Key=f"data/{name}", Body=("\n".join(lines) + "\n").encode())
    _credentials(kube, namespace, s3, real_node)
    doc = {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": "tiny-llama"},
        "spec": {
            "model": {
                "uri": f"s3://{bucket}/models/tiny-llama/",
                "format": "HuggingFace",
                "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
            },
            "data": {
                "calibration": {"uri": f"s3://{bucket}/data/train.txt", "samples": 16, "maxLength": 128},
                "evaluation": {"uri": f"s3://{bucket}/data/eval.txt", "samples": 16, "maxLength": 128},
            },
            "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "RTN"}}],
            "output": {"uri": f"s3://{bucket}/out/", "credentials": {"secretName": "s3-creds"}},
            "resources": {"gpus": 0, "cpu": "1", "memory": "4Gi"},
        },
    }
    kube.apply(doc, namespace)
    final = wait_phase(kube, namespace, "tiny-llama", "Succeeded", timeout=1200)

    (pod,) = pods(kube, namespace, "tiny-llama")
    assert pod["spec"]["nodeName"] == real_node.name
    container = pod["spec"]["containers"][0]
    assert container["image"] == WORKER_LLM_IMAGE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0
    assert json.loads(terminated["message"])["phase"] == "Succeeded"
    (step,) = final["steps"]
    assert step["phase"] == "Succeeded"
    assert final["result"]["gatesPassed"] is True
    assert final["artifacts"]
    for artifact in final["artifacts"]:
        assert artifact["uri"].startswith(f"s3://{bucket}/out/")
        if not artifact["uri"].endswith("/"):
            assert artifact["sha256"] == _sha256(s3, artifact["uri"]), artifact["name"]
