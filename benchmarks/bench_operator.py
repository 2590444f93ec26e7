"""Operator benchmark on a private kwok test-bed cluster with 50 extra fake GPU nodes.

    .venv/bin/python benchmarks/bench_operator.py   # writes benchmarks/results/operator.md

Phases, one operator process (`kompression operator`) throughout:
  1. burst: 500 CompressionJobs created at once (32 concurrent POSTs); time until every Job exists.
  2. completion: the 500 pods are annotated to exit 0 (kwok completes them); time until every
     status shows Succeeded, counted from the last pod that kwok completed.
  3. API writes per job from creation to Succeeded (no progress reports: no worker runs), from
     kube-apiserver's `apiserver_request_total` deltas by verb/resource, cross-checked against
     the operator's own `kompression_api_writes_total`.
  4. steady: 10 new CompressionJobs a second for 60 s; CR-to-Job latency p50/p99 (from the create
     call's response to the Job's ADDED event on a watch).
  5. scale: with 1,100 live CompressionJobs (500 finished + 600 running), the operator's peak RSS
     (VmHWM from /proc).
Times are taken by this process from watch events, not from creationTimestamps (1 s resolution).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from common import ROOT, write_report

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "operator")]

from testbed.cluster import Cluster  # noqa: E402
from testbed.nodes import H100, FakeNode  # noqa: E402
from testbed.procs import free_port  # noqa: E402

CRD = ROOT / "crds" / "compressionjobs.kompression.dev.yaml"
EXTRA_NODES, GPUS_PER_NODE = 50, 16
BURST, STEADY_RATE, STEADY_SECONDS = 500, 10, 60
CONCURRENCY = 32
# The Job controller, not the operator, sets the pace of completion: at the test bed's default
# client rate (kube-api-qps 20, shared by every controller) 500 Jobs take ~85 s to be marked
# Complete after their pods end. Production control planes raise it; so does this benchmark.
KCM_QPS = 100
CR_API = "/apis/kompression.dev/v1alpha1"
# The writes the operator makes and only the operator makes (configmaps: minus one per namespace,
# the root CA publisher's); events are shared with the scheduler and Job controller, so the
# operator's own count is used for those.
OPERATOR_ONLY = {
    ("POST", "jobs", ""),
    ("PATCH", "jobs", ""),
    ("POST", "configmaps", ""),
    ("PATCH", "compressionjobs", "status"),
    ("PUT", "compressionjobs", "status"),
}


def say(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "s3://models/m.pt2", "format": "TorchExport", "inputs": [{"name": "x", "shape": [-1, 8]}]},
            "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
            "output": {"uri": f"s3://out/{name}/"},  # one live job per output prefix
            "resources": {"gpus": 1, "gpuProduct": H100, "cpu": "10m", "memory": "16Mi"},
        },
    }


class Client:
    """Admin client over aiohttp, with the test bed's client certificate."""

    def __init__(self, cluster: Cluster) -> None:
        ports = json.loads((cluster.dir / "ports.json").read_text())
        self.server = f"https://127.0.0.1:{ports['apiserver']}"
        ctx = ssl.create_default_context(cafile=str(cluster.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(cluster.pki_dir / "admin.crt"), str(cluster.pki_dir / "admin.key"))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=64))

    async def call(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json", ok: tuple[int, ...] = ()
    ) -> Any:
        for attempt in range(20):
            async with self.session.request(
                method, self.server + path, json=body, headers={"Content-Type": ctype} if body is not None else {}
            ) as r:
                text = await r.text()
                if r.status < 300 or r.status in ok:
                    return json.loads(text) if text.startswith("{") else text
                if r.status in (429, 500, 503) and attempt < 19:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                raise RuntimeError(f"{method} {path}: {r.status} {text[:300]}")
        raise AssertionError

    async def watch(self, path: str, on: Callable[[str, dict[str, Any]], None]) -> None:
        rv = ""
        while True:
            params = {"watch": "1", "allowWatchBookmarks": "true", **({"resourceVersion": rv} if rv else {})}
            try:
                async with self.session.get(
                    self.server + path, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
                ) as r:
                    if r.status != 200:  # e.g. the CRD not served yet, or 410 Gone: list again
                        rv = "" if r.status == 410 else rv
                        await asyncio.sleep(1)
                        continue
                    async for line in r.content:
                        event = json.loads(line)
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion") or rv
                        if event["type"] != "BOOKMARK":
                            on(event["type"], obj)
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        await self.session.close()


