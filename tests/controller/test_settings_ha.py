"""Operator settings from the chart's environment, worker pod placement, single-active HA."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from factories import manifest
from kompression.api.report import WorkerReport
from kompression.api.validation import parse_job
from kompression.cli import main
from kompression.controller.builders import build_job
from kompression.controller.cli import register, settings_from
from kompression.controller.leadership import Leadership, is_active
from kompression.controller.report_status import report_status
from kompression.controller.settings import Settings


def _parse(argv: list[str]) -> Settings:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return settings_from(parser.parse_args(["operator", *argv]))


def test_chart_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # The exact names and formats charts/kompression/templates/deployment.yaml sets.
    monkeypatch.setenv("KOMPRESSION_WORKER_NODE_SELECTOR", '{"node-pool": "gpu"}')
    monkeypatch.setenv("KOMPRESSION_EXTRA_TOLERATIONS", '[{"key": "dedicated", "operator": "Exists"}]')
    monkeypatch.setenv("KOMPRESSION_WORKER_RUNTIME_CLASS", "nvidia")
    monkeypatch.setenv("KOMPRESSION_LOG_LEVEL", "warning")
    monkeypatch.setenv("KOMPRESSION_SERVICE_ACCOUNT", "worker")
    monkeypatch.setenv("KOMPRESSION_PEERING", "kompression")
    monkeypatch.setenv("KOMPRESSION_MAX_GPU_JOBS", "")  # a blank value means the default
    s = _parse([])
    assert s.worker_node_selector == {"node-pool": "gpu"}
    assert s.extra_tolerations == ({"key": "dedicated", "operator": "Exists"},)
    assert (s.worker_runtime_class, s.log_level, s.service_account) == ("nvidia", "warning", "worker")
    assert s.max_gpu_jobs == 0 and s.priority is None
    assert _parse(["--log-level", "DEBUG", "--priority", "7"]).log_level == "debug"


def test_each_replica_gets_its_own_priority() -> None:
    s = Settings(peering="kompression")
    a, b = s.effective_priority("kompression-7d9f-abcde"), s.effective_priority("kompression-7d9f-fghij")
    assert a != b and a > 0 and b > 0
    assert a == s.effective_priority("kompression-7d9f-abcde")  # stable across restarts
    assert Settings(peering="kompression", priority=5).effective_priority("x") == 5
    assert Settings().effective_priority("x") == 0


def test_placement_settings_reach_the_pod(capsys: pytest.CaptureFixture[str]) -> None:
    s = Settings(
        worker_node_selector={"node-pool": "gpu", "nvidia.com/gpu.product": "other"},
        extra_tolerations=({"key": "dedicated", "operator": "Exists"},),
        worker_runtime_class="nvidia",
        pod_annotations={"kompression.dev/kwok-exit-code": "0"},
    )
    job = build_job(parse_job(manifest(resources={"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3"})), s)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "dedicated", "operator": "Exists"} in pod["tolerations"]
    assert pod["runtimeClassName"] == "nvidia"
    assert job["spec"]["template"]["metadata"]["annotations"] == {"kompression.dev/kwok-exit-code": "0"}
    cpu = build_job(parse_job(manifest(resources={"gpus": 0})), s)["spec"]["template"]["spec"]
    assert "runtimeClassName" not in cpu and cpu["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]


def _peer(priority: int, seen: datetime, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lastseen": seen.isoformat(), "lifetime": lifetime}


def test_kopf_peering_rule() -> None:
    now = datetime.now(UTC)
    assert is_active({"me": _peer(5, now)}, "me", 5, now)
    assert not is_active({"me": _peer(5, now), "other": _peer(9, now)}, "me", 5, now)
    assert not is_active({"other": _peer(5, now)}, "me", 5, now)  # equal: kopf pauses both
    assert is_active({"other": _peer(9, now - timedelta(seconds=120))}, "me", 5, now)  # dead peer
    assert is_active({"other": _peer(1, now)}, "me", 5, now)


class _PeeringApi:
    def __init__(self, status: dict[str, Any] | None) -> None:
        self.status = status

    async def get(self, url: str) -> dict[str, Any] | None:
        assert url == "/apis/kopf.dev/v1/clusterkopfpeerings/kompression"
        return None if self.status is None else {"status": self.status}


def test_leadership_flips_and_notifies() -> None:
    now = datetime.now(UTC)
    lead = Leadership("kompression", "me", 5, ())
    seen: list[bool] = []
    lead.on_change(seen.append)
    assert not lead.active  # with peering, nothing happens before the first look
    api = _PeeringApi({"me": _peer(5, now)})
    asyncio.run(lead.check(api))  # type: ignore[arg-type]
    api.status = {"me": _peer(5, now), "other": _peer(6, now)}
    asyncio.run(lead.check(api))  # type: ignore[arg-type]
    assert seen == [True, False]
    assert Leadership("", "me", 0, ()).active


def test_compact_final_report_keeps_steps() -> None:
    final = WorkerReport.model_validate({"phase": "Succeeded", "result": {"compressionRatio": 2.0}, "sequence": 9})
    patch = report_status(final, partial=True)
    assert "steps" not in patch and patch["result"]["compressionRatio"] == 2.0 and patch["currentStep"] is None


def test_render_cli_still_works_with_json_flags(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
    assert main(["render", str(example), "--worker-node-selector", '{"pool": "a"}']) == 0
    assert "pool: a" in capsys.readouterr().out
