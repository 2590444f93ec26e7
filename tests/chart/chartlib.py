"""Helpers shared by the chart tests: render the chart with the real helm binary and index the result."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from testbed.cluster import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kompression"
CRD_FILE = REPO / "crds" / "compressionjobs.kompression.dev.yaml"
KUBE_VERSION = "1.31.0"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm with private config dirs, so the developer's repositories are never touched."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home, "HELM_DATA_HOME": home}
        proc = subprocess.run(
            [str(binary("helm")), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {proc.stderr}")
    return proc


def template(
    values: dict[str, Any] | None = None, release: str = "kompression", namespace: str = "kompression-system"
) -> list[dict[str, Any]]:
    """Render the chart with `values` and return the parsed objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        out = helm(
            "template", release, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, "-f", f.name
        ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def template_error(values: dict[str, Any]) -> str:
    """Render `values` that must be rejected and return helm's error."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        proc = helm("template", "kompression", str(CHART), "--kube-version", KUBE_VERSION, "-f", f.name, check=False)
    assert proc.returncode != 0, "helm template accepted values it should reject"
    return proc.stderr


def find(
    objs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    return [
        o
        for o in objs
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}
