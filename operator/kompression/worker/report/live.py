"""What the worker tells the world while it runs, and when it stops.

- stdout: JSON lines (``--progress json``, the default off a TTY) or a progress bar (on a TTY).
- ``KOMPRESSION_PROGRESS_URL``: every state change POSTs a full WorkerReport (one snapshot, an
  increasing ``sequence``: milliseconds since the worker started) with
  ``Authorization: Bearer <KOMPRESSION_PROGRESS_TOKEN_FILE>``. A
  background thread sends only the newest snapshot, retries a few times, and never blocks the
  pipeline; a lost report is harmless because the next one replaces it.
- ``KOMPRESSION_PUSHGATEWAY_URL``: per-step gauges pushed with prometheus-client.
- At exit a compact WorkerReport (< 4096 bytes, the kubelet's limit) goes to the termination-message
  path: ``KOMPRESSION_TERMINATION_LOG`` if set, else /dev/termination-log when writable.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TextIO

from kompression.api.constants import (
    ENV_PROGRESS_TOKEN_FILE,
    ENV_PROGRESS_URL,
    ENV_PUSHGATEWAY_URL,
    TERMINATION_MESSAGE_PATH,
)
from kompression.api.failures import Reason
from kompression.api.report import WorkerReport
from kompression.api.timestamps import now
from kompression.api.v1alpha1 import (
    Artifact,
    CompressionJob,
    Environment,
    MemoryPlan,
    Metrics,
    Progress,
    Result,
    StepStatus,
)

ENV_TERMINATION_LOG = "KOMPRESSION_TERMINATION_LOG"
TERMINATION_LIMIT = 4096
POST_ATTEMPTS = 3
POST_TIMEOUT_S = 5.0
BAR_WIDTH = 30


class _Poster:
    """Delivers the newest snapshot to the progress URL from a daemon thread."""

    def __init__(self, url: str, token_file: str | None) -> None:
        self.url = url
        self.token_file = token_file
        self._pending: bytes | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._loop, name="progress-post", daemon=True)
        self._thread.start()

    def submit(self, body: bytes) -> None:
        with self._cond:
            self._pending = body  # an older unsent snapshot is superseded, not queued
            self._cond.notify()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            # Read every time: the kubelet rotates projected tokens in place.
            with contextlib.suppress(OSError):
                headers["Authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
        return headers

    def _send(self, body: bytes) -> None:
        for attempt in range(POST_ATTEMPTS):
            try:
                req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
                with urllib.request.urlopen(req, timeout=POST_TIMEOUT_S) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
            except Exception:  # best effort: the operator may be restarting
                pass
            time.sleep(0.2 * (2**attempt))
        self.failed += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                body, self._pending, self._busy = self._pending, None, True
            self._send(body)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Wait (bounded) for the last snapshot to go out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._pending is not None or self._busy) and time.monotonic() < deadline:
                self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))


class Reporter:
    """Holds the worker's state as a WorkerReport and publishes every change."""

    def __init__(
        self, job: CompressionJob, mode: str = "json", stream: TextIO | None = None, leader: bool = True
    ) -> None:
        self.job = job
        # Only one process of a torchrun group speaks for the job: the others stay silent.
        self.leader = leader
        self.mode = mode if leader else "quiet"  # "json", "bar" or "quiet"
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.steps = [StepStatus(name=s.name) for s in job.spec.steps]
        self.units_total = len(self.steps) + 2  # baseline evaluation + steps + publication
        self.units_done = 0.0
        self.report = WorkerReport(phase="Running", steps=self.steps)
        self.step_timings: dict[str, float] = {}
        self._step_started: dict[str, float] = {}
        url = os.environ.get(ENV_PROGRESS_URL) if leader else None
        self.poster = _Poster(url, os.environ.get(ENV_PROGRESS_TOKEN_FILE)) if url else None
        self.pushgateway = (os.environ.get(ENV_PUSHGATEWAY_URL) or None) if leader else None

    # ---------------------------------------------------------------------------------- state

    def _status(self, name: str) -> StepStatus:
        return next(s for s in self.steps if s.name == name)

    def progress(self) -> Progress:
        fraction = min(1.0, self.units_done / self.units_total)
        elapsed = time.monotonic() - self.started
        eta = int(elapsed / fraction * (1 - fraction)) if fraction > 0.02 else None
        return Progress(percentage=int(fraction * 100), estimatedRemainingSeconds=eta, lastUpdateTime=now())

    def phase_done(self, what: str) -> None:
        """Baseline evaluation or publication finished (one unit each)."""
        self.units_done += 1
        self._emit({"event": f"{what}Finished"})

    def step_started(self, name: str) -> None:
        status = self._status(name)
        status.phase, status.startTime = "Running", now()
        self._step_started[name] = time.monotonic()
        self.report.currentStep = name
        self._step_base = self.units_done
        self._emit({"event": "StepStarted", "step": name})

    def step_progress(self, name: str, fraction: float, message: str) -> None:
        # status.steps[].message says where a running step is ("layer 3 of 32, ETA 540s"); the
        # finished step's summary replaces it.
        self._status(name).message = message[:4096]
        self.units_done = self._step_base + max(0.0, min(1.0, fraction)) * 0.9
        self._emit({"event": "StepProgress", "step": name, "fraction": round(fraction, 3), "message": message})

    def step_finished(self, name: str, metrics: Metrics, message: str | None = None) -> None:
        status = self._status(name)
        status.phase, status.completionTime, status.metrics = "Succeeded", now(), metrics
        status.message = message
        self.step_timings[name] = round(time.monotonic() - self._step_started.get(name, self.started), 3)
        self.units_done = self._step_base + 1
        self._emit({"event": "StepFinished", "step": name, "metrics": metrics.to_wire()})
        self._push_metrics()

    def step_failed(self, name: str, message: str) -> None:
        status = self._status(name)
        status.phase, status.completionTime, status.message = "Failed", now(), message[:4096]

    def reset_steps(self) -> None:
        """A new tuning trial starts: steps run again from the top."""
        for s in self.steps:
            s.phase, s.startTime, s.completionTime, s.metrics, s.message = "Pending", None, None, None, None
        self.units_done = 1

    def set_environment(self, env: Environment) -> None:
        self.report.environment = env

    def set_memory_plan(self, plan: MemoryPlan) -> None:
        """Sent at once: if the pod is killed for memory later, the operator names the plan."""
        self.report.memoryPlan = plan
        self._emit({"event": "MemoryPlanned", **plan.model_dump()})

    def set_result(self, result: Result) -> None:
        self.report.result = result

    def set_artifacts(self, artifacts: list[Artifact]) -> None:
        self.report.artifacts = artifacts

    def finish(self, phase: str, reason: Reason | None = None, message: str | None = None) -> WorkerReport:
        """Record the final state, send it everywhere and write the termination message."""
        self.report.phase = phase  # type: ignore[assignment]
        self.report.reason, self.report.message = reason, (message or "")[:4096] or None
        self.report.currentStep = None
        for s in self.steps:
            if s.phase in ("Pending", "Running"):
                s.phase = "Skipped" if s.phase == "Pending" else "Failed"
        if phase == "Succeeded":
            self.units_done = self.units_total
        self._emit({"event": "Finished", "phase": phase, "reason": reason, "message": message})
        if self.poster is not None:
            self.poster.close(timeout=POST_TIMEOUT_S * POST_ATTEMPTS)
        self._push_metrics()
        if self.leader:
            write_termination_message(self.report)
        return self.report

    # ---------------------------------------------------------------------------------- output

    def _emit(self, event: dict[str, Any]) -> None:
        self.report.progress = self.progress()
        # Milliseconds since the worker started (and never the same twice): the operator refuses a
        # sequence beyond the pod's age, so one forged huge sequence cannot make real reports stale.
        self.report.sequence = max(self.report.sequence + 1, int((time.monotonic() - self.started) * 1000))
        if self.mode == "json":
            line = {
                "time": now(),
                **event,
                "percent": self.report.progress.percentage,
                "etaSeconds": self.report.progress.estimatedRemainingSeconds,
            }
            self.stream.write(json.dumps(line, default=str) + "\n")
            self.stream.flush()
        elif self.mode == "bar":
            self._draw_bar(event)
        if self.poster is not None:
            self.poster.submit(self.report.model_dump_json(by_alias=True, exclude_none=True).encode())

    def _draw_bar(self, event: dict[str, Any]) -> None:
        assert self.report.progress is not None
        pct = self.report.progress.percentage
        filled = int(BAR_WIDTH * pct / 100)
        eta = self.report.progress.estimatedRemainingSeconds
        label = event.get("step") or event.get("event", "")
        tail = f" ETA {eta}s" if eta is not None and pct < 100 else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {pct:3d}% {label:<24.24}{tail:<12}")
        if event.get("event") == "Finished":
            self.stream.write("\n")
        self.stream.flush()

    def _push_metrics(self) -> None:
        if not self.pushgateway:
            return
        from prometheus_client import CollectorRegistry, Gauge, push_to_gateway  # only with a Pushgateway

        registry = CollectorRegistry()
        labels = ["step"]
        gauges = {
            "sizeBytes": Gauge(
                "kompression_step_size_bytes", "Model size on disk after the step", labels, registry=registry
            ),
            "parameters": Gauge("kompression_step_parameters", "Parameters after the step", labels, registry=registry),
            "accuracy": Gauge(
                "kompression_step_accuracy", "Evaluation metric after the step", labels, registry=registry
            ),
            "latencyMs": Gauge(
                "kompression_step_latency_ms", "Median latency after the step", labels, registry=registry
            ),
            "sparsity": Gauge(
                "kompression_step_sparsity", "Fraction of zero weights after the step", labels, registry=registry
            ),
        }
        duration = Gauge("kompression_step_duration_seconds", "Wall time of the step", labels, registry=registry)
        for s in self.steps:
            if s.metrics is None:
                continue
            for key, gauge in gauges.items():
                value = getattr(s.metrics, key)
                if value is not None:
                    gauge.labels(step=s.name).set(value)
            if s.name in self.step_timings:
                duration.labels(step=s.name).set(self.step_timings[s.name])
        meta = self.job.metadata
        grouping = {"namespace": meta.namespace or "local", "compressionjob": meta.name or "unnamed"}
        try:
            push_to_gateway(self.pushgateway, job="kompression", registry=registry, grouping_key=grouping, timeout=5)
        except Exception as exc:  # metrics are best effort; the run's outcome never depends on them
            sys.stderr.write(f"warning: cannot push metrics to {self.pushgateway}: {exc}\n")