class Seen:
    """First-seen times (time.monotonic) of watch states, by (namespace, name)."""

    def __init__(self) -> None:
        self.job: dict[tuple[str, str], float] = {}
        self.job_done: dict[tuple[str, str], float] = {}
        self.pod_running: dict[str, float] = {}
        self.pod_done: dict[str, float] = {}
        self.cr_succeeded: dict[tuple[str, str], float] = {}

    def on_job(self, _: str, obj: dict[str, Any]) -> None:
        m = obj["metadata"]
        self.job.setdefault((m["namespace"], m["name"]), time.monotonic())
        conds = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] in ("Complete", "SuccessCriteriaMet") and c["status"] == "True" for c in conds):
            self.job_done.setdefault((m["namespace"], m["name"]), time.monotonic())

    def on_pod(self, _: str, obj: dict[str, Any]) -> None:
        phase = (obj.get("status") or {}).get("phase")
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        if phase == "Running":
            self.pod_running.setdefault(key, time.monotonic())
        elif phase == "Succeeded":
            self.pod_done.setdefault(key, time.monotonic())

    def on_cr(self, _: str, obj: dict[str, Any]) -> None:
        if (obj.get("status") or {}).get("phase") == "Succeeded":
            m = obj["metadata"]
            self.cr_succeeded.setdefault((m["namespace"], m["name"]), time.monotonic())


async def wait_until(probe: Callable[[], bool], what: str, timeout: float) -> float:
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.1)
    return time.monotonic()


async def gather_limited(coros: list[Any], limit: int = CONCURRENCY) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def request_totals(text: str) -> dict[tuple[str, str, str], float]:
    totals: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def operator_writes(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("kompression_api_writes_total{"):
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.rindex("}")].split(","))
            key = (labels["verb"].strip('"'), labels["resource"].strip('"'))
            out[key] = float(line.rsplit(" ", 1)[1])
    return out


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            fields[line.split(":")[0]] = int(line.split()[1]) // 1024
    return fields


async def metrics_text(port: int) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


