"""End to end: the operator's Job, run for real.

The operator makes the Job; kwok runs its pod as a stand-in. The test then does what the kubelet
would: takes the pod's command, args and env from the API server, resolves the credentials Secret
and the job ConfigMap, mints the projected progress token with TokenRequest, and runs the worker
here against the loopback S3 server. The worker posts live progress to the operator, and the
kwok pod is completed with the worker's real exit code and termination message. The CR must show
the worker's real results, with artifact digests that match the objects in S3.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubelet
import pytest
from kubectl import apply_cr, conditions, events, finish, running_pod, status, wait_phase
from operator_process import OperatorProcess

from factories import example_model

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]
H100 = "NVIDIA-H100-80GB-HBM3"


def _sha256(s3: Any, uri: str) -> str:
    parsed = urlparse(uri)
    body = s3.client.get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    return hashlib.sha256(body).hexdigest()


def test_worker_runs_the_operators_pod_and_the_cr_shows_its_results(
    kube: Any, namespace: str, operator: OperatorProcess, s3: Any, tmp_path: Path
) -> None:
    bucket = s3.create_bucket("e2e")
    model = f"s3://{bucket}/models/digits-cnn.pt2"
    example_model(model, tmp_path, env={**s3.env})
    creds = {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_DEFAULT_REGION": s3.region,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
    }
    kube.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "s3-creds",
        *(f"--from-literal={k}={v}" for k, v in creds.items()),
    )
    apply_cr(
        kube,
        namespace,
        "e2e",
        model={
            "uri": model,
            "format": "TorchExport",
            "inputs": [{"name": "x", "shape": [-1, 1, 8, 8], "dtype": "float32"}],
        },
        data={"evaluation": {"builtin": "Digits", "metric": "Top1Accuracy"}},
        steps=[{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
        output={"uri": f"s3://{bucket}/out/", "credentials": {"secretName": "s3-creds"}},
        resources={"gpus": 1, "gpuProduct": H100, "cpu": "1", "memory": "2Gi"},
    )
    pod = running_pod(kube, namespace, "e2e")
    container = pod["spec"]["containers"][0]
    # The credentials travel by reference only.
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert s3.secret_key not in json.dumps(pod)

    prepared = kubelet.prepare(kube, pod, tmp_path / "root", "worker")
    code = kubelet.run(prepared, tmp_path / "worker.log", timeout=400)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log[-4000:]
    message = prepared.termination_log.read_text()
    assert json.loads(message)["phase"] == "Succeeded"
    # The live channel worked: steps came from the worker's POSTs before the pod ended.
    kube.wait(
        lambda: (status(kube, namespace, "e2e").get("steps") or [{}])[0].get("metrics"),
        "step metrics from the live progress channel",
        timeout=30,
    )

    finish(kube, pod, code, message)
    kube.kubectl("-n", namespace, "wait", "--for=condition=Succeeded", "compressionjob/e2e", "--timeout=90s")
    final = wait_phase(kube, namespace, "e2e", "Succeeded")
    assert conditions(final)["Ready"]["status"] == "True"
    (step,) = final["steps"]
    assert step["name"] == "int8" and step["phase"] == "Succeeded"
    assert step["metrics"]["sizeBytes"] > 0 and step["metrics"]["accuracy"] > 0.5
    result = final["result"]
    assert result["compressionRatio"] > 1.5 and result["gatesPassed"] is True
    assert result["baseline"]["sizeBytes"] > result["final"]["sizeBytes"]
    assert final["artifacts"]
    for artifact in final["artifacts"]:
        assert artifact["uri"].startswith(f"s3://{bucket}/out/")
        assert artifact["sha256"] == _sha256(s3, artifact["uri"]), artifact["name"]
    assert any(a["kind"] == "ONNXModel" for a in final["artifacts"])
    assert "Succeeded" in events(kube, namespace, "e2e")
    assert final.get("currentStep") is None and final["progress"]["percentage"] == 100
