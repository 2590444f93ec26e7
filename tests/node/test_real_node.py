"""The real node (hack/node.sh): a kubelet, containerd, runc and the CNI bridge run pods from the
product images beside the kwok nodes. Skipped, naming the fix, where the node cannot start
(not root, no containerd, no kubelet built, no CPU worker image): `make test-node`."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from testbed.node import RealNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

# TEST-NET-2 (RFC 5737): documentation only, never routed anywhere. The VM's own gateway is in
# TEST-NET-1 here, so that range is not used as "outside".
OUTSIDE = "198.51.100.1"


def _pod(name: str, node: RealNode, script: str) -> dict[str, Any]:
    """A pod with the worker pods' security settings, running `script` in the CPU worker image."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node.selector,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532},
            "containers": [
                {
                    "name": "main",
                    "image": node.worker_image,
                    "imagePullPolicy": "Never",
                    "command": ["/opt/kompression/bin/python", "-c", script],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
        },
    }


def _terminated(kube: Any, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pod = json.loads(kube.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
        statuses = pod["status"].get("containerStatuses") or []
        state = statuses[0]["state"] if statuses else {}
        return {"pod": pod, **state["terminated"]} if "terminated" in state else None

    result: dict[str, Any] = kube.wait(probe, f"pod {name} to terminate", timeout=timeout)
    return result


def _logs(kube: Any, namespace: str, name: str) -> str:
    return str(kube.kubectl("-n", namespace, "logs", name).stdout)


def test_the_node_is_ready_labelled_and_advertises_no_gpu(real_node: RealNode, kube: Any) -> None:
    node = json.loads(kube.kubectl("get", "node", real_node.name, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert node["metadata"]["labels"]["kompression.dev/real-node"] == "true"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert not any("gpu" in resource for resource in node["status"]["capacity"])
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_a_pod_runs_as_65532_on_a_read_only_root_and_the_kubelet_writes_its_termination_message(
    real_node: RealNode, kube: Any, namespace: str
) -> None:
    script = (
        "import os, sys\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "try:\n"
        "    open('/opt/kompression/written', 'w')\n"
        "except OSError as e:\n"
        "    print('root', e.errno)\n"
        "open('/tmp/ok', 'w').write('x')\n"
        "open('/dev/termination-log', 'w').write('from the worker image')\n"
        "sys.exit(3)\n"
    )
    kube.apply(_pod("probe", real_node, script), namespace)
    end = _terminated(kube, namespace, "probe")
    assert end["pod"]["spec"]["nodeName"] == real_node.name
    assert end["exitCode"] == 3 and end["reason"] == "Error"
    assert end["message"] == "from the worker image"
    logs = _logs(kube, namespace, "probe")  # through the API server from the kubelet
    assert "uid 65532 65532" in logs
    assert "root 30" in logs  # EROFS


def test_pods_reach_the_hosts_loopback_servers_and_nothing_leaves_the_machine(
    real_node: RealNode, kube: Any, namespace: str, s3: Any
) -> None:
    s3_url = real_node.url(s3.endpoint_url)
    host, port = s3_url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    dropped_before = real_node.dropped_off_machine()
    script = (
        "import socket\n"
        f"socket.create_connection(({host!r}, {int(port)}), timeout=10).close()\n"
        "print('loopback reached')\n"
        "s = socket.socket()\n"
        "s.settimeout(3)\n"
        "try:\n"
        f"    s.connect(({OUTSIDE!r}, 80))\n"
        "    print('outside reached')\n"
        "except OSError as e:\n"
        "    print('outside blocked', type(e).__name__)\n"
    )
    kube.apply(_pod("net", real_node, script), namespace)
    end = _terminated(kube, namespace, "net")
    logs = _logs(kube, namespace, "net")
    assert end["exitCode"] == 0, logs
    assert "loopback reached" in logs
    assert "outside blocked" in logs and "outside reached" not in logs
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forwarding = f.read().strip() == "1"
    if forwarding:
        # The host forwards: the SYN (and its retries) reached FORWARD and the safety net dropped it.
        deadline = time.monotonic() + 5
        while real_node.dropped_off_machine() <= dropped_before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert real_node.dropped_off_machine() > dropped_before


def test_pods_reach_a_service_by_its_name_through_kube_proxy_and_coredns_answers_nothing_outside(
    real_node: RealNode, kube: Any, namespace: str
) -> None:
    web = _pod(
        "web",
        real_node,
        "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()",
    )
    web["metadata"]["labels"] = {"app": "web"}
    web["spec"]["containers"][0]["workingDir"] = "/tmp"
    kube.apply(web, namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace,
    )
    cluster_ip = json.loads(kube.kubectl("-n", namespace, "get", "service", "web", "-o", "json").stdout)["spec"][
        "clusterIP"
    ]
    script = (
        "import socket, time, urllib.request\n"
        f"name = 'web.{namespace}.svc'\n"
        "for _ in range(60):\n"
        "    try:\n"
        "        print('status', urllib.request.urlopen(f'http://{name}/', timeout=5).status)\n"
        "        break\n"
        "    except OSError as e:\n"
        "        last = e\n"
        "        time.sleep(1)\n"
        "else:\n"
        "    raise SystemExit(f'the Service never answered: {last}')\n"
        "print('resolved', socket.gethostbyname(name))\n"
        "try:\n"
        "    print('outside resolved', socket.gethostbyname('example.com'))\n"
        "except OSError as e:\n"
        "    print('outside unresolved', type(e).__name__)\n"
    )
    kube.apply(_pod("client", real_node, script), namespace)
    end = _terminated(kube, namespace, "client")
    logs = _logs(kube, namespace, "client")
    assert end["exitCode"] == 0, logs
    # CoreDNS named the Service's address, and kube-proxy carried the request to the pod behind it.
    assert f"resolved {cluster_ip}" in logs
    assert "status 200" in logs
    # No forwarding: a name outside the cluster resolves nowhere (the host's resolver is off the machine).
    assert "outside unresolved" in logs and "outside resolved" not in logs
