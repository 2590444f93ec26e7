"""Run a kwok pod's worker container here, the way a kubelet would have run it.

Everything comes from the API server: the container's command, args and env; envFrom Secrets and
ConfigMaps; ConfigMap volumes written out as files; projected ServiceAccount tokens minted with
TokenRequest for the pod (bound to it, with its audience and expiry); emptyDirs as empty
directories; PersistentVolumeClaims as their bound hostPath volume (a symlink; read-only is not
enforced here, the tests run as root); the termination message path as a file. Mount paths are
mapped under a temp root, and every occurrence of a mount path (or of a folder holding mount
points) in the command, args and env values is rewritten to match.

Only for what the real node cannot serve: a GPU. The real node (hack/node.sh, started by `make
test`; tests/controller/test_real_node_e2e.py) runs the operator image and CPU and LLM jobs in the
worker images on a real kubelet, claims included, but it has no GPU, so the jobs that ask for GPUs
(kwok's H100 and A100 nodes, multi-GPU torchrun pods) run here.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_TERMINATION_LOG = "KOMPRESSION_TERMINATION_LOG"


@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str]
    termination_log: Path


def _b64(value: str) -> str:
    return base64.b64decode(value).decode()


def pod_token(kube: Any, pod: dict[str, Any], audience: str, expiration: int) -> str:
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": expiration,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        },
    }
    out = kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
    return str(out["status"]["token"])


def _volume_files(kube: Any, ns: str, volume: dict[str, Any], pod: dict[str, Any]) -> dict[str, str] | None:
    """path -> content for a volume kubelet fills; None for an empty directory."""
    if "configMap" in volume:
        src = volume["configMap"]
        data = kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{src['name']}").get("data") or {}
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        return {i["path"]: data[i["key"]] for i in items}
    if "secret" in volume:
        src = volume["secret"]
        data = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{src['secretName']}").get("data") or {}
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        return {i["path"]: _b64(data[i["key"]]) for i in items}
    if "projected" in volume:
        files: dict[str, str] = {}
        for source in volume["projected"]["sources"]:
            if "serviceAccountToken" in source:
                t = source["serviceAccountToken"]
                files[t["path"]] = pod_token(kube, pod, t["audience"], int(t.get("expirationSeconds") or 3600))
            else:
                raise NotImplementedError(f"projected source {sorted(source)}")
        return files
    if "emptyDir" in volume:
        return None
    raise NotImplementedError(f"volume type of {volume['name']}")


def _claim_host_path(kube: Any, ns: str, claim: str) -> Path:
    pvc = kube.request("GET", f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
    volume = pvc["spec"].get("volumeName")
    if not volume or pvc.get("status", {}).get("phase") != "Bound":
        raise RuntimeError(f"claim {ns}/{claim} is not bound")
    pv = kube.request("GET", f"/api/v1/persistentvolumes/{volume}")
    if "hostPath" not in pv["spec"]:
        raise NotImplementedError(f"volume {volume}: only hostPath volumes can stand in here")
    return Path(pv["spec"]["hostPath"]["path"])


def prepare(kube: Any, pod: dict[str, Any], root: Path, container_name: str) -> Prepared:
    ns = pod["metadata"]["namespace"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == container_name)
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    mapping: list[tuple[str, str]] = []
    for mount in container.get("volumeMounts") or []:
        host = root / mount["mountPath"].lstrip("/")
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim is not None:
            host.parent.mkdir(parents=True, exist_ok=True)
            host.symlink_to(_claim_host_path(kube, ns, claim["claimName"]), target_is_directory=True)
            mapping.append((mount["mountPath"].rstrip("/"), str(host)))
            continue
        host.mkdir(parents=True, exist_ok=True)
        files = _volume_files(kube, ns, volumes[mount["name"]], pod)
        for rel, content in (files or {}).items():
            (host / rel).parent.mkdir(parents=True, exist_ok=True)
            (host / rel).write_text(content)
        mapping.append((mount["mountPath"].rstrip("/"), str(host)))
    mapping.sort(key=lambda m: -len(m[0]))  # longest mount path first

    def remap(value: str) -> str:
        for inside, outside in mapping:
            if value == inside or value.startswith(inside + "/"):
                return outside + value[len(inside) :]
        # A folder that holds mount points (KOMPRESSION_PVC_ROOT): every mount lies at root + its path.
        folder = value.rstrip("/")
        if folder.startswith("/") and any(inside.startswith(folder + "/") for inside, _ in mapping):
            return str(root) + value
        return value

    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            data = kube.request("GET", f"/api/v1/namespaces/{ns}/secrets/{source['secretRef']['name']}")
            env.update({prefix + k: _b64(v) for k, v in (data.get("data") or {}).items()})
        if "configMapRef" in source:
            data = kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/{source['configMapRef']['name']}")
            env.update({prefix + k: v for k, v in (data.get("data") or {}).items()})
    for var in container.get("env") or []:  # env beats envFrom, as in the kubelet
        if "value" not in var:
            raise NotImplementedError(f"env {var['name']} uses valueFrom")
        env[var["name"]] = remap(var["value"])
    termination = root / container.get("terminationMessagePath", "/dev/termination-log").lstrip("/")
    termination.parent.mkdir(parents=True, exist_ok=True)
    env[ENV_TERMINATION_LOG] = str(termination)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if "PYTHONPATH" in os.environ:  # the image's code is the checkout under test, not the venv's install
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env["TMPDIR"] = remap("/tmp")
    argv = [remap(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
    # The image's entry point is on the image's PATH; here it is the venv's.
    argv[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
    return Prepared(argv, env, termination)


def run(prepared: Prepared, log: Path, timeout: float) -> int:
    with log.open("wb") as out:
        proc = subprocess.run(
            prepared.argv, env=prepared.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    return proc.returncode