async def namespace(client: Client, name: str) -> None:
    await client.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    for _ in range(150):  # pods are refused until the ServiceAccount controller made `default`
        sa = await client.call("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default", ok=(404,))
        if isinstance(sa, dict) and sa.get("kind") == "ServiceAccount":
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"ServiceAccount default in {name}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def bench(cluster: Cluster, workdir: Path) -> dict[str, Any]:
    client = Client(cluster)
    fig: dict[str, Any] = {}
    op: subprocess.Popen[bytes] | None = None
    try:
        await gather_limited(
            [
                client.call("POST", "/api/v1/nodes", FakeNode(f"kwok-bench-{i:02d}", H100, GPUS_PER_NODE).manifest())
                for i in range(EXTRA_NODES)
            ]
        )

        def ready_nodes(items: list[dict[str, Any]]) -> int:
            return sum(
                any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions") or [])
                for n in items
            )

        for _ in range(300):
            if ready_nodes((await client.call("GET", "/api/v1/nodes"))["items"]) >= EXTRA_NODES + 4:
                break
            await asyncio.sleep(0.5)
        await install_crd(client)
        say("cluster ready: CRD established, fake nodes Ready")

        op, ports = await start_operator(cluster, workdir)
        seen = Seen()
        watches = [
            asyncio.create_task(client.watch(p, on))
            for p, on in (
                ("/apis/batch/v1/jobs", seen.on_job),
                ("/api/v1/pods", seen.on_pod),
                (f"{CR_API}/compressionjobs", seen.on_cr),
            )
        ]
        await asyncio.sleep(2)
        await namespace(client, "burst")
        await namespace(client, "steady")
        before = request_totals(await client.call("GET", "/metrics"))

        # 1. burst
        say("burst")
        t0 = time.monotonic()
        await gather_limited(
            [
                client.call("POST", f"{CR_API}/namespaces/burst/compressionjobs", manifest(f"b{i:03d}", "burst"))
                for i in range(BURST)
            ]
        )
        created = time.monotonic() - t0
        burst_keys = [("burst", f"b{i:03d}") for i in range(BURST)]
        t_jobs = await wait_until(lambda: all(k in seen.job for k in burst_keys), "every burst Job", 240)
        fig["burst_create_s"] = created
        fig["burst_all_jobs_s"] = t_jobs - t0
        await wait_until(
            lambda: sum(k.startswith("burst/") for k in seen.pod_running) >= BURST, "500 running pods", 300
        )
        fig["burst_all_pods_running_s"] = time.monotonic() - t0

        # 2. completion
        say("completion")
        pods = (await client.call("GET", "/api/v1/namespaces/burst/pods"))["items"]
        t1 = time.monotonic()
        await gather_limited(
            [
                client.call(
                    "PATCH",
                    f"/api/v1/namespaces/burst/pods/{p['metadata']['name']}",
                    {"metadata": {"annotations": {"kompression.dev/kwok-exit-code": "0"}}},
                    "application/merge-patch+json",
                )
                for p in pods
            ]
        )
        fig["annotate_s"] = time.monotonic() - t1
        await wait_until(lambda: sum(k.startswith("burst/") for k in seen.pod_done) >= BURST, "500 pods done", 300)
        last_pod = max(v for k, v in seen.pod_done.items() if k.startswith("burst/"))
        t_done = await wait_until(lambda: all(k in seen.cr_succeeded for k in burst_keys), "500 Succeeded", 300)
        fig["completion_after_last_pod_s"] = t_done - last_pod
        lags = [
            seen.cr_succeeded[k] - seen.pod_done[p]
            for k in burst_keys
            for p in [next(x for x in seen.pod_done if x.startswith(f"burst/{k[1]}-"))]
        ]
        fig["completion_lag_p50_s"], fig["completion_lag_max_s"] = statistics.median(lags), max(lags)
        fig["jobs_complete_after_last_pod_s"] = max(seen.job_done[k] for k in burst_keys) - last_pod
        own = [seen.cr_succeeded[k] - seen.job_done[k] for k in burst_keys]
        fig["operator_lag_p50_s"], fig["operator_lag_max_s"] = statistics.median(own), max(own)

        # 3. API writes per job
        say("writes")
        await asyncio.sleep(3)
        after = request_totals(await client.call("GET", "/metrics"))
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in OPERATOR_ONLY}
        own = operator_writes(await metrics_text(ports["metrics"]))
        events = own.get(("POST", "events"), 0.0)
        fig["writes_by_apiserver"] = {
            f"{v} {r}{'/' + s if s else ''}": n / BURST for (v, r, s), n in delta.items() if n
        }
        fig["writes_events_by_operator"] = events / BURST
        fig["writes_per_job"] = (sum(delta.values()) + events) / BURST
        fig["writes_operator_own_per_job"] = sum(own.values()) / BURST

        # 4. steady
        say("steady")
        latencies: list[float] = []
        created_at: dict[tuple[str, str], float] = {}

        async def create(i: int) -> None:
            await client.call("POST", f"{CR_API}/namespaces/steady/compressionjobs", manifest(f"s{i:03d}", "steady"))
            created_at[("steady", f"s{i:03d}")] = time.monotonic()

        t2 = time.monotonic()
        tasks = []
        for i in range(STEADY_RATE * STEADY_SECONDS):
            await asyncio.sleep(max(0.0, t2 + i / STEADY_RATE - time.monotonic()))
            tasks.append(asyncio.create_task(create(i)))
        await asyncio.gather(*tasks)
        fig["steady_rate"] = len(tasks) / (time.monotonic() - t2)
        await wait_until(lambda: all(k in seen.job for k in created_at), "every steady Job", 120)
        latencies = [max(0.0, seen.job[k] - t) for k, t in created_at.items()]
        fig["steady_p50_s"], fig["steady_p99_s"] = pct(latencies, 0.5), pct(latencies, 0.99)
        fig["steady_max_s"] = max(latencies)

        # 5. scale
        say("scale")
        await asyncio.sleep(5)
        crs = len((await client.call("GET", f"{CR_API}/compressionjobs"))["items"])
        fig["live_crs"] = crs
        fig.update(proc_status(op.pid))
        fig["reconcile_errors"] = next(
            (
                float(x.rsplit(" ", 1)[1])
                for x in (await metrics_text(ports["metrics"])).splitlines()
                if x.startswith("kompression_reconcile_errors_total")
            ),
            -1,
        )
        for w in watches:
            w.cancel()
    finally:
        stop_operator(op)
        await client.close()
    return fig


