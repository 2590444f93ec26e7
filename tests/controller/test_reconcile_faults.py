"""Reconcile logic under faults, against the in-memory API: the cap on recreating hand-deleted
Jobs, a CompressionJob held in deletion by a foreign finalizer, and the resync that drops what a
watch restart (410 Gone) never reported as deleted. The cluster versions are in test_faults_*.py.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from fakeapi import FakeApi

from factories import manifest
from kompression.api.constants import ANNOTATION_RECREATION
from kompression.controller.metrics import Metrics
from kompression.controller.reconcile import Reconciler
from kompression.controller.settings import Settings
from kompression.controller.store import Store

JOBS = "/apis/batch/v1/namespaces/team-a/jobs"
CRS = "/apis/kompression.dev/v1alpha1/namespaces/team-a/compressionjobs"
KEY = ("team-a", "resnet")


def _setup(settings: Settings, **meta: Any) -> tuple[FakeApi, Store, Reconciler]:
    cr = manifest()
    cr["metadata"].update(uid="cr-resnet", creationTimestamp="2025-01-01T00:00:00Z", resourceVersion="1", **meta)
    api, store = FakeApi(), Store()
    api.put(f"{CRS}/resnet", cr)
    store.put_cr(copy.deepcopy(cr))
    return api, store, Reconciler(api, settings, store, Metrics())  # type: ignore[arg-type]


def _sync(api: FakeApi, store: Store, rec: Reconciler) -> None:
    """One reconcile, with the store seeing the CR as the watch would after the write."""
    asyncio.run(rec.sync(KEY))
    store.put_cr(copy.deepcopy(api.objects[f"{CRS}/resnet"]))


def _delete_job_by_hand(api: FakeApi, store: Store) -> None:
    store.put_job(store.jobs[KEY], deleted=True)
    del api.objects[f"{JOBS}/resnet"]


def _events(api: FakeApi) -> list[str]:
    return [o["reason"] for u, o in api.objects.items() if "/events/" in u]


def test_a_job_deleted_by_hand_is_recreated_up_to_the_limit_then_the_job_fails() -> None:
    api, store, rec = _setup(Settings(max_job_recreations=2))
    _sync(api, store, rec)
    for n in (1, 2):
        _delete_job_by_hand(api, store)
        _sync(api, store, rec)
        job = api.objects[f"{JOBS}/resnet"]
        assert job["metadata"]["annotations"][ANNOTATION_RECREATION] == str(n)
        assert api.objects[f"{CRS}/resnet"]["status"]["jobRecreations"] == n
    _delete_job_by_hand(api, store)
    _sync(api, store, rec)
    assert f"{JOBS}/resnet" not in api.objects  # not made a third time
    status = api.objects[f"{CRS}/resnet"]["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Failed"
    assert conds["Failed"]["reason"] == conds["Stalled"]["reason"] == "RecreateLimitExceeded"
    assert "--max-job-recreations" in conds["Failed"]["message"]
    assert _events(api).count("JobRecreated") == 2
    assert "RecreateLimitExceeded" in _events(api)
    writes = len(api.writes)
    _sync(api, store, rec)  # terminal: no Job, no write, no loop
    assert len(api.writes) == writes


def test_the_count_survives_a_lost_status_write() -> None:
    """The count is on the Job: a status write lost after the recreation (a crash, a 409) costs
    nothing, the next reconcile writes it from the Job."""
    api, store, rec = _setup(Settings(max_job_recreations=1))
    _sync(api, store, rec)
    _delete_job_by_hand(api, store)
    _sync(api, store, rec)
    api.objects[f"{CRS}/resnet"]["status"].pop("jobRecreations")  # as if that write never happened
    store.put_cr(copy.deepcopy(api.objects[f"{CRS}/resnet"]))
    _sync(api, store, rec)
    assert api.objects[f"{CRS}/resnet"]["status"]["jobRecreations"] == 1
    _delete_job_by_hand(api, store)
    _sync(api, store, rec)
    assert api.objects[f"{CRS}/resnet"]["status"]["phase"] == "Failed"


def test_at_the_limit_a_job_the_store_has_not_seen_yet_is_not_taken_for_deleted() -> None:
    """A restarted operator may reconcile the CR before its Job's watch event arrives."""
    api, store, rec = _setup(Settings(max_job_recreations=1))
    _sync(api, store, rec)
    _delete_job_by_hand(api, store)
    _sync(api, store, rec)  # the one recreation allowed
    store.jobs.clear()  # a fresh store: the Job exists, the watch has not told yet
    _sync(api, store, rec)
    assert api.objects[f"{CRS}/resnet"]["status"]["phase"] != "Failed"
    assert store.jobs[KEY]["metadata"]["annotations"][ANNOTATION_RECREATION] == "1"


def test_a_limit_of_zero_never_recreates() -> None:
    api, store, rec = _setup(Settings(max_job_recreations=0))
    _sync(api, store, rec)
    _delete_job_by_hand(api, store)
    _sync(api, store, rec)
    assert f"{JOBS}/resnet" not in api.objects
    assert api.objects[f"{CRS}/resnet"]["status"]["phase"] == "Failed"


