"""Persistent volume claims for the `pvc://` tests: each bound to a host-path volume of its own, and
how a worker pod's spec mounts them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CLAIMS = ("models", "results")


@contextmanager
def host_path_claims(kube: Any, namespace: str, root: Path) -> Iterator[dict[str, Path]]:
    """The claims `models` and `results` in `namespace`, each bound to a host-path volume of its own
    under `root`; claim -> folder. The volumes are deleted afterwards (their folders stay)."""
    dirs = {claim: root / claim for claim in CLAIMS}
    for claim, folder in dirs.items():
        folder.mkdir(parents=True)
        # A pod runs as UID 65532: it reads the models claim and writes the results claim.
        folder.chmod(0o777 if claim == "results" else 0o755)
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{claim}"},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": str(folder)},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": namespace},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "volumeName": f"{namespace}-{claim}",
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        )
    for claim in CLAIMS:
        kube.wait(
            lambda c=claim: (
                kube.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{c}")
                .get("status", {})
                .get("phase")
                == "Bound"
            ),
            f"claim {claim} bound",
            timeout=60,
        )
    try:
        yield dirs
    finally:
        for claim in CLAIMS:
            kube.kubectl("delete", "pv", f"{namespace}-{claim}", "--wait=false", check=False)


def claim_volumes(pod_spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """claim -> volume source, and claim -> (mountPath, readOnly) of the worker container."""
    by_volume = {v["name"]: v["persistentVolumeClaim"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}
    mounts = {
        by_volume[m["name"]]["claimName"]: (m["mountPath"], m.get("readOnly", False))
        for m in pod_spec["containers"][0]["volumeMounts"]
        if m["name"] in by_volume
    }
    # The API server leaves out readOnly: false; the renderer writes it.
    sources = {v["claimName"]: {**v, "readOnly": v.get("readOnly", False)} for v in by_volume.values()}
    return sources, mounts
