"""One live CompressionJob per output prefix in a namespace: the policy, then the operator on the test bed."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fakeapi import FakeApi
from kubectl import apply_cr, conditions, events, finish, jobs, pods, status, wait_phase
from operator_process import OperatorProcess

from factories import manifest
from kompression.controller.metrics import Metrics
from kompression.controller.outputs import Claim, holder, overlaps, prefix_key
from kompression.controller.reconcile import Reconciler
from kompression.controller.settings import Settings
from kompression.controller.store import Store

CRS = "/apis/kompression.dev/v1alpha1/namespaces/team-a/compressionjobs"
JOBS = "/apis/batch/v1/namespaces/team-a/jobs"


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("s3://out/m/", "s3://out/m", True),
        ("s3://out/m/", "S3://out//m/", True),
        ("s3://out/m/", "s3://out/m/rejected/", True),  # inside: its files sit in the other's tree
        ("s3://out/m/", "s3://out/m2/", False),  # a common string prefix is not a common folder
        ("s3://out/m/", "gs://out/m/", False),
        ("pvc://claim/a", "pvc://claim/b", False),
        # stored before validation refused `.` and `..`: still the folder they name
        ("pvc://claim/out/", "pvc://claim/x/../out/", True),
        ("pvc://claim/out/", "pvc://claim/./out", True),
        ("pvc://claim/out/", "PVC://claim/a/b/../../out/m/", True),
        ("pvc://claim/out/", "pvc://other/../claim/out/", False),  # `..` never leaves the claim
    ],
)
def test_prefixes_overlap_by_folder(a: str, b: str, overlap: bool) -> None:
    assert overlaps(a, b) is overlap and overlaps(b, a) is overlap


def test_prefix_key_is_canonical() -> None:
    assert prefix_key("S3://b//x/y") == "s3://b/x/y/"
    assert prefix_key("pvc://claim/x/./../out") == prefix_key("pvc://claim/out/") == "pvc://claim/out/"


def test_the_started_job_holds_then_the_oldest() -> None:
    old = Claim("old", "s3://o/m/", "2025-01-01T00:00:01Z", started=False)
    new = Claim("new", "s3://o/m/", "2025-01-01T00:00:02Z", started=False)
    running = Claim("running", "s3://o/m/sub/", "2025-01-01T00:00:03Z", started=True)
    other = Claim("other", "s3://o/n/", "2025-01-01T00:00:00Z", started=True)
    assert holder(new, [old, other]) == old
    assert holder(old, [new, other]) is None
    assert holder(old, [new, running]) == running  # a job already publishing keeps its prefix
    assert holder(Claim("x", "s3://o/x/", "2025-01-01T00:00:09Z", False), [old, new, running, other]) is None


def test_reconcile_holds_the_second_job_back_until_the_first_finishes() -> None:
    api, store = FakeApi(), Store()
    for i, name in enumerate(("first", "second")):
        doc = manifest(name=name, output={"uri": "s3://out/shared/"})
        doc["metadata"].update(uid=f"cr-{name}", creationTimestamp=f"2025-01-01T00:00:0{i}Z", resourceVersion="1")
        api.put(f"{CRS}/{name}", doc)
        store.put_cr(copy.deepcopy(doc))
    rec = Reconciler(api, Settings(), store, Metrics())  # type: ignore[arg-type]

    async def sync(name: str) -> None:
        await rec.sync(("team-a", name))
        await asyncio.gather(*rec.status._events)  # the Event is posted in the background

    asyncio.run(sync("second"))  # the younger one first: it must still wait for the older
    asyncio.run(sync("first"))
    assert [u for u in api.objects if u.startswith(JOBS)] == [f"{JOBS}/first"]
    cond = {c["type"]: c for c in api.objects[f"{CRS}/second"]["status"]["conditions"]}
    assert (cond["Stalled"]["status"], cond["Stalled"]["reason"]) == ("True", "OutputPrefixInUse")
    assert "first" in cond["Stalled"]["message"] and "s3://out/shared/" in cond["Stalled"]["message"]
    assert any(u.endswith("/events") for _, u in api.writes)
    done = copy.deepcopy(api.objects[f"{JOBS}/first"])
    done["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    store.put_job(done)
    asyncio.run(sync("second"))
    assert f"{JOBS}/second" in api.objects


# --------------------------------------------------------------------------------------------
# the operator


def test_second_live_job_on_one_prefix_waits_with_a_condition_and_an_event(
    kube: Any, namespace: str, operator: OperatorProcess
) -> None:
    shared = {"uri": "s3://out/shared/"}
    apply_cr(kube, namespace, "first", output=shared)
    wait_phase(kube, namespace, "first", "Running")
    apply_cr(kube, namespace, "second", output={"uri": "s3://out/shared/nested/"})
    apply_cr(kube, namespace, "elsewhere", output={"uri": "s3://out/shared-not/"})
    kube.wait(
        lambda: conditions(status(kube, namespace, "second")).get("Stalled", {}).get("reason") == "OutputPrefixInUse",
        "second Stalled with OutputPrefixInUse",
        timeout=60,
    )
    second = status(kube, namespace, "second")
    assert second["phase"] == "Pending"
    assert "first" in conditions(second)["Stalled"]["message"]
    kube.wait(lambda: "OutputPrefixInUse" in events(kube, namespace, "second"), "an OutputPrefixInUse event")
    wait_phase(kube, namespace, "elsewhere", "Running")  # another prefix is not held back
    assert sorted(j["metadata"]["name"] for j in jobs(kube, namespace)) == ["elsewhere", "first"]
    # The holder finishes: the waiting job starts on its own.
    (pod,) = pods(kube, namespace, "first")
    finish(kube, pod)
    wait_phase(kube, namespace, "first", "Succeeded")
    wait_phase(kube, namespace, "second", "Running")
    assert conditions(status(kube, namespace, "second"))["Stalled"]["status"] == "False"


def test_deleting_the_holder_frees_its_prefix(kube: Any, namespace: str, operator: OperatorProcess) -> None:
    apply_cr(kube, namespace, "holder", output={"uri": "s3://out/one/"})
    wait_phase(kube, namespace, "holder", "Running")
    apply_cr(kube, namespace, "waiter", output={"uri": "s3://out/one/"})
    kube.wait(
        lambda: conditions(status(kube, namespace, "waiter")).get("Ready", {}).get("reason") == "OutputPrefixInUse",
        "waiter held back",
        timeout=60,
    )
    kube.kubectl("-n", namespace, "delete", "compressionjob", "holder", "--wait=false")
    wait_phase(kube, namespace, "waiter", "Running", timeout=90)