def test_a_cr_held_by_a_foreign_finalizer_reports_but_makes_no_children() -> None:
    api, store, rec = _setup(Settings())
    _sync(api, store, rec)
    cr = copy.deepcopy(api.objects[f"{CRS}/resnet"])
    cr["metadata"].update(deletionTimestamp="2025-01-01T00:05:00Z", finalizers=["example.com/hold"])
    api.put(f"{CRS}/resnet", cr)
    store.put_cr(copy.deepcopy(cr))
    job = copy.deepcopy(api.objects[f"{JOBS}/resnet"])
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2025-01-01T00:06:00Z"}
    store.put_job(job)
    _sync(api, store, rec)
    assert api.objects[f"{CRS}/resnet"]["status"]["phase"] == "Succeeded"  # status stays true
    _delete_job_by_hand(api, store)
    writes = len(api.writes)
    _sync(api, store, rec)
    assert f"{JOBS}/resnet" not in api.objects and len(api.writes) == writes


def test_a_cr_being_deleted_is_never_admitted_from_the_queue() -> None:
    api, store, rec = _setup(Settings(max_gpu_jobs=1), deletionTimestamp="2025-01-01T00:05:00Z")
    _sync(api, store, rec)
    assert not [u for u in api.objects if u.startswith(JOBS)]
    assert not rec.admission.waiting()


# ------------------------------------------------------------------ resync


def _obj(name: str, uid: str, rv: int, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": str(rv), **meta}}


def test_resync_drops_only_what_the_list_should_have_had() -> None:
    store = Store()
    owner = [{"kind": "CompressionJob", "name": "gone", "controller": True, "uid": "u", "apiVersion": "x/v1"}]
    for name, rv in (("kept", 5), ("gone", 6), ("young", 12)):
        store.put_cr(_obj(name, f"cr-{name}", rv))
    store.put_job(_obj("gone", "job-gone", 7, ownerReferences=owner))
    pod_owner = [{"kind": "Job", "name": "gone", "controller": True}]
    store.put_pod(_obj("gone-x1", "pod-gone", 8, ownerReferences=pod_owner))
    # The LIST was read at revision 10: "young" came by watch after it, so the LIST cannot speak for it.
    assert store.drop_unlisted_crs([_obj("kept", "cr-kept", 5)], "10", None) == [("team-a", "gone")]
    assert set(store.crs) == {("team-a", "kept"), ("team-a", "young")}
    assert store.drop_unlisted_pods([], "10", None) == [("team-a", "gone")]
    assert store.drop_unlisted_jobs([], "10", None) == [("team-a", "gone")]
    assert not store.jobs and not store.pods and not store.job_owner
    # Another namespace's LIST says nothing of team-a.
    assert store.drop_unlisted_crs([], "99", "team-b") == []


def test_resync_keeps_a_queue_reservation() -> None:
    store = Store()
    store.jobs[KEY] = {"metadata": {"name": "resnet"}, "spec": {}}  # what _admit reserves
    assert store.drop_unlisted_jobs([], "10", None) == []


# ------------------------------------------------------------------ the settings behind these


def test_watch_timeouts_reach_kopf_from_flags_and_environment(monkeypatch: Any) -> None:
    import argparse

    import kopf

    from kompression.controller.cli import register, settings_from
    from kompression.controller.handlers import configure

    monkeypatch.setenv("KOMPRESSION_WATCH_INACTIVITY_TIMEOUT", "4")
    monkeypatch.setenv("KOMPRESSION_MAX_JOB_RECREATIONS", "1")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    ours = settings_from(parser.parse_args(["operator", "--api-timeout", "5", "--resync-interval", "7"]))
    assert (ours.max_job_recreations, ours.resync_interval_s) == (1, 7.0)
    theirs = kopf.OperatorSettings()
    configure(theirs, ours)
    assert theirs.watching.inactivity_timeout == 4.0
    assert (theirs.watching.client_timeout, theirs.watching.server_timeout) == (300.0, 270)
    # kopf sends it as timeoutSeconds, which the API server parses as an integer ("270.0" is a 400).
    assert str(theirs.watching.server_timeout) == "270"
    assert theirs.networking.request_timeout == theirs.watching.connect_timeout == 5.0


def test_a_status_write_that_crosses_the_deletion_does_not_bring_the_cr_back() -> None:
    """The DELETED event is handled while the status PATCH is on its way; its answer (the object as
    it was before the deletion) must not put the CompressionJob back into the store or the gauges."""
    api, store, rec = _setup(Settings())
    write = api.merge_patch

    async def deleted_meanwhile(url: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await write(url, body)
        rec.cr_gone(KEY, "cr-resnet")
        return answer

    api.merge_patch = deleted_meanwhile  # type: ignore[method-assign]
    asyncio.run(rec.sync(KEY))
    assert KEY not in store.crs
    assert 'kompression_jobs{phase="Pending"} 0.0' in _exposition(rec)
    store.put_cr(copy.deepcopy(api.objects[f"{CRS}/resnet"]))  # a late watch event of the same object
    assert KEY not in store.crs


def _exposition(rec: Reconciler) -> str:
    from prometheus_client import generate_latest

    return generate_latest(rec.metrics.registry).decode()
