"""The chart against the real test bed: install, least privilege, CRD upgrade, uninstall.

ServiceMonitor, PodMonitor and PrometheusRule need the Prometheus Operator's CRDs, which the test
bed does not have: those templates are covered by helm template and the values schema only
(test_chart_render.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kompression.api import constants as c
from testbed.chart import CHART, can_i_list, install, installed, release_name

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

# What the operator's ServiceAccount may do in a watched namespace; anything else fails the test.
ALLOWED = {
    # Created only as a sweep's trials; deleted by the garbage collector, never by the operator.
    "compressionjobs.kompression.dev": {"get", "list", "watch", "patch", "create"},
    "compressionjobs.kompression.dev/status": {"get", "patch"},
    "compressionsweeps.kompression.dev": {"get", "list", "watch", "patch"},
    "compressionsweeps.kompression.dev/status": {"get", "patch"},
    # So that a trial's ownerReference may block its sweep's deletion.
    "compressionsweeps.kompression.dev/finalizers": {"update"},
    "jobs.batch": {"create", "get", "list", "watch", "delete"},
    # Created, and read back by name after AlreadyExists; never listed or watched.
    "configmaps": {"create", "get"},
    "pods": {"get", "list", "watch"},
    "events": {"create", "patch"},
    "events.events.k8s.io": {"create", "patch"},
    "customresourcedefinitions.apiextensions.k8s.io": {"list", "watch"},
    "tokenreviews.authentication.k8s.io": {"create"},
    "priorityclasses.scheduling.k8s.io": {"get", "list", "watch"},
    # A queued Job's Kueue Workload, read for why it waits (controller/kueue.py).
    "workloads.kueue.x-k8s.io": {"get", "list", "watch"},
    "namespaces": {"list", "watch"},
    # Only with operator.peering.enabled: the replicas' shared peering object.
    "clusterkopfpeerings.kopf.dev": {"get", "list", "watch", "patch"},
    "kopfpeerings.kopf.dev": {"get", "list", "watch", "patch"},
    # Granted to every authenticated user by Kubernetes itself.
    "selfsubjectaccessreviews.authorization.k8s.io": {"create"},
    "selfsubjectrulesreviews.authorization.k8s.io": {"create"},
    "selfsubjectreviews.authentication.k8s.io": {"create"},
}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate"}
# The operator's own permissions in a watched namespace: granted exactly, no more and no fewer.
OWN = (
    "compressionjobs.kompression.dev",
    "compressionjobs.kompression.dev/status",
    "compressionsweeps.kompression.dev",
    "compressionsweeps.kompression.dev/status",
    "compressionsweeps.kompression.dev/finalizers",
    "jobs.batch",
    "configmaps",
    "pods",
    "events",
    "events.events.k8s.io",
    "workloads.kueue.x-k8s.io",
)


def _sa(namespace: str, release: str) -> str:
    return f"system:serviceaccount:{namespace}:{release}-kompression"


def _exists(kube: Any, obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    resource = f"{obj['kind'].lower()}.{group}" if group else obj["kind"].lower()
    args = ["get", resource, obj["metadata"]["name"]]
    if obj["metadata"].get("namespace"):
        args += ["-n", obj["metadata"]["namespace"]]
    return kube.kubectl(*args, check=False).returncode == 0


def _check_least_privilege(granted: dict[str, set[str]]) -> None:
    assert "secrets" not in granted, "the operator must not read Secrets"
    assert "pods/exec" not in granted and "pods/log" not in granted
    for resource, verbs in granted.items():
        assert "*" not in resource, f"wildcard resource {resource}"
        assert not verbs & FORBIDDEN_VERBS, f"{resource}: {verbs & FORBIDDEN_VERBS}"
        assert resource in ALLOWED, f"unexpected permission on {resource}: {verbs}"
        assert verbs <= ALLOWED[resource], f"{resource}: {verbs - ALLOWED[resource]} not allowed"


def _check_exact(granted: dict[str, set[str]]) -> None:
    _check_least_privilege(granted)
    for resource in OWN:
        assert granted.get(resource) == ALLOWED[resource], f"{resource}: {granted.get(resource)}"


def test_install_least_privilege_upgrade_uninstall(kube: Any, helm: Any, tmp_path: Path) -> None:
    release, ns = release_name("kpr"), kube.create_namespace("kompression")
    team = kube.create_namespace("team")
    try:
        _install_upgrade_uninstall(kube, helm, release, ns, team=team, tmp_path=tmp_path)
    finally:
        helm.run("uninstall", release, "-n", ns, "--wait", timeout=180, check=False)


def _install_upgrade_uninstall(kube: Any, helm: Any, release: str, ns: str, *, team: str, tmp_path: Path) -> None:
    objs = install(kube, helm, release, ns)
    kinds = {o["kind"] for o in objs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole", "Service"} <= kinds
    for obj in objs:
        assert _exists(kube, obj), f"{obj['kind']} {obj['metadata']['name']} was not created"

    # Least privilege, watching every namespace: checked in an unrelated namespace.
    _check_exact(can_i_list(kube, _sa(ns, release), team))

    # Upgrade with a changed CRD: the cluster's CRD really changes.
    chart = tmp_path / "kompression"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / f"{c.CRD_NAME}.yaml"
    crd_file.write_text(
        crd_file.read_text().replace("description: Phase of the job.", "description: Phase of the job (upgraded).")
    )
    install(kube, helm, release, ns, chart=chart, verb="upgrade")
    live = json.loads(kube.kubectl("get", "crd", c.CRD_NAME, "-o", "json").stdout)
    columns = live["spec"]["versions"][0]["additionalPrinterColumns"]
    assert columns[0]["description"] == "Phase of the job (upgraded)."
    assert live["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

    # Uninstall: nothing of the operator is left, the CRD is kept (crds.keep).
    helm.run("uninstall", release, "-n", ns, "--wait", timeout=180)
    for obj in objs:
        if obj["kind"] == "CustomResourceDefinition":
            assert _exists(kube, obj), "crds.keep: the CRD survives helm uninstall"
        else:
            assert not _exists(kube, obj), f"{obj['kind']} {obj['metadata']['name']} left behind"
    install(kube, helm, release, ns)  # put the repository's CRD back for the other tests
    helm.run("uninstall", release, "-n", ns, "--wait", timeout=180)


def test_watch_namespaces_grants_nothing_elsewhere(kube: Any, helm: Any) -> None:
    release, ns = release_name("kpn"), kube.create_namespace("kompression")
    watched, other = kube.create_namespace("watched"), kube.create_namespace("other")
    with installed(
        kube, helm, release, ns, f"operator.watchNamespaces={{{watched}}}", "rbac.aggregateToDefaultRoles=false"
    ):
        _check_exact(can_i_list(kube, _sa(ns, release), watched))
        elsewhere = can_i_list(kube, _sa(ns, release), other)
        _check_least_privilege(elsewhere)
        for resource in (
            "jobs.batch",
            "configmaps",
            "pods",
            "compressionjobs.kompression.dev",
            "compressionsweeps.kompression.dev",
            "namespaces",
        ):
            assert resource not in elsewhere, f"{resource} granted outside the watched namespaces"


def test_peering_install_creates_the_peering_object(kube: Any, helm: Any) -> None:
    # Two replicas with peering: kopf's CRDs come from the chart's crds/, the peering object from a
    # template in the same install (Helm could not map it if its CRD were a template too).
    release, ns = release_name("kpp"), kube.create_namespace("kompression")
    with installed(kube, helm, release, ns, "replicaCount=2", "operator.peering.enabled=true"):
        kube.kubectl("get", "clusterkopfpeering.kopf.dev", "kompression")
        granted = can_i_list(kube, _sa(ns, release), "default")
        _check_least_privilege(granted)
        assert granted["clusterkopfpeerings.kopf.dev"] == ALLOWED["clusterkopfpeerings.kopf.dev"]
    assert kube.kubectl("get", "clusterkopfpeering.kopf.dev", "kompression", check=False).returncode != 0


def test_aggregated_roles_let_namespace_editors_use_compressionjobs(kube: Any, helm: Any) -> None:
    release, ns = release_name("kpa"), kube.create_namespace("kompression")
    team = kube.create_namespace("team")
    kube.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", team)
    kube.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view", "--user=bob", "-n", team)
    with installed(kube, helm, release, ns):

        def can(user: str, verb: str) -> bool:
            out = kube.kubectl(
                "auth", "can-i", verb, "compressionjobs.kompression.dev", f"--as={user}", "-n", team, check=False
            )
            return out.stdout.strip() == "yes"

        kube.wait(lambda: can("alice", "create"), "aggregation of the edit role", timeout=30)
        assert can("bob", "list") and not can("bob", "create")


def test_plain_manifests_apply_with_kustomize(kube: Any) -> None:
    # A server-side dry run: the API server validates every object without changing the cluster.
    # Namespaced objects need their namespace to exist, even in a dry run.
    created = kube.kubectl("create", "namespace", "kompression-system", check=False).returncode == 0
    try:
        out = kube.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(CHART.parents[1] / "deploy"))
    finally:
        if created:
            kube.kubectl("delete", "namespace", "kompression-system", "--wait=false")
    applied = set(out.stdout.split())
    for name in (
        "deployment.apps/kompression",
        "serviceaccount/kompression",
        "service/kompression",
        f"customresourcedefinition.apiextensions.k8s.io/{c.CRD_NAME}",
    ):
        assert name in applied, out.stdout
