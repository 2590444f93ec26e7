"""The reconcile logic against an in-memory API: one Job per generation, conflicts, queueing, writes."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from fakeapi import FakeApi

from factories import manifest
from kompression.controller.kubeapi import ApiError
from kompression.controller.metrics import Metrics
from kompression.controller.reconcile import Reconciler
from kompression.controller.settings import Settings
from kompression.controller.store import Store

JOBS = "/apis/batch/v1/namespaces/team-a/jobs"
CRS = "/apis/kompression.dev/v1alpha1/namespaces/team-a/compressionjobs"


def _cr(name: str = "resnet", created: str = "2025-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    doc = manifest(name=name, **spec)
    doc["metadata"].update(uid=f"cr-{name}", creationTimestamp=created, resourceVersion="1")
    return doc


def _setup(*crs: dict[str, Any], settings: Settings | None = None) -> tuple[FakeApi, Store, Reconciler]:
    api, store = FakeApi(), Store()
    for cr in crs:
        api.put(f"{CRS}/{cr['metadata']['name']}", cr)
        store.put_cr(copy.deepcopy(cr))
    return api, store, Reconciler(api, settings or Settings(), store, Metrics())  # type: ignore[arg-type]


def _jobs(api: FakeApi) -> list[str]:
    return [u for u in api.objects if u.startswith(JOBS)]


def _status(api: FakeApi, name: str = "resnet") -> dict[str, Any]:
    return api.objects[f"{CRS}/{name}"].get("status", {})


def test_creates_configmap_and_job_once_even_after_losing_its_memory() -> None:
    api, _, rec = _setup(_cr())
    asyncio.run(rec.sync(("team-a", "resnet")))
    assert _jobs(api) == [f"{JOBS}/resnet"]
    assert _status(api)["phase"] == "Pending"
    assert _status(api)["jobName"] == "resnet"
    # a restarted operator knows nothing: AlreadyExists plus the owner check makes it a no-op
    _, fresh_store, fresh = _setup()
    fresh_store.put_cr(copy.deepcopy(api.objects[f"{CRS}/resnet"]))
    fresh.api = api  # type: ignore[assignment]
    asyncio.run(fresh.sync(("team-a", "resnet")))
    assert _jobs(api) == [f"{JOBS}/resnet"]
    assert fresh_store.jobs[("team-a", "resnet")]["metadata"]["uid"] == "uid-resnet"


def test_an_architecture_the_worker_would_refuse_fails_before_any_job() -> None:
    """A loader that imports a folder's Python never gets a pod: InvalidSpec, no Job, no ConfigMap."""
    model = {
        "uri": "s3://models/w.safetensors",
        "format": "SafeTensors",
        "inputs": [{"name": "x", "shape": [-1, 3, 32, 32]}],
        "architecture": "transformers.dynamic_module_utils:get_class_from_dynamic_module",
        "architectureArguments": {"class_reference": "payload.Net", "repo_id": "/mnt/pvc/models/planted"},
    }
    api, _, rec = _setup(_cr(model=model), settings=Settings(architecture_modules=("transformers",)))
    asyncio.run(rec.sync(("team-a", "resnet")))
    assert not [u for u in api.objects if "/jobs/" in u or "/configmaps/" in u]
    status = _status(api)
    assert status["phase"] == "Failed"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "InvalidSpec"
    assert (
        "spec.model.architecture: transformers.dynamic_module_utils is not one of the transformers" in ready["message"]
    )


def test_foreign_job_is_not_adopted() -> None:
    api, _, rec = _setup(_cr())
    api.put(f"{JOBS}/resnet", {"metadata": {"name": "resnet", "uid": "someone-else"}})
    asyncio.run(rec.sync(("team-a", "resnet")))
    conds = {c["type"]: c for c in _status(api)["conditions"]}
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "JobConflict")
    assert api.objects[f"{JOBS}/resnet"]["metadata"]["uid"] == "someone-else"
    assert any(u.endswith("/events") for _, u in api.writes)


def test_job_status_drives_phase_and_a_finished_job_is_not_recreated() -> None:
    api, store, rec = _setup(_cr())
    key = ("team-a", "resnet")
    asyncio.run(rec.sync(key))
    job = copy.deepcopy(api.objects[f"{JOBS}/resnet"])
    job["status"] = {
        "conditions": [{"type": "Complete", "status": "True"}],
        "startTime": "2025-01-01T00:00:01Z",
        "completionTime": "2025-01-01T00:01:00Z",
    }
    store.put_job(job)
    asyncio.run(rec.sync(key))
    status = _status(api)
    assert status["phase"] == "Succeeded"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"
    writes = len(api.writes)
    store.put_job(job, deleted=True)  # ttlSecondsAfterFinished removes it
    asyncio.run(rec.sync(key))
    assert len(api.writes) == writes  # nothing to do: no new Job, no status write


