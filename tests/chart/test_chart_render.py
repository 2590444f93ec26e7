"""`helm lint` and `helm template` with several values sets, each rendered object checked."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from testbed.chart import CHART, CRD_FILES, REPO, env_of, find, helm, one, template, template_error

FULL = "kompression"
NAMESPACED_KINDS = {
    "ServiceAccount",
    "Service",
    "Deployment",
    "ConfigMap",
    "NetworkPolicy",
    "ServiceMonitor",
    "PodMonitor",
    "PrometheusRule",
    "Role",
    "RoleBinding",
}


def test_lint_strict() -> None:
    helm("lint", "--strict", str(CHART))


def test_versions_match_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["version"] == project["version"]


def test_crd_copies_have_no_drift() -> None:
    for crd in CRD_FILES:
        copy = CHART / "files" / "crds" / crd.name
        assert copy.read_text() == crd.read_text(), f"run: cp {crd.relative_to(REPO)} {copy.relative_to(REPO)}"


def test_defaults_render_the_operator() -> None:
    objs = template()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "NetworkPolicy",
        ]
    )
    for obj in objs:
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "kompression"
        if obj["kind"] in NAMESPACED_KINDS:
            assert obj["metadata"]["namespace"] == "kompression-system"


def test_templated_crds_are_the_generated_crds_plus_labels_and_keep() -> None:
    for crd_file in CRD_FILES:
        generated = yaml.safe_load(crd_file.read_text())
        name = generated["metadata"]["name"]
        crd = one(template(), "CustomResourceDefinition", name)
        assert crd["spec"] == generated["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
        unkept = one(template({"crds": {"keep": False}}), "CustomResourceDefinition", name)
        assert "annotations" not in unkept["metadata"]
    assert not find(template({"crds": {"enabled": False}}), "CustomResourceDefinition")


def test_deployment_is_restricted_and_probed() -> None:
    dep = one(template(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kompression/operator:0.1.0"
    assert container["args"][0] == "operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "metrics": 8080,
        "progress": 8081,
        "health": 8082,
    }
    assert container["resources"]["limits"]["memory"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_worker_defaults_reach_the_operator() -> None:
    values = {
        "worker": {
            "image": {"repository": "r.example/worker", "digest": "sha256:" + "a" * 64},
            "gpuResourceName": "nvidia.com/mig-1g.10gb",
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "runtimeClassName": "nvidia",
            "s3Endpoint": "http://minio.minio.svc:9000",
            "storageRetrySeconds": 15,
        },
        "operator": {"maxGpuJobs": 4, "watchNamespaces": ["ml"]},
    }
    env = env_of(one(template(values, namespace="ops"), "Deployment"))
    assert env["KOMPRESSION_WORKER_IMAGE"] == "r.example/worker@sha256:" + "a" * 64
    assert env["KOMPRESSION_GPU_RESOURCE"] == "nvidia.com/mig-1g.10gb"
    assert json.loads(env["KOMPRESSION_WORKER_NODE_SELECTOR"]) == {"pool": "gpu"}
    assert json.loads(env["KOMPRESSION_EXTRA_TOLERATIONS"])[0]["key"] == "nvidia.com/gpu"
    assert env["KOMPRESSION_WORKER_RUNTIME_CLASS"] == "nvidia"
    assert env["KOMPRESSION_S3_ENDPOINT"] == "http://minio.minio.svc:9000"
    assert env["KOMPRESSION_STORAGE_RETRY_SECONDS"] == "15"
    assert env["KOMPRESSION_MAX_GPU_JOBS"] == "4"
    assert env["KOMPRESSION_NAMESPACES"] == "ml"
    assert env["KOMPRESSION_PROGRESS_BASE_URL"] == "http://kompression.ops.svc:8081"


def test_architecture_allow_list_reaches_the_operator() -> None:
    from kompression.api.architectures import DEFAULT_ARCHITECTURE_MODULES, parse_modules

    default = env_of(one(template({}), "Deployment"))["KOMPRESSION_ARCHITECTURE_MODULES"]
    assert parse_modules(default) == DEFAULT_ARCHITECTURE_MODULES  # the chart's default is the code's
    custom = template({"worker": {"architectureModules": ["torchvision.models", "acme.zoo"]}})
    assert env_of(one(custom, "Deployment"))["KOMPRESSION_ARCHITECTURE_MODULES"] == "torchvision.models,acme.zoo"
    assert "does not match pattern" in template_error({"worker": {"architectureModules": ["os; rm -rf"]}})


def test_admission_policy_is_off_by_default_and_pins_worker_images_when_on() -> None:
    assert not find(template(), "ValidatingAdmissionPolicy")
    assert not find(template(), "ValidatingAdmissionPolicyBinding")
    values = {"admissionPolicy": {"enabled": True, "allowedImagePrefixes": ["registry.example.com/ml/"]}}
    objs = template(values)
    policy, binding = one(objs, "ValidatingAdmissionPolicy"), one(objs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["kompression.dev"],
        ["compressionjobs"],
        ["CREATE"],
    )
    (images,) = policy["spec"]["validations"]
    assert '["registry.example.com/ml/"].exists(p, variables.image.startsWith(p))' in images["expression"]
    assert "admissionPolicy.allowedImagePrefixes" in images["messageExpression"]
    strict = template({"admissionPolicy": {**values["admissionPolicy"], "forbidTrustTorchScriptCode": True}})
    _, torchscript = one(strict, "ValidatingAdmissionPolicy")["spec"]["validations"]
    assert "trustTorchScriptCode" in torchscript["expression"]
    # "registry.example.com/ml" would also admit registry.example.com/ml-other/...
    bare = {"admissionPolicy": {"enabled": True, "allowedImagePrefixes": ["registry.example.com/ml"]}}
    assert "does not match pattern" in template_error(bare)


def test_watch_namespaces_use_roles_not_cluster_wide_grants() -> None:
    objs = template({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert {r["metadata"]["namespace"] for r in find(objs, "Role")} == {"team-a", "team-b"}
    assert {r["metadata"]["namespace"] for r in find(objs, "RoleBinding")} == {"team-a", "team-b"}
    cluster = one(objs, "ClusterRole", f"{FULL}-cluster")
    cluster_resources = {res for rule in cluster["rules"] for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "tokenreviews", "priorityclasses"}
    assert not find(objs, "ClusterRole", FULL)


def test_rbac_rules_each_carry_a_reason() -> None:
    text = (CHART / "templates" / "_helpers.tpl").read_text() + (CHART / "templates" / "rbac.yaml").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            previous = lines[i - 1].strip()
            if previous.startswith("{{-"):
                previous = lines[i - 2].strip()
            assert previous.startswith("#"), f"rule without a comment: {line.strip()} (line {i + 1})"


def test_peering_and_replicas() -> None:
    assert "needs operator.peering.enabled" in template_error({"replicaCount": 2})
    objs = template({"replicaCount": 2, "operator": {"peering": {"enabled": True}}})
    assert one(objs, "Deployment")["spec"]["replicas"] == 2
    assert env_of(one(objs, "Deployment"))["KOMPRESSION_PEERING"] == "kompression"
    cluster_rules = one(objs, "ClusterRole", f"{FULL}-cluster")["rules"]
    assert any("clusterkopfpeerings" in r["resources"] for r in cluster_rules)
    assert one(objs, "ClusterKopfPeering", "kompression")  # the operator refuses to run without it
    assert not find(template(), "ClusterKopfPeering")
    scoped = template({"replicaCount": 2, "operator": {"peering": {"enabled": True}, "watchNamespaces": ["a", "b"]}})
    assert {o["metadata"]["namespace"] for o in find(scoped, "KopfPeering", "kompression")} == {"a", "b"}
    assert not find(scoped, "ClusterKopfPeering")
    # kopf's peering CRDs ship in crds/, which Helm installs before the templates.
    assert {p.name for p in (CHART / "crds").glob("*.yaml")} == {
        "clusterkopfpeerings.kopf.dev.yaml",
        "kopfpeerings.kopf.dev.yaml",
    }


def test_monitoring_objects() -> None:
    objs = template(
        {
            "prometheus": {
                "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "rule": {"enabled": True},
            },
            "grafana": {"dashboard": {"enabled": True}},
        }
    )
    monitor = one(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = one(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    alerts = {r["alert"] for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"KompressionJobsFailing", "KompressionQueueStuck", "KompressionOperatorDown"}
    dashboard = json.loads(one(objs, "ConfigMap")["data"]["kompression.json"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("phase", "duration", "compression ratio", "accuracy delta"):
        assert topic in titles
    pod_monitor = one(template({"prometheus": {"podMonitor": {"enabled": True}}}), "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_service_monitor_and_pod_monitor_are_exclusive() -> None:
    err = template_error({"prometheus": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}})
    assert "prometheus" in err


def _progress_from(values: dict[str, object]) -> list[dict[str, object]]:
    policy = one(template(values), "NetworkPolicy")
    (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "progress"]
    peers: list[dict[str, object]] = rule["from"]
    return peers


def test_network_policy() -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    policy = one(template({"networkPolicy": {"metricsFrom": [peer]}}), "NetworkPolicy")  # on by default
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ingress = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert set(ingress) == {"metrics", "progress"} and ingress["metrics"] == [peer]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 443, 6443}
    assert not find(template({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_network_policy_admits_progress_only_from_the_operators_worker_pods() -> None:
    builders = pytest.importorskip("kompression.controller.builders")
    from kompression.api.validation import parse_job
    from kompression.controller.settings import Settings

    examples = sorted((REPO / "examples").glob("*.yaml"))
    doc = yaml.safe_load(examples[0].read_text())
    doc["metadata"].update(namespace="team-a", uid="0b1c-uid", generation=1)
    pod_labels = builders.build_job(parse_job(doc), Settings())["spec"]["template"]["metadata"]["labels"]

    (peer,) = _progress_from({})
    selected = peer["podSelector"]["matchLabels"]  # type: ignore[index]
    assert selected and selected.items() <= pod_labels.items(), "the worker pods must match the selector"
    assert selected["app.kubernetes.io/component"] == "worker"
    assert peer["namespaceSelector"] == {}  # every namespace is watched

    (peer,) = _progress_from({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert peer["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    }
    custom = {"podSelector": {"matchLabels": {"app": "gateway"}}}
    assert _progress_from({"networkPolicy": {"progressFrom": [custom]}}) == [custom]


@pytest.mark.parametrize(
    "values",
    [
        {"unknown": 1},
        {"worker": {"gpuResourceName": "not a resource"}},
        {"operator": {"watchNamespaces": ["Bad_Name"]}},
        {"image": {"repository": "x", "digest": "latest"}},
        {"networkPolicy": {"enabled": True, "apiServerPorts": [0]}},
    ],
)
def test_schema_rejects_bad_values(values: dict[str, object]) -> None:
    assert "values don't meet the specifications of the schema" in template_error(values)


def test_alerts_and_dashboard_use_metrics_the_operator_exports() -> None:
    metrics = pytest.importorskip("kompression.controller.metrics")
    suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}
    exported = {
        family.name + suffix
        for family in metrics.Metrics().registry.collect()
        for suffix in ("", *suffixes.get(family.type, ()))
    }
    objs = template({"prometheus": {"rule": {"enabled": True}}, "grafana": {"dashboard": {"enabled": True}}})
    text = json.dumps(one(objs, "PrometheusRule")["spec"]) + one(objs, "ConfigMap")["data"]["kompression.json"]
    used = set(re.findall(r"\bkompression_[a-z_]+", text))
    assert used, "no metric found in the rule or dashboard"
    assert used <= exported, f"not exported by the operator: {sorted(used - exported)}"


def test_the_llm_worker_image_reaches_the_operator() -> None:
    from kompression.controller.settings import DEFAULT_WORKER_LLM_IMAGE

    default = env_of(one(template({}), "Deployment"))["KOMPRESSION_WORKER_LLM_IMAGE"]
    assert default.rsplit(":", 1)[0] == DEFAULT_WORKER_LLM_IMAGE.rsplit(":", 1)[0]  # the tag is the appVersion
    pinned = {"worker": {"llmImage": {"repository": "r.example/worker-llm", "digest": "sha256:" + "b" * 64}}}
    env = env_of(one(template(pinned), "Deployment"))
    assert env["KOMPRESSION_WORKER_LLM_IMAGE"] == "r.example/worker-llm@sha256:" + "b" * 64
    assert "does not match pattern" in template_error({"worker": {"llmImage": {"repository": "x", "digest": "sha1"}}})
