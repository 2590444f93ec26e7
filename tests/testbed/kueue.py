"""Kueue's manager on the test bed: the real binary (built from sigs.k8s.io/kueue by
hack/build-testbed.sh), run as a process against the test bed's kube-apiserver.

The API server must reach Kueue's webhooks (its Job defaulting and validation, its CRDs' own
webhooks and their version conversion). Kueue serves them on a loopback port with a certificate of
a CA from `TestbedPKI`, and the webhook configurations and the CRDs' conversion name that port by
URL (`https://127.0.0.1:<port>/<path>`) instead of a Service, with the CA as their caBundle: the
manifests are Kueue's own, from the module's source, with only the client config rewritten.

Kueue manages batch Jobs (integration `batch/job`, `manageJobsWithoutQueueName: false`) in the
namespaces labelled `ENROLL_LABEL` only (`enroll(namespace)`), both in its manager
(`managedJobsNamespaceSelector`) and in the scope of its Job webhooks: the cluster's other tests
keep a cluster without Kueue, even while it runs and after it stops.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

from .cluster import bin_dir, binary
from .kube import Kube
from .pki import ClientCert, TestbedPKI
from .procs import LOOPBACK, Daemon, TestbedError, free_port, wait_for

ENROLL_LABEL = "kompression.dev/testbed-kueue"
# What the test bed enables: Kueue's own resources and the batch/v1 Job integration.
_WEBHOOK_PATHS = ("-kueue-x-k8s-io-", "-batch-v1-job")
_JOB_WEBHOOK = "-batch-v1-job"
_CONVERTED = ("clusterqueues", "cohorts", "localqueues", "workloads", "multikueueclusters")
# Without its internal certificate rotation, Kueue 0.17 serves metrics with the certificate at this
# fixed path (cmd/kueue/main.go; a Secret mounted there in its Deployment) and exits without one.
METRICS_CERTS = Path("/etc/kueue/metrics/certs")


def manifests_dir() -> Path:
    """Kueue's CRDs and webhook configurations for the built version (hack/build-testbed.sh)."""
    stamp = bin_dir() / ".kueue.version"
    version = stamp.read_text().strip() if stamp.exists() else ""
    found = bin_dir().parent / "kueue" / version
    if not version or not (found / "webhook" / "manifests.yaml").exists():
        raise TestbedError(f"Kueue's manifests not found at {found}; run `hack/build-testbed.sh kueue`")
    return found


def _client_config(port: int, path: str, ca: bytes) -> dict[str, Any]:
    return {"url": f"https://{LOOPBACK}:{port}{path}", "caBundle": base64.b64encode(ca).decode()}


def crds(port: int, ca: bytes, source: Path) -> list[dict[str, Any]]:
    """Kueue's CRDs; those that Kueue converts between versions convert through its loopback webhook
    (as its kustomization's webhook_in_* patches do through its Service)."""
    out = []
    for path in sorted((source / "crd").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["plural"] in _CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {"clientConfig": _client_config(port, "/convert", ca), "conversionReviewVersions": ["v1"]},
            }
        out.append(crd)
    return out


