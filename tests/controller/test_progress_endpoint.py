"""The progress endpoint of the operator process, attacked over real sockets on the test bed.

Tokens are real: minted by the API server with TokenRequest (bound to a kwok pod, as the kubelet
would mint them) or forged. TokenReviews are counted by the API server's own request metrics.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubectl import apply_cr, cr, running_pod, status
from kubelet import pod_token
from operator_process import OperatorProcess, install_crd
from sockets import closed_within, is_open

from kompression.api.constants import progress_audience

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]
READ_TIMEOUT_S = 2.0
PER_SOURCE = 16  # httpguard.Limits.max_per_source
REVIEWS = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def op(kube: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crd(kube)
    proc = OperatorProcess(
        kube, tmp_path_factory.mktemp("operator-progress"), "--progress-read-timeout", str(READ_TIMEOUT_S)
    ).start()
    yield proc
    proc.stop()


def post(op: OperatorProcess, ns: str, name: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body if body is not None else {"phase": "Running"}).encode()
    request = urllib.request.Request(f"{op.progress_base_url}/v1/progress/{ns}/{name}", data, headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def reviews(kube: Any) -> float:
    """TokenReviews the API server has answered since it started, from its own metrics."""
    text = kube.kubectl("get", "--raw", "/metrics").stdout
    return sum(
        float(value)
        for labels, value in REVIEWS.findall(text)
        if 'resource="tokenreviews"' in labels and 'verb="POST"' in labels
    )


def forged(audience: str) -> str:
    """A token that claims `audience` and is signed by nobody."""

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"aud": [audience], "sub": "system:serviceaccount:x:y", "jti": secrets.token_hex(8)}
    return f"{part({'alg': 'RS256', 'kid': 'x'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


def running_job(kube: Any, ns: str, name: str) -> tuple[str, dict[str, Any]]:
    """(its progress audience, its running kwok pod) for a new CompressionJob."""
    apply_cr(kube, ns, name, resources={"gpus": 1})
    pod = running_pod(kube, ns, name)
    return progress_audience(ns, name, cr(kube, ns, name)["metadata"]["uid"]), pod


def test_a_trickled_head_is_closed_within_the_timeout(op: OperatorProcess) -> None:
    with socket.create_connection(("127.0.0.1", op.progress_port)) as sock:
        started = time.monotonic()
        for byte in b"POST /v1/progress/a/b HTTP/1.1\r\n":  # one byte every 2 s
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_within(sock, 2.0) is not None:
                break
        took = time.monotonic() - started
    assert took < READ_TIMEOUT_S + 2.5, f"a trickled head kept the connection for {took:.1f} s"


def test_idle_connections_do_not_all_stay_open(op: OperatorProcess) -> None:
    socks = [socket.create_connection(("127.0.0.1", op.progress_port)) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert sum(is_open(s) for s in socks) <= PER_SOURCE
        time.sleep(READ_TIMEOUT_S + 1.0)
        assert not any(is_open(s) for s in socks)
    finally:
        for s in socks:
            s.close()


def test_unauthenticated_callers_cannot_tell_which_jobs_exist(kube: Any, namespace: str, op: OperatorProcess) -> None:
    audience, _ = running_job(kube, namespace, "exists")
    missing_audience = progress_audience(namespace, "missing", "5d0c5b5e-0000-0000-0000-000000000000")
    for exists, missing in (
        (None, None),
        ("not-a-jwt", "not-a-jwt"),
        (forged(audience.rsplit("/", 1)[0] + "/wrong-uid"), forged(missing_audience)),
        (forged(audience), forged(missing_audience)),
    ):
        assert post(op, namespace, "exists", exists) == post(op, namespace, "missing", missing)
    assert post(op, namespace, "exists", "not-a-jwt")[0] == 403


def test_tokens_must_be_bound_to_a_pod_of_this_job(kube: Any, namespace: str, op: OperatorProcess) -> None:
    audience, pod = running_job(kube, namespace, "bound")
    other_audience, other_pod = running_job(kube, namespace, "other")
    report = {"phase": "Running", "progress": {"percentage": 7}, "sequence": 1}
    # Another job's token, even bound to that job's pod, does not count here.
    assert post(op, namespace, "bound", pod_token(kube, other_pod, other_audience, 3600), report)[0] == 403
    # A token for this audience that no pod is bound to proves nothing about the job.
    unbound = kube.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/default/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": [audience]}},
    )["status"]["token"]
    assert post(op, namespace, "bound", unbound, report)[0] == 403
    # The right audience, bound to a pod of another job.
    assert post(op, namespace, "bound", pod_token(kube, other_pod, audience, 3600), report)[0] == 403
    code, answer = post(op, namespace, "bound", pod_token(kube, pod, audience, 3600), report)
    assert (code, answer) == (202, {"accepted": True})


def test_a_forged_sequence_cannot_lock_out_real_reports_and_survives_a_restart(
    kube: Any, namespace: str, op: OperatorProcess
) -> None:
    audience, pod = running_job(kube, namespace, "seq")
    token = pod_token(kube, pod, audience, 3600)

    def report(sequence: int, percentage: int) -> tuple[int, Any]:
        body = {"phase": "Running", "progress": {"percentage": percentage}, "sequence": sequence}
        return post(op, namespace, "seq", token, body)

    def shows(percentage: int) -> dict[str, Any]:
        return kube.wait(
            lambda: (s := status(kube, namespace, "seq")).get("progress", {}).get("percentage") == percentage and s,
            f"progress {percentage}% in status",
        )

    code, answer = report(2**62, 99)
    assert code == 400 and "ahead of the worker's age" in answer["error"]
    assert report(1000, 10) == (202, {"accepted": True})
    assert shows(10)["lastReport"] == {"podUID": pod["metadata"]["uid"], "sequence": 1000}
    assert report(900, 5) == (200, {"accepted": False, "reason": "stale sequence"})

    op.kill()
    op.start()
    # The restarted operator remembers the sequence from status, not from memory.
    assert kube.wait(lambda: (r := report(900, 5))[0] != 403 and r, "the operator's store") == (
        200,
        {"accepted": False, "reason": "stale sequence"},
    )
    assert report(2000, 20) == (202, {"accepted": True})
    assert shows(20)["lastReport"]["sequence"] == 2000


def test_token_reviews_are_cached_and_rate_limited(kube: Any, namespace: str, op: OperatorProcess) -> None:
    audience, pod = running_job(kube, namespace, "flood")
    token = pod_token(kube, pod, audience, 3600)
    time.sleep(3)  # the two reviews below must not wait on the earlier tests' budget (one a second)
    before = reviews(kube)
    for sequence in range(1, 11):
        assert post(op, namespace, "flood", token, {"phase": "Running", "sequence": sequence})[0] == 202
    fake = forged(audience)
    for _ in range(10):
        assert post(op, namespace, "flood", fake)[0] == 403
    assert reviews(kube) - before == 2, "one review for the real token and one for the forged one"

    before, started = reviews(kube), time.monotonic()
    codes: dict[int, int] = {}
    for i in range(300):
        token = forged(audience) if i % 2 else secrets.token_urlsafe(40)
        code = post(op, namespace, "flood", token)[0]
        codes[code] = codes.get(code, 0) + 1
    spent, took = reviews(kube) - before, time.monotonic() - started
    assert set(codes) <= {403, 429}, codes
    # a burst of 10, then one a second
    assert spent <= 10 + took + 1, f"{spent} TokenReviews for 300 random tokens in {took:.1f} s"
    assert codes.get(429, 0) > 0
