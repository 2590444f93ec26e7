"""The store keeps each CompressionJob parsed, once per spec, and views read what it holds."""

from __future__ import annotations

import copy

import pytest

from factories import manifest
from kompression.api.validation import SpecInvalid
from kompression.controller.store import Store
from kompression.controller.views import CompressionJobView, JobView

KEY = ("team-a", "resnet")


def _cr(rv: int, **spec: object) -> dict:
    doc = manifest(**spec)
    doc["metadata"]["resourceVersion"] = str(rv)
    return doc


def test_a_cr_is_parsed_once_per_spec_not_per_status_write() -> None:
    store = Store()
    store.put_cr(_cr(1))
    parsed = store.job_of(KEY)
    assert parsed.spec.resources.gpus == 1 and parsed.spec.runPolicy.priorityClassName is None
    written = _cr(2)
    written["status"] = {"phase": "Running", "observedGeneration": 1}
    store.put_cr(written)
    assert store.job_of(KEY) is parsed
    changed = _cr(3, resources={"gpus": 0}, runPolicy={"priorityClassName": "high"})
    changed["metadata"]["generation"] = 2
    store.put_cr(changed)
    assert store.job_of(KEY).spec.resources.gpus == 0
    assert store.job_of(KEY).spec.runPolicy.priorityClassName == "high"
    store.drop_cr(KEY)
    assert KEY not in store.parsed


def test_an_invalid_spec_is_kept_as_its_error() -> None:
    store = Store()
    store.put_cr(_cr(1, steps=[]))
    assert store.valid_job(KEY) is None
    with pytest.raises(SpecInvalid, match=r"spec\.steps"):
        store.job_of(KEY)


def test_a_cr_view_reads_identity_and_status_with_one_default_each() -> None:
    cr = _cr(1)
    fresh = CompressionJobView.of(cr)
    assert (fresh.generation, fresh.phase, fresh.job_recreations, fresh.finished) == (1, None, 0, False)
    cr["status"] = {
        "phase": "Failed",
        "observedGeneration": 1,
        "jobName": "resnet",
        "jobRecreations": 2,
        "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec"}],
    }
    done = CompressionJobView.of(cr)
    assert done.finished and (done.job_name, done.job_recreations, done.ready_reason) == ("resnet", 2, "InvalidSpec")
    cr["metadata"]["generation"] = 2  # a new spec runs again
    assert not CompressionJobView.of(cr).finished


def test_a_job_view_of_a_queue_reservation_and_of_a_finished_job() -> None:
    reservation = JobView.of({"metadata": {"name": "resnet"}, "spec": {}})
    assert (reservation.uid, reservation.finished, reservation.limited_on, reservation.recreation) == (
        None,
        False,
        frozenset(),
        0,
    )
    job = {
        "metadata": {"name": "resnet", "uid": "j", "annotations": {"kompression.dev/recreation": "2"}},
        "spec": {
            "template": {"spec": {"containers": [{"name": "worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
        },
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    view = JobView.of(copy.deepcopy(job))
    assert view.finished and view.recreation == 2 and "nvidia.com/gpu" in view.limited_on
