"""What the controller's cluster tests read and write with kubectl: CompressionJobs, their Jobs, pods, Events."""

from __future__ import annotations

import json
from typing import Any

from operator_process import get_json

from factories import applied
from kompression.controller.naming import planning_job_name

# The resources of a job whose pod kwok only pretends to run: no GPU, and the least CPU and memory
# the quota and the scheduler count.
SMALL: dict[str, Any] = {"gpus": 0, "cpu": "100m", "memory": "64Mi"}


def apply_cr(kube: Any, ns: str, name: str, **spec: Any) -> None:
    kube.apply(applied(name, ns, **spec))


def cr(kube: Any, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json(kube, "-n", ns, "compressionjob", name)
    return result


def status(kube: Any, ns: str, name: str) -> dict[str, Any]:
    return cr(kube, ns, name).get("status") or {}


def wait_phase(kube: Any, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        s = status(kube, ns, name)
        return s if s.get("phase") == phase else None

    result: dict[str, Any] = kube.wait(probe, f"{ns}/{name} phase {phase}", timeout=timeout)
    return result


def jobs(kube: Any, ns: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(kube, "-n", ns, "jobs")["items"]
    return items


def pods(kube: Any, ns: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(kube, "-n", ns, "pods", "-l", f"job-name={job}")["items"]
    return items


def running_pod(kube: Any, ns: str, job: str, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        live = [p for p in pods(kube, ns, job) if p["status"].get("phase") == "Running"]
        return live[0] if live else None

    result: dict[str, Any] = kube.wait(probe, f"a running pod of {ns}/{job}", timeout=timeout)
    return result


def finish(kube: Any, pod: dict[str, Any], code: int = 0, message: str | None = None) -> None:
    """What the kubelet would report of the pod's finished container: kwok ends `pod` with this exit
    code and, when given, this termination message (the worker's JSON summary)."""
    extra = [f"kompression.dev/kwok-termination-message={message}"] if message is not None else []
    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    kube.kubectl("-n", ns, "annotate", "pod", name, f"kompression.dev/kwok-exit-code={code}", *extra)


def finish_planning(kube: Any, ns: str, name: str, report: dict[str, Any] | None = None) -> None:
    """End the memory-planning pod of the LLM job `name` as `kompression plan` ends it: exit 0 and
    its report as the termination message (by default one without a plan: the job goes on as it
    would have before planning)."""
    pod = running_pod(kube, ns, planning_job_name(name))
    finish(kube, pod, 0, json.dumps(report or {"phase": "Succeeded"}))


def events(kube: Any, ns: str, name: str) -> set[str]:
    items = get_json(kube, "-n", ns, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return {e["reason"] for e in items}


def conditions(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in s.get("conditions") or []}
