"""The chart's optional ValidatingAdmissionPolicy on the test bed's real API server: a job whose
spec.worker.image lies outside the allowed prefixes is refused by the API server itself, whoever
creates it; one inside them, or one that leaves the image to the operator, is stored."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from testbed.chart import CRD_FILE, REPO, template

pytestmark = pytest.mark.cluster

QUICKSTART: dict[str, Any] = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())


@pytest.fixture
def policy(kube: Any, namespace: str) -> Iterator[str]:
    """The chart's policy and binding, bound to this test's namespace only (the policy is
    cluster-wide; other tests' jobs must not meet it). Yields the namespace."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube.wait_established("compressionjobs.kompression.dev")
    values = {
        "admissionPolicy": {
            "enabled": True,
            "allowedImagePrefixes": ["registry.example.com/ml/", "ghcr.io/kompression/worker:"],
            "forbidTrustTorchScriptCode": True,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        }
    }
    objs = [o for o in template(values, release=namespace) if o["kind"].startswith("ValidatingAdmissionPolicy")]
    assert len(objs) == 2
    for obj in objs:
        kube.apply(obj)
    yield namespace
    for obj in objs:
        kube.kubectl("delete", obj["kind"], obj["metadata"]["name"], "--wait=false", check=False)


def _create(kube: Any, namespace: str, name: str, *, dry_run: bool = False, **spec: Any) -> str | None:
    """Create a quickstart job with `spec` merged in (a dry run goes through admission, nothing is
    stored); the API server's refusal message, or None."""
    doc = copy.deepcopy(QUICKSTART)
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"].update(spec)
    try:
        query = "?dryRun=All" if dry_run else ""
        kube.request("POST", f"/apis/kompression.dev/v1alpha1/namespaces/{namespace}/compressionjobs{query}", doc)
    except ApiException as exc:
        assert exc.status in (403, 422), exc.reason
        return str(json.loads(exc.reason)["message"])
    return None


def test_worker_images_outside_the_allowed_prefixes_are_refused(kube: Any, policy: str) -> None:
    # The API server picks a new policy up within a second or so: wait until it refuses.
    refusal = kube.wait(
        lambda: _create(kube, policy, "mine", dry_run=True, worker={"image": "docker.io/attacker/worker:1"}),
        "the policy to refuse an image outside its prefixes",
        timeout=30,
    )
    assert "spec.worker.image docker.io/attacker/worker:1 is not allowed on this cluster" in refusal
    assert "registry.example.com/ml/, ghcr.io/kompression/worker:" in refusal
    assert "admissionPolicy.allowedImagePrefixes" in refusal
    # a prefix is a path up to its separator, not a string prefix of the repository's name
    assert _create(kube, policy, "near", worker={"image": "registry.example.com/ml-other/worker:1"}) is not None
    assert _create(kube, policy, "allowed", worker={"image": "registry.example.com/ml/worker:2"}) is None
    assert _create(kube, policy, "pinned", worker={"image": "ghcr.io/kompression/worker:0.1.0"}) is None
    assert _create(kube, policy, "default") is None  # the operator's own image
    stored = {
        o["metadata"]["name"]
        for o in kube.request("GET", f"/apis/kompression.dev/v1alpha1/namespaces/{policy}/compressionjobs")["items"]
    }
    assert stored == {"allowed", "pinned", "default"}


def test_trusted_torchscript_code_is_refused_when_forbidden(kube: Any, policy: str) -> None:
    model = {**QUICKSTART["spec"]["model"], "format": "TorchScript", "trustTorchScriptCode": True}
    steps = [{"name": "int8", "quantize": {"method": "DynamicInt8"}}]
    refusal = kube.wait(
        lambda: _create(
            kube, policy, "scripted", dry_run=True, model=model, steps=steps, acceptance={"minCompressionRatio": 2}
        ),
        "the policy to refuse trustTorchScriptCode",
        timeout=30,
    )
    assert "spec.model.trustTorchScriptCode is not allowed on this cluster" in refusal
    assert _create(kube, policy, "mine", worker={"image": "docker.io/attacker/worker:1"}) is not None