def compact(report: WorkerReport, limit: int = TERMINATION_LIMIT) -> str:
    """The report as JSON under limit bytes: drop detail (steps, artifacts' names, baseline) as needed."""
    slim = WorkerReport(
        phase=report.phase,
        reason=report.reason,
        message=report.message,
        result=report.result,
        artifacts=report.artifacts,
        memoryPlan=report.memoryPlan,  # a few numbers: the operator's planning pod reports it so
        sequence=report.sequence,
    )

    def text() -> str:
        return slim.model_dump_json(by_alias=True, exclude_none=True)

    if len(text().encode()) > limit:
        slim.artifacts = [a for a in slim.artifacts if a.kind not in ("Plot", "Report")]
    if len(text().encode()) > limit and slim.message:
        slim.message = slim.message[:1024]
    if len(text().encode()) > limit and slim.result is not None:
        slim.result = slim.result.model_copy(update={"baseline": None, "final": None, "speedupBaseline": None})
    if len(text().encode()) > limit:
        slim.artifacts = [a for a in slim.artifacts if a.kind == "Manifest"]
    return text()


def termination_log_path() -> Path | None:
    override = os.environ.get(ENV_TERMINATION_LOG)
    if override:
        return Path(override)
    default = Path(TERMINATION_MESSAGE_PATH)
    if default.exists() and os.access(default, os.W_OK):
        return default
    return None


