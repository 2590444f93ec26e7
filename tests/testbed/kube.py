"""What the `kube` fixture hands a test: kubeconfig, kubectl, a python client, fresh namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config

from .cluster import bin_dir
from .procs import TestbedError

T = TypeVar("T")


def kubectl_binary() -> str:
    cached = bin_dir() / "kubectl"
    if cached.exists():
        return str(cached)
    found = shutil.which("kubectl")
    if not found:
        raise TestbedError(f"kubectl not found in {bin_dir()} or on PATH")
    return found


class Kube:
    """Handle on a running cluster; `api_client` is admin (system:masters)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.api_client: client.ApiClient = config.new_client_from_config(str(kubeconfig))  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self._namespaces: list[str] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (operator, helm, scripts) that should see this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the test bed; raises with stderr attached when `check` fails."""
        proc = subprocess.run(
            [kubectl_binary(), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def wait_established(self, crd: str, timeout: float = 60) -> None:
        """Poll until the CRD's Established condition is True. (`kubectl wait` fails at once, with
        ".status.conditions accessor error", when it reads the CRD before the API server has written
        any condition.)"""

        def established() -> bool:
            jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
            proc = self.kubectl("get", f"crd/{crd}", "-o", jsonpath, check=False)
            return proc.returncode == 0 and proc.stdout.strip() == "True"

        self.wait(established, f"CRD {crd} to be Established", timeout=timeout)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        """Plain-JSON REST call (e.g. `request("GET", "/api/v1/nodes")`) through `api_client`.

        Handy for custom resources and for tests that want dicts instead of typed models.
        Non-2xx answers raise `kubernetes.client.ApiException` with `.status` set.
        """
        cfg = self.api_client.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
        if token:
            headers["Authorization"] = token
        resp = self.api_client.rest_client.request(  # type: ignore[no-untyped-call]
            method, cfg.host + path, headers=headers, body=body
        )
        data = resp.read()
        if not 200 <= resp.status < 300:
            raise client.ApiException(status=resp.status, reason=data.decode(errors="replace"))
        return dict(json.loads(data)) if data else {}

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> str:
        """`kubectl apply` a manifest (dict or YAML/JSON text); returns kubectl's output."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input=text).stdout

    def create_namespace(self, prefix: str = "t") -> str:
        """A new, uniquely named namespace; `cleanup()` deletes every one made here."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        self._namespaces.append(name)
        # Pods are rejected until the ServiceAccount controller has made `default`.
        self.wait(
            lambda: _exists(lambda: self.core.read_namespaced_service_account("default", name)),
            f"ServiceAccount default in {name}",
            timeout=30,
        )
        return name

    def delete_namespace(self, name: str) -> None:
        try:
            self.core.delete_namespace(name)
        except client.ApiException as err:
            if err.status != 404:
                raise
        if name in self._namespaces:
            self._namespaces.remove(name)

    def cleanup(self) -> None:
        for name in list(self._namespaces):
            self.delete_namespace(name)

    @staticmethod
    def wait(probe: Callable[[], T | None], what: str, timeout: float = 30, interval: float = 0.25) -> T:
        """Poll until `probe` returns something truthy and return it, else fail naming `what`."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except client.ApiException as err:
        if err.status == 404:
            return False
        raise
    return True
