"""spec.stepCache through `kompression run`: a job starts after the longest prefix of its steps an
earlier job published, reports it as reused, and ends where a run without the cache ends; the
baseline is measured once; a changed option or seed shares nothing past it; a tampered entry is not used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from factories import job, save_tiny, write_job
from kompression.api.constants import ExitCode
from kompression.api.validation import SpecInvalid, parse_job
from kompression.cli import main
from kompression.worker.model import DataSets
from kompression.worker.step_cache import open_cache
from kompression.worker.storage import publish

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("one_thread")]

CACHE = "file://cache/"
PRUNE: dict[str, Any] = {
    "name": "prune",
    "prune": {"method": "L1Structured", "sparsity": 0.5, "fineTune": {"epochs": 1}},
}
DISTILL = {"name": "kd", "distill": {"student": {"fromStep": "prune"}, "epochs": 1, "batchSize": 32}}
DATA = {"evaluation": {"builtin": "Digits"}, "training": {"builtin": "Digits"}, "calibration": {"builtin": "Digits"}}


def quantize(method: str) -> dict[str, Any]:
    return {"name": "int8", "quantize": {"method": method}}


def run(folder: Path, name: str, steps: list[dict[str, Any]], *, cache: bool = True, seed: int = 0) -> dict[str, Any]:
    """Run the job with `kompression run` and return its published report.json."""
    extra: dict[str, Any] = {"data": DATA}
    if cache:
        extra["stepCache"] = {"uri": CACHE}
    body = job("file://model.pt2", f"file://out/{name}/", steps, **extra)
    manifest = write_job(folder / f"{name}.yaml", body)
    assert main(["run", str(manifest), "--progress", "json", "--seed", str(seed)]) == ExitCode.OK
    fetched = publish.fetch_published(f"file://out/{name}/", folder / "fetched" / name)
    report: dict[str, Any] = json.loads(fetched["report.json"].read_text())
    report["markdown"] = fetched["report.md"].read_text()
    return report


def figures(report: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """What each step measured that does not depend on timing."""
    return [
        (s["name"], s["metrics"]["accuracy"], s["metrics"]["sizeBytes"], s["metrics"]["parameters"])
        for s in report["steps"]
    ]


def reused_notes(report: dict[str, Any]) -> list[str]:
    return [m["name"] for m in report["details"]["models"] if m["notes"].get("stepCache") == "reused"]


def entry(folder: Path, step: str) -> Path:
    """The cache folder holding the model after `step`, found by its manifest."""
    for manifest in (folder / "cache").glob("*/manifest.json"):
        if json.loads(manifest.read_text())["stepCache"]["name"] == step:
            return manifest.parent
    raise AssertionError(f"no cache entry for {step}")


def test_a_job_starts_after_the_prefix_an_earlier_one_published_and_ends_where_a_fresh_run_does(
    workdir: Path,
) -> None:
    save_tiny(workdir / "model.pt2")
    first = run(workdir, "dynamic", [PRUNE, DISTILL, quantize("DynamicInt8")])
    assert first["details"]["stepCache"] == {
        "uri": CACHE,
        "baselineReused": False,
        "reusedSteps": 0,
        "executedSteps": 3,
    }
    shared = run(workdir, "static", [PRUNE, DISTILL, quantize("StaticInt8")])
    assert shared["details"]["stepCache"] == {
        "uri": CACHE,
        "baselineReused": True,
        "reusedSteps": 2,
        "executedSteps": 1,
    }
    assert reused_notes(shared) == ["prune", "kd"]
    assert "| step cache | 2 of 3 step executions reused, baseline reused |" in shared["markdown"]
    # The prefix read back from the cache leads to the very model a run without the cache makes.
    fresh = run(workdir, "fresh", [PRUNE, DISTILL, quantize("StaticInt8")], cache=False)
    assert "stepCache" not in fresh["details"] and "step cache" not in fresh["markdown"]
    assert figures(shared) == figures(fresh)
    assert figures(shared)[:2] == figures(first)[:2]
    assert shared["result"]["baseline"]["accuracy"] == fresh["result"]["baseline"]["accuracy"]

    # The same job again runs no step at all, and still publishes its model.
    again = run(workdir, "dynamic-again", [PRUNE, DISTILL, quantize("DynamicInt8")])
    assert again["details"]["stepCache"]["reusedSteps"] == 3 and again["details"]["stepCache"]["executedSteps"] == 0
    assert figures(again) == figures(first)
    assert any(a["kind"] == "ONNXModel" for a in again["artifacts"])


def test_a_changed_option_or_seed_shares_only_the_steps_before_it(workdir: Path) -> None:
    save_tiny(workdir / "model.pt2")
    run(workdir, "first", [PRUNE, quantize("DynamicInt8")])
    sparser: dict[str, Any] = {"name": "prune", "prune": {**PRUNE["prune"]}}
    sparser["prune"]["sparsity"] = 0.25
    changed = run(workdir, "sparser", [sparser, quantize("DynamicInt8")])
    assert changed["details"]["stepCache"] == {
        "uri": CACHE,
        "baselineReused": True,
        "reusedSteps": 0,
        "executedSteps": 2,
    }
    # An option written out at its default is the same step as one left to the default.
    spelled: dict[str, Any] = {"name": "prune", "prune": {**PRUNE["prune"]}}
    spelled["prune"]["fineTune"] = {"epochs": 1, "learningRate": 1e-3}
    same = run(workdir, "spelled", [spelled, quantize("DynamicInt8")])
    assert same["details"]["stepCache"]["reusedSteps"] == 2
    # Training steps depend on the seed: another seed reuses only the baseline.
    seeded = run(workdir, "seeded", [PRUNE, quantize("DynamicInt8")], seed=1)
    assert seeded["details"]["stepCache"] == {
        "uri": CACHE,
        "baselineReused": True,
        "reusedSteps": 0,
        "executedSteps": 2,
    }


def test_a_tampered_entry_is_not_used_and_is_published_anew(workdir: Path) -> None:
    save_tiny(workdir / "model.pt2")
    run(workdir, "first", [PRUNE, quantize("DynamicInt8")])
    prune_entry = entry(workdir, "prune")
    model = next((prune_entry / "runs").glob("*/model.pt2"))
    model.write_bytes(model.read_bytes()[:-16] + b"\0" * 16)  # same size, other bytes: the digest catches it
    second = run(workdir, "second", [PRUNE, quantize("DynamicInt8")])
    assert second["details"]["stepCache"] == {
        "uri": CACHE,
        "baselineReused": True,
        "reusedSteps": 0,
        "executedSteps": 2,
    }
    third = run(workdir, "third", [PRUNE, quantize("DynamicInt8")])
    assert third["details"]["stepCache"]["reusedSteps"] == 2  # the second run's copy replaced the broken one


def test_a_step_cache_the_storage_cannot_serve_is_refused_naming_the_field() -> None:
    body = job("file://m.pt2", "file://o/", stepCache={"uri": "https://example.com/cache/"})
    with pytest.raises(SpecInvalid, match=r"spec\.stepCache\.uri: expected a storage URI"):
        parse_job(body)


def test_a_job_on_several_ranks_leaves_the_cache_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = job("file://m.pt2", "file://o/", stepCache={"uri": f"file://{tmp_path}/cache/"})
    parsed = parse_job(body)
    save_tiny(tmp_path / "m.pt2")
    assert open_cache(parsed, tmp_path / "m.pt2", DataSets(), "cpu", tmp_path) is not None
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it on each rank
    assert open_cache(parsed, tmp_path / "m.pt2", DataSets(), "cpu", tmp_path) is None