def test_a_job_deleted_before_the_end_is_recreated_with_a_warning() -> None:
    api, store, rec = _setup(_cr())
    key = ("team-a", "resnet")
    asyncio.run(rec.sync(key))
    store.put_job(store.jobs[key], deleted=True)
    del api.objects[f"{JOBS}/resnet"]
    asyncio.run(rec.sync(key))
    assert _jobs(api) == [f"{JOBS}/resnet"]
    events = [o for u, o in api.objects.items() if "/events/" in u]
    assert {e["reason"] for e in events} == {"JobCreated", "JobRecreated"}


def test_queue_limits_positions_and_release() -> None:
    a = _cr("a", "2025-01-01T00:00:01Z", resources={"gpus": 1})
    b = _cr("b", "2025-01-01T00:00:02Z", resources={"gpus": 1})
    c = _cr("c", "2025-01-01T00:00:03Z", resources={"gpus": 1})
    api, store, rec = _setup(a, b, c, settings=Settings(max_gpu_jobs=1))
    for n in "cba":
        asyncio.run(rec.sync(("team-a", n)))
    assert _jobs(api) == [f"{JOBS}/a"]
    assert (_status(api, "b")["phase"], _status(api, "b")["queuePosition"]) == ("Queued", 1)
    assert _status(api, "c")["queuePosition"] == 2
    # a's Job finishes: b is admitted
    done = copy.deepcopy(store.jobs[("team-a", "a")])
    done["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    store.put_job(done)
    asyncio.run(rec.sync(("team-a", "b")))
    asyncio.run(rec.sync(("team-a", "c")))
    assert sorted(_jobs(api)) == [f"{JOBS}/a", f"{JOBS}/b"]
    assert _status(api, "c")["queuePosition"] == 1


def test_writes_from_creation_to_success() -> None:
    api, store, rec = _setup(_cr())
    key = ("team-a", "resnet")
    asyncio.run(rec.sync(key))
    job = copy.deepcopy(store.jobs[key])
    pod = {
        "metadata": {
            "name": "resnet-x",
            "namespace": "team-a",
            "creationTimestamp": "2025-01-01T00:00:01Z",
            "ownerReferences": [{"kind": "Job", "name": "resnet", "controller": True}],
        },
        "status": {"phase": "Running"},
    }
    store.put_pod(pod)
    asyncio.run(rec.sync(key))
    asyncio.run(rec.sync(key))  # a repeated event changes nothing
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    store.put_job(job)
    asyncio.run(rec.sync(key))
    assert _status(api)["phase"] == "Succeeded"
    assert len(api.writes) <= 8, api.writes


def test_status_write_races_a_concurrent_writer_with_409_and_keeps_its_conditions() -> None:
    api, store, rec = _setup(_cr())
    key = ("team-a", "resnet")

    async def go() -> None:
        await rec.sync(key)
        # Another controller adds its own condition; the operator's store has not seen it yet.
        obj = api.objects[f"{CRS}/resnet"]
        obj["status"]["conditions"].append({"type": "Audited", "status": "True", "reason": "Checked"})
        obj["metadata"]["resourceVersion"] = "999"
        store.jobs[key]["status"] = {
            "startTime": "2025-01-01T00:00:01Z",
            "completionTime": "2025-01-01T00:00:09Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        }
        await rec.sync(key)  # conditions computed from a stale read: refused (409), then re-read
        assert rec.metrics.status_conflicts._value.get() == 1
        await rec.sync(key)

    asyncio.run(go())
    types = [c["type"] for c in _status(api)["conditions"]]
    assert "Audited" in types and "Ready" in types
    assert _status(api)["startTime"] == "2025-01-01T00:00:01Z"
    assert _status(api)["phase"] == "Succeeded"


def test_creating_in_a_terminating_namespace_is_recognised_as_no_fault() -> None:
    body = (
        '{"kind":"Status","status":"Failure","message":"configmaps \\"x-job\\" is forbidden: unable to create new '
        'content in namespace t-1 because it is being terminated","reason":"Forbidden","details":{"causes":'
        '[{"reason":"NamespaceTerminating"}]},"code":403}'
    )
    assert ApiError(403, body).namespace_terminating
    assert not ApiError(
        403, '{"message":"jobs is forbidden: User \\"sa\\" cannot create resource"}'
    ).namespace_terminating