def webhook_configurations(port: int, ca: bytes, source: Path, suffix: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, renamed with `suffix`, kept to the enabled webhooks, each
    calling Kueue on loopback; the Job webhooks only in enrolled namespaces."""
    out = []
    for doc in yaml.safe_load_all((source / "webhook" / "manifests.yaml").read_text()):
        conf = copy.deepcopy(doc)
        conf["metadata"] = {"name": f"kueue-{doc['metadata']['name']}-{suffix}"}
        hooks = []
        for hook in conf["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            if not any(p in path for p in _WEBHOOK_PATHS):
                continue
            hook["clientConfig"] = _client_config(port, path, ca)
            if _JOB_WEBHOOK in path:
                hook["namespaceSelector"] = {"matchLabels": {ENROLL_LABEL: "true"}}
            hooks.append(hook)
        conf["webhooks"] = hooks
        out.append(conf)
    return out


def configuration(webhook_port: int, metrics_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's config file (config.kueue.x-k8s.io/v1beta2): every server on loopback, certificates
    from the test bed's PKI instead of Kueue's internal rotation, one replica without election."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": f"{LOOPBACK}:{health_port}"},
        "metrics": {"bindAddress": f"{LOOPBACK}:{metrics_port}"},
        "webhook": {"host": LOOPBACK, "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {ENROLL_LABEL: "true"}},
        "integrations": {"frameworks": ["batch/job"]},
        # The on-demand visibility API is an aggregated API server of its own (0.0.0.0:8082 and
        # an APIService); nothing here reads pending positions through it.
        "featureGates": {"VisibilityOnDemand": False},
    }


def ensure_metrics_cert(serving: ClientCert, directory: Path = METRICS_CERTS) -> None:
    """Put a certificate where Kueue reads its metrics certificate, unless one is there: the one
    path outside the session's temp dir. Nothing verifies it (the tests do not scrape Kueue), so
    sessions share whichever was written first; each file is written whole, then renamed."""
    if all((directory / name).exists() for name in ("tls.crt", "tls.key")):
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for source, name in ((serving.cert, "tls.crt"), (serving.key, "tls.key")):
            partial = directory / f".{name}.{uuid.uuid4().hex[:6]}"
            shutil.copy(source, partial)
            partial.replace(directory / name)
    except PermissionError as exc:
        raise TestbedError(
            f"Kueue needs a metrics certificate at {directory} and this user cannot write it; once, as root: "
            f"mkdir -p {directory} && chown $USER {directory}"
        ) from exc


class KueueManager:
    """Kueue's manager, running against `kube`'s cluster, with its CRDs and webhooks installed."""

    def __init__(self, kube: Kube, workdir: Path) -> None:
        self.kube, self.dir = kube, workdir
        source = manifests_dir()
        pki = TestbedPKI(workdir / "pki")
        serving = pki.serving("kueue-webhook")  # its SANs include 127.0.0.1
        cert_dir = workdir / "certs"
        cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(serving.cert, cert_dir / "tls.crt")
        shutil.copy(serving.key, cert_dir / "tls.key")
        ensure_metrics_cert(serving)
        ca = pki.ca_cert.read_bytes()
        self.webhook_port, self.metrics_port, self.health_port = free_port(), free_port(), free_port()
        config = workdir / "kueue-config.yaml"
        config.write_text(
            yaml.safe_dump(configuration(self.webhook_port, self.metrics_port, self.health_port, cert_dir))
        )
        self._apply(crds(self.webhook_port, ca, source))
        for crd in crds(self.webhook_port, ca, source):
            kube.wait_established(crd["metadata"]["name"])
        self._daemon = Daemon(
            "kueue",
            [str(binary("kueue")), f"--config={config}", "--zap-log-level=2"],
            workdir / "kueue.log",
            workdir / "kueue.pid",
            env=kube.env,
        )
        wait_for("Kueue's readiness", self._ready, timeout=120, alive=[self._daemon])
        self._webhooks = webhook_configurations(self.webhook_port, ca, source, uuid.uuid4().hex[:6])
        self._apply(self._webhooks)
        # A Job the webhook defaults proves the API server reaches it: created unsuspended with a
        # queue name, Kueue's mutating webhook suspends it.
        probe = self.enroll(kube.create_namespace("kueue-probe"))
        try:
            wait_for(
                "the API server to call Kueue's webhooks",
                lambda: self._webhooks_answer(probe),
                timeout=60,
                alive=[self._daemon],
            )
        finally:
            kube.delete_namespace(probe)

    @property
    def log(self) -> Path:
        return self._daemon.log

    def _apply(self, objects: list[dict[str, Any]]) -> None:
        text = "\n---\n".join(json.dumps(o) for o in objects)
        self.kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.health_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    def _webhooks_answer(self, namespace: str) -> bool:
        """A server-side dry run of a queued Job in an enrolled namespace comes back suspended."""
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "probe", "labels": {"kueue.x-k8s.io/queue-name": "probe"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}},
        }
        out = self.kube.kubectl(
            "create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(job), check=False
        )
        return out.returncode == 0 and json.loads(out.stdout)["spec"].get("suspend") is True

    def enroll(self, namespace: str) -> str:
        """Let Kueue manage the queued Jobs of `namespace` (its Job webhooks and its manager)."""
        self.kube.kubectl("label", "namespace", namespace, f"{ENROLL_LABEL}=true", "--overwrite")
        return namespace

    def stop(self) -> None:
        # The webhook configurations go first: with Kueue gone, a call to them would fail the
        # request (their failurePolicy is Fail).
        for conf in self._webhooks:
            kind = conf["kind"].lower()
            self.kube.kubectl("delete", kind, conf["metadata"]["name"], "--ignore-not-found", check=False)
        self._daemon.stop()