def write_termination_message(report: WorkerReport) -> None:
    path = termination_log_path()
    if path is None:
        return
    try:
        path.write_text(compact(report))
    except OSError as exc:
        sys.stderr.write(f"warning: cannot write the termination message to {path}: {exc}\n")


@contextmanager
def _diverted(streams: Sequence[TextIO], target: IO[Any]) -> Iterator[Sequence[TextIO]]:
    """Point the file descriptors under `streams` at `target`'s for the duration, C extensions'
    writes included, and yield private line-buffered handles on the original descriptors.

    Captured or replaced streams (no real descriptor, as under pytest) are left alone and yielded
    as they are.
    """
    try:
        fds = [stream.fileno() for stream in streams]
        into = target.fileno()
    except (AttributeError, OSError, ValueError):
        yield list(streams)
        return
    for stream in streams:
        stream.flush()
    saved = [os.dup(fd) for fd in fds]
    private = [os.fdopen(os.dup(fd), "w", buffering=1) for fd in saved]
    for fd in fds:
        os.dup2(into, fd)
    try:
        yield private
    finally:
        for stream in (*private, *streams):
            stream.flush()
        for fd, original in zip(fds, saved, strict=True):
            os.dup2(original, fd)
            os.close(original)
        for stream in private:
            stream.close()


@contextmanager
def reserved_stdout() -> Iterator[TextIO]:
    """Keep stdout for the JSON-lines progress stream alone.

    Libraries print to stdout (onnxruntime's calibrator does, from Python and C++), which would
    corrupt the stream a consumer parses. So file descriptor 1 is pointed at stderr for the
    duration, and progress gets a private handle on the real stdout.
    """
    with _diverted((sys.stdout,), sys.stderr) as (stdout,):
        yield stdout


@contextmanager
def libraries_logged(log: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """Keep the terminal for the progress bar, the final table and Kompression's own errors.

    Libraries print to stdout and stderr from Python and C++ (onnxruntime's calibrator, torch's
    warnings), which would tear the bar apart mid-line. So file descriptors 1 and 2 point at `log`
    for the duration, and the caller gets private handles on the real stdout and stderr.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink, _diverted((sys.stdout, sys.stderr), sink) as (stdout, stderr):
        yield stdout, stderr
