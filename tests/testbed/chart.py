"""The Helm chart with the real helm binary: render it and index the result; install it on the test
bed; run the operator as the chart's ServiceAccount would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from kompression.api import constants as c
from testbed.cluster import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kompression"
CRD_FILE = REPO / "crds" / "compressionjobs.kompression.dev.yaml"
SWEEP_CRD_FILE = REPO / "crds" / "compressionsweeps.kompression.dev.yaml"
CRD_FILES = (CRD_FILE, SWEEP_CRD_FILE)
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


def adopt_crd(kube: Any, release: str, namespace: str) -> None:
    """Let `release` take over the CRDs another test (or release) already installed: the documented
    adoption step (docs/install.md), since Helm refuses to overwrite objects it does not own."""
    for name in (c.CRD_NAME, c.SWEEP_CRD_NAME):
        if kube.kubectl("get", "crd", name, check=False).returncode != 0:
            continue
        kube.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        kube.kubectl(
            "annotate",
            "--overwrite",
            "crd",
            name,
            f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={namespace}",
        )


def install(
    kube: Any, helm: Any, release: str, namespace: str, *sets: str, chart: Path = CHART, verb: str = "install"
) -> list[dict[str, Any]]:
    """helm install/upgrade and return the objects of the release's manifest."""
    adopt_crd(kube, release, namespace)
    args = [verb, release, str(chart), "-n", namespace]
    for s in sets:
        args += ["--set", s]
    helm.run(*args, timeout=180)
    manifest = helm.run("get", "manifest", release, "-n", namespace).stdout
    return [d for d in yaml.safe_load_all(manifest) if d]


def release_name(prefix: str) -> str:
    """A release name unique to this run: the chart's cluster-scoped objects (ClusterRoles, their
    bindings) carry it, and other runs may share the cluster."""
    return f"{prefix}{uuid.uuid4().hex[:5]}"


@contextmanager
def installed(kube: Any, helm: Any, release: str, namespace: str, *sets: str) -> Iterator[list[dict[str, Any]]]:
    """`install`, and `helm uninstall` afterwards whatever happens."""
    try:
        yield install(kube, helm, release, namespace, *sets)
    finally:
        helm.run("uninstall", release, "-n", namespace, "--wait", timeout=180, check=False)


@contextmanager
def _namespace_deleted(kube: Any, namespace: str) -> Iterator[None]:
    try:
        yield
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def impersonating_kubeconfig(kube: Any, user: str, path: Path) -> Path:
    """A copy of the admin kubeconfig that acts as `user` (admin may impersonate anyone)."""
    config = yaml.safe_load(kube.kubeconfig.read_text())
    for entry in config["users"]:
        entry["user"]["as"] = user
    path.write_text(yaml.safe_dump(config))
    return path


def can_i_list(kube: Any, user: str, namespace: str) -> dict[str, set[str]]:
    """What `user` may do in `namespace`, as {resource.group: verbs}: the SelfSubjectRulesReview
    behind `kubectl auth can-i --list`, created while impersonating `user` (kubectl's can-i has no
    machine-readable output). Rules limited to resourceNames count as granted too."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    out = kube.kubectl("create", "--validate=false", f"--as={user}", "-o", "json", "-f", "-", input=json.dumps(review))
    result = json.loads(out.stdout)
    assert not result["status"].get("incomplete"), result["status"].get("evaluationError")
    return _from_review(result)


def _from_review(review: dict[str, Any]) -> dict[str, set[str]]:
    rules: dict[str, set[str]] = {}
    for rule in review.get("status", {}).get("resourceRules", []):
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                # kubectl's spelling: resource.group/subresource
                name, slash, sub = resource.partition("/")
                key = (f"{name}.{group}" if group else name) + slash + sub
                rules.setdefault(key, set()).update(rule["verbs"])
    return rules


def chart_env(namespace: str, values: list[str]) -> dict[str, str]:
    """The operator Deployment's literal environment, as the chart renders it."""
    args = ["template", "kompression", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    for s in values:
        args += ["--set", s]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def operator_available() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "kompression.cli", "operator", "--help"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


@contextmanager
def operator_as_chart_sa(kube: Any, helm: Any, workdir: Path, prefix: str, *sets: str) -> Iterator[Path]:
    """Install the chart without its Deployment, run `kompression operator` here with the chart's
    environment while impersonating the chart's ServiceAccount, wait until it is healthy; yield
    the operator's log file. Stops the operator and uninstalls the release afterwards."""
    import os
    import time
    import urllib.request

    from testbed.procs import free_port

    release, ns = release_name(prefix), kube.create_namespace("kompression")
    health_port = free_port()
    ports = [f"ports.metrics={free_port()}", f"ports.progress={free_port()}", f"ports.health={health_port}"]
    values = ["replicaCount=0", *sets]  # the test runs the operator itself
    log_path = workdir / f"{release}-operator.log"
    with _namespace_deleted(kube, ns), installed(kube, helm, release, ns, *values):
        kubeconfig = impersonating_kubeconfig(
            kube, f"system:serviceaccount:{ns}:{release}-kompression", workdir / f"{release}.kubeconfig"
        )
        env = {**os.environ, **chart_env(ns, [*ports, *sets]), "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": ns}
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kompression.cli", "operator"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                deadline = time.monotonic() + 60
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"operator exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise TimeoutError("the operator did not become healthy") from None
                        time.sleep(0.3)
                yield log_path
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
