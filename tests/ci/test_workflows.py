"""The GitHub workflows: actionlint (built from its Go module by hack/build-testbed.sh) finds
nothing, CI runs .ci/run, and the release publishes every image to the repositories the chart
and the operator default to."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from kompression.controller.settings import DEFAULT_WORKER_IMAGE, DEFAULT_WORKER_LLM_IMAGE

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"


def _load(name: str) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load((WORKFLOWS / name).read_text())
    return doc


def test_actionlint_finds_nothing() -> None:
    cache = Path(os.environ.get("KOMPRESSION_CACHE") or Path.home() / ".cache" / "kompression")
    binary = cache / "bin" / "actionlint"
    if not binary.exists():
        pytest.skip(f"no actionlint at {binary}: run hack/build-testbed.sh actionlint (make testbed-deps)")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yaml"))
    proc = subprocess.run([str(binary), *files], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_ci_entry_point_as_root() -> None:
    """.ci/run under sudo: make test builds the images and starts the real node, which need root."""
    steps = _load("ci.yaml")["jobs"]["test"]["steps"]  # type: ignore[index]
    assert {"run": "sudo --preserve-env=PATH,HOME .ci/run"} in steps


def test_the_release_publishes_every_image_where_the_chart_and_operator_look() -> None:
    release = _load("release.yaml")
    registry = release["env"]["REGISTRY"]  # type: ignore[index]
    matrix = release["jobs"]["images"]["strategy"]["matrix"]["include"]  # type: ignore[index]
    built = {m["dockerfile"] for m in matrix}
    dockerfiles = {p.relative_to(REPO).as_posix() for p in (REPO / "images").glob("*/Dockerfile")}
    assert built == dockerfiles
    published = {f"{registry}/{m['repository']}" for m in matrix}
    values = yaml.safe_load((REPO / "charts" / "kompression" / "values.yaml").read_text())
    for repository in (
        values["image"]["repository"],
        values["worker"]["image"]["repository"],
        values["worker"]["llmImage"]["repository"],
        DEFAULT_WORKER_IMAGE.rsplit(":", 1)[0],
        DEFAULT_WORKER_LLM_IMAGE.rsplit(":", 1)[0],
    ):
        assert repository in published
    platforms = release["jobs"]["images"]["steps"]  # type: ignore[index]
    build = next(s for s in platforms if s.get("id") == "build")
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["sbom"] is True and build["with"]["provenance"] == "mode=max"