def report(fig: dict[str, Any], wall: float) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    writes = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(fig["writes_by_apiserver"].items()))
    return f"""## Operator (`benchmarks/bench_operator.py`)

Measured on {platform.node() or "this machine"} ({os.cpu_count()} cores, shared with other work), one
private kwok test-bed cluster (kube-apiserver, controller-manager, scheduler v1.34, kwok) with
{EXTRA_NODES} extra fake H100 nodes ({GPUS_PER_NODE} GPUs each), one `kompression operator` process,
jobs asking for 1 GPU each. kube-controller-manager runs with `--kube-api-qps={fig["kcm_qps"]}`
(`--kube-api-burst` twice that, `--concurrent-job-syncs=20`): the Job controller marks Jobs Complete,
and at the test bed's default 20 QPS it alone took 85 s for 500 Jobs in an earlier run (the
operator's share then: p50 0.01 s, max 0.21 s). One run (wall time {wall:.0f} s); times from this
script's watches. The 2 cores are shared with the control plane, kwok and other work, so figures
move between runs: that earlier run had the burst at 22 s and the steady p99 at 274 ms.

| what | measured | target | |
|---|---|---|---|
| burst: {BURST} CRs created (32 concurrent POSTs) | {fig["burst_create_s"]:.1f} s | | |
| burst: every Job exists, from the first create | {fig["burst_all_jobs_s"]:.1f} s | ≤ 45 s | {mark(fig["burst_all_jobs_s"] <= 45)} |
| burst: every pod Running (kwok, scheduler) | {fig["burst_all_pods_running_s"]:.1f} s | | |
| steady: {STEADY_RATE} CR/s for {STEADY_SECONDS} s (achieved {fig["steady_rate"]:.2f}/s), CR-to-Job p50 | {fig["steady_p50_s"] * 1000:.0f} ms | | |
| steady: CR-to-Job p99 (max {fig["steady_max_s"] * 1000:.0f} ms) | {fig["steady_p99_s"] * 1000:.0f} ms | ≤ 1 s | {mark(fig["steady_p99_s"] <= 1)} |
| scale: operator peak RSS (VmHWM) with {fig["live_crs"]} live CRs (current VmRSS {fig.get("VmRSS", 0)} MB) | {fig.get("VmHWM", 0)} MB | ≤ 200 MB | {mark(fig.get("VmHWM", 10**6) <= 200)} |
| API writes per job, creation to Succeeded, no progress | {fig["writes_per_job"]:.2f} | ≤ 8 | {mark(fig["writes_per_job"] <= 8)} |
| completion: all {BURST} statuses Succeeded after kwok completed the last pod | {fig["completion_after_last_pod_s"]:.1f} s | ≤ 30 s | {mark(fig["completion_after_last_pod_s"] <= 30)} |
| completion: every Job SuccessCriteriaMet or Complete (Job controller) after the last pod | {fig["jobs_complete_after_last_pod_s"]:.1f} s | | |
| completion: per job, Job success condition to CR Succeeded (the operator's share), p50 / max | {fig["operator_lag_p50_s"]:.2f} s / {fig["operator_lag_max_s"]:.2f} s | | |
| completion: per job, pod Succeeded to CR Succeeded, p50 / max | {fig["completion_lag_p50_s"]:.1f} s / {fig["completion_lag_max_s"]:.1f} s | | |

API writes per job by kube-apiserver's `apiserver_request_total` deltas (writes only the operator
makes): {writes}; plus Events (shared with the scheduler and Job controller, so counted by the
operator's own `kompression_api_writes_total`): {fig["writes_events_by_operator"]:.2f}. The operator's own
count of all its writes: {fig["writes_operator_own_per_job"]:.2f} per job. Reconcile errors: {fig["reconcile_errors"]:.0f}.
Annotating the {BURST} pods to exit took {fig["annotate_s"]:.1f} s.
"""


