"""Faults around a CompressionJob's children, on the real test bed: a foreign finalizer holding a
CR in deletion, the operator SIGKILLed between creating the ConfigMap and the Job, a Job deleted
by hand again and again, and the worker pod admitted under PodSecurity `restricted`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from kubectl import SMALL, apply_cr, conditions, cr, events, finish, jobs, pods, running_pod, status, wait_phase
from operator_process import OperatorProcess, get_json

from kompression.api.constants import ANNOTATION_RECREATION
from kompression.api.validation import parse_job
from kompression.controller.builders import build_configmap

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
MANAGED = "app.kubernetes.io/managed-by=kompression-operator"
OPERATOR_ARGS = ("--max-job-recreations=1",)


def _metric(operator: OperatorProcess, prefix: str) -> float:
    """The sum of every series of a metric."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in operator.metrics().splitlines() if line.startswith(prefix))


def _configmaps(kube: Any, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(kube, "-n", ns, "configmaps", "-l", MANAGED)["items"]
    return items


# ------------------------------------------------------------------ a foreign finalizer


def test_foreign_finalizer_on_a_cr_being_deleted(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "held", resources=SMALL)
    pod = running_pod(kube, namespace, "held")
    wait_phase(kube, namespace, "held", "Running")
    kube.kubectl(
        "-n", namespace, "patch", "compressionjob", "held", "--type=merge", "-p",
        json.dumps({"metadata": {"finalizers": ["example.com/hold"]}}),
    )  # fmt: skip
    kube.kubectl("-n", namespace, "delete", "compressionjob", "held", "--wait=false")
    assert cr(kube, namespace, "held")["metadata"].get("deletionTimestamp")

    # No hot loop: a CR that cannot go away is not a reason to write or to fail.
    writes, errors = (
        _metric(operator, "kompression_api_writes_total"),
        _metric(operator, "kompression_reconcile_errors_total"),
    )
    time.sleep(5)
    assert _metric(operator, "kompression_api_writes_total") - writes <= 1
    assert _metric(operator, "kompression_reconcile_errors_total") == errors

    # Status stays true while it is held: the worker finishes, the CR says so.
    finish(kube, pod)
    final = wait_phase(kube, namespace, "held", "Succeeded")
    assert conditions(final)["Succeeded"]["status"] == "True"

    # Its children are not remade: a Job deleted now stays deleted.
    kube.kubectl("-n", namespace, "delete", "job", "held", "--wait=true")
    time.sleep(5)
    assert jobs(kube, namespace) == []
    assert "JobRecreated" not in events(kube, namespace, "held")

    # The finalizer goes: the CR, and what garbage collection owes it, go too.
    kube.kubectl(
        "-n", namespace, "patch", "compressionjob", "held", "--type=merge", "-p",
        json.dumps({"metadata": {"finalizers": None}}),
    )  # fmt: skip
    kube.wait(lambda: not get_json(kube, "-n", namespace, "compressionjobs")["items"], "the CR gone")
    kube.wait(lambda: not _configmaps(kube, namespace), "its ConfigMap collected", timeout=60)
    assert _metric(operator, "kompression_reconcile_errors_total") == errors
    assert operator.proc is not None and operator.proc.poll() is None


# ------------------------------------------------------------------ SIGKILL between the children


def test_sigkill_after_the_configmap_before_the_job(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    """The state a SIGKILL between the two creates leaves: the ConfigMap exists, the Job does not.

    Made deterministically: the operator is SIGKILLed, the CR created, and its ConfigMap created
    exactly as the operator makes it (the same pure builder, with the CR's uid); then the
    operator starts again.
    """
    operator.kill()
    try:
        apply_cr(kube, namespace, "half", resources=SMALL)
        doc = cr(kube, namespace, "half")
        job = parse_job({k: doc[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        kube.kubectl("create", "-f", "-", input=json.dumps(build_configmap(job)))
        before = _configmaps(kube, namespace)
        assert [c["metadata"]["name"] for c in before] == ["half-job"] and jobs(kube, namespace) == []
    finally:
        operator.start()
    wait_phase(kube, namespace, "half", "Running")
    made = jobs(kube, namespace)
    assert [j["metadata"]["name"] for j in made] == ["half"]
    owners = made[0]["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"], o["uid"], o["controller"]) for o in owners] == [
        ("CompressionJob", "half", doc["metadata"]["uid"], True)
    ]
    # The ConfigMap was taken as the operator's own (AlreadyExists, owner checked), not replaced.
    assert [c["metadata"]["uid"] for c in _configmaps(kube, namespace)] == [before[0]["metadata"]["uid"]]
    assert "JobConflict" not in events(kube, namespace, "half")
    time.sleep(3)
    assert len(jobs(kube, namespace)) == 1


# ------------------------------------------------------------------ a Job deleted by hand, repeatedly


def test_a_job_deleted_again_and_again_is_recreated_up_to_the_limit(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    """The module's operator runs with --max-job-recreations=1."""
    apply_cr(kube, namespace, "cap", resources=SMALL)
    first = kube.wait(lambda: jobs(kube, namespace), "the first Job")[0]
    kube.kubectl("-n", namespace, "delete", "job", "cap", "--wait=false")
    second = kube.wait(
        lambda: [j for j in jobs(kube, namespace) if j["metadata"]["uid"] != first["metadata"]["uid"]],
        "the recreated Job",
        timeout=60,
    )[0]
    assert second["metadata"]["annotations"][ANNOTATION_RECREATION] == "1"
    kube.wait(lambda: status(kube, namespace, "cap").get("jobRecreations") == 1, "jobRecreations 1 in status")

    kube.kubectl("-n", namespace, "delete", "job", "cap", "--wait=false")
    final = wait_phase(kube, namespace, "cap", "Failed")
    conds = conditions(final)
    assert conds["Failed"]["reason"] == "RecreateLimitExceeded"
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "RecreateLimitExceeded")
    assert conds["Ready"]["status"] == "False"
    kube.wait(lambda: "RecreateLimitExceeded" in events(kube, namespace, "cap"), "a RecreateLimitExceeded event")
    kube.wait(lambda: not jobs(kube, namespace), "the deleted Job gone", timeout=60)
    time.sleep(5)
    assert jobs(kube, namespace) == [], "not made a third time"


# ------------------------------------------------------------------ PodSecurity restricted


def test_worker_pods_are_admitted_under_restricted_pod_security(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    """Enforced by kube-apiserver's built-in PodSecurity admission (on by default), when the Job
    controller creates the pod: the pod must exist and run, with no FailedCreate on its Job."""
    kube.kubectl(
        "label", "namespace", namespace,
        "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
    )  # fmt: skip
    # The control: a Job whose pod breaks the profile gets FailedCreate, so enforcement is live.
    bare = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "unrestricted", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}},
        },
    }
    kube.kubectl("create", "-f", "-", input=json.dumps(bare))
    refused = kube.wait(lambda: _failed_creates(kube, namespace, "unrestricted"), "FailedCreate on the control Job")
    assert "violates PodSecurity" in refused[0]

    apply_cr(kube, namespace, "psa", resources={**SMALL, "gpus": 1})
    pod = running_pod(kube, namespace, "psa")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    wait_phase(kube, namespace, "psa", "Running")
    assert _failed_creates(kube, namespace, "psa") == []
    assert len(pods(kube, namespace, "psa")) == 1


def _failed_creates(kube: Any, ns: str, job: str) -> list[str]:
    items = get_json(kube, "-n", ns, "events", "--field-selector", f"involvedObject.kind=Job,involvedObject.name={job}")
    return [e["message"] for e in items["items"] if e["reason"] == "FailedCreate"]
