"""deploy/ (plain manifests for `kubectl apply -k deploy/`) is rendered from the chart: no drift."""

from __future__ import annotations

import yaml

from testbed.chart import CHART, CRD_FILES, KUBE_VERSION, REPO, helm

DEPLOY = REPO / "deploy"
FIX = "run hack/chart-render-deploy.sh"


def test_plain_manifests_match_the_chart() -> None:
    rendered = helm(
        "template",
        "kompression",
        str(CHART),
        "--namespace",
        "kompression-system",
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "crds.enabled=false",
    ).stdout
    committed = (DEPLOY / "kompression.yaml").read_text()
    assert committed.split("\n", 1)[1] == rendered, f"deploy/kompression.yaml is stale: {FIX}"


def test_crd_copies_match() -> None:
    for crd in CRD_FILES:
        assert (DEPLOY / "crds" / crd.name).read_text() == crd.read_text(), f"deploy/crds is stale: {FIX}"


def test_kustomization_lists_every_manifest() -> None:
    top = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert top["resources"] == ["crds", "namespace.yaml", "kompression.yaml"]
    crds = yaml.safe_load((DEPLOY / "crds" / "kustomization.yaml").read_text())
    assert crds["resources"] == [crd.name for crd in CRD_FILES]
    namespaces = {
        d["metadata"].get("namespace")
        for d in yaml.safe_load_all((DEPLOY / "kompression.yaml").read_text())
        if d and d["kind"] not in ("ClusterRole", "ClusterRoleBinding")
    }
    assert namespaces == {yaml.safe_load((DEPLOY / "namespace.yaml").read_text())["metadata"]["name"]}