async def install_crd(client: Client) -> None:
    """Create the CompressionJob CRD and wait until the API server serves it."""
    for doc in yaml.safe_load_all(CRD.read_text()):
        await client.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}"
        for _ in range(100):
            conds = (await client.call("GET", crd_path)).get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            await asyncio.sleep(0.2)


async def start_operator(cluster: Cluster, workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """The operator as a process against `cluster` (its log in `workdir`/operator.log), once its
    metrics answer; returns it and its ports."""
    ports = {k: free_port() for k in ("metrics", "progress", "health")}
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
    with (workdir / "operator.log").open("wb") as log:
        op = subprocess.Popen(
            [sys.executable, "-m", "kompression.cli", "operator", "--log-level", "warning"]
            + [f"--{k}-port={v}" for k, v in ports.items()],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    for _ in range(200):
        try:
            await metrics_text(ports["metrics"])
            break
        except aiohttp.ClientError:
            await asyncio.sleep(0.3)
    return op, ports


def stop_operator(op: subprocess.Popen[bytes] | None) -> None:
    if op is not None and op.poll() is None:
        op.terminate()
        op.wait(30)


def keep_operator_log(workdir: Path, name: str) -> None:
    """Copy the operator's log out of the run's temporary directory, to .kompression/`name`."""
    log = workdir / "operator.log"
    if log.exists():
        (ROOT / ".kompression").mkdir(exist_ok=True)
        (ROOT / ".kompression" / name).write_bytes(log.read_bytes())


def restart_with(state_dir: Path, component: str, flags: dict[str, str]) -> None:
    """Restart a test-bed component with the same command line plus `flags` (same pid file)."""
    pidfile = state_dir / "pids" / f"{component}.pid"
    pid = int(pidfile.read_text().split()[0])
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    argv = [a for a in argv if a.split("=", 1)[0] not in flags] + [f"{k}={v}" for k, v in flags.items()]
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):  # our own child (the Cluster started it): reap it
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with (state_dir / "logs" / f"{component}.log").open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    pidfile.write_text(f"{proc.pid}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--kcm-qps",
        type=int,
        default=KCM_QPS,
        help="kube-controller-manager --kube-api-qps (0: the test bed's default, 20)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster")
        cluster.up()
        if args.kcm_qps:
            restart_with(
                cluster.dir,
                "kube-controller-manager",
                {
                    "--kube-api-qps": str(args.kcm_qps),
                    "--kube-api-burst": str(2 * args.kcm_qps),
                    "--concurrent-job-syncs": "20",
                },
            )
        try:
            fig = asyncio.run(bench(cluster, Path(tmp)))
            fig["kcm_qps"] = args.kcm_qps or 20
        finally:
            keep_operator_log(Path(tmp), "bench-operator.log")
            cluster.down(quiet=True)
    text = report(fig, time.monotonic() - started)
    write_report("operator", text)
    print(json.dumps(fig, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
