"""Runs `kompression operator` as a real subprocess against the test bed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from testbed.procs import free_port

CRD = Path(__file__).resolve().parents[2] / "crds" / "compressionjobs.kompression.dev.yaml"
SWEEP_CRD = CRD.with_name("compressionsweeps.kompression.dev.yaml")


def install_crd(kube: Any, *extra: Path) -> None:
    """Apply the generated CRDs (and any other CRD files) and wait until they serve."""
    files = [arg for path in (CRD, SWEEP_CRD, *extra) for arg in ("-f", str(path))]
    kube.kubectl("apply", "--server-side", "--force-conflicts", *files)
    kube.wait_established(CRD.stem, timeout=30)
    kube.wait_established(SWEEP_CRD.stem, timeout=30)


class OperatorProcess:
    def __init__(self, kube: Any, log_dir: Path, *extra: str, verbose: bool = True) -> None:
        self.kube, self.log_dir, self.extra, self.verbose = kube, log_dir, extra, verbose
        self.metrics_port, self.progress_port, self.health_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def progress_base_url(self) -> str:
        return f"http://127.0.0.1:{self.progress_port}"

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kompression.cli",
                "operator",
                *(["--verbose"] if self.verbose else []),
                "--metrics-port",
                str(self.metrics_port),
                "--progress-port",
                str(self.progress_port),
                "--health-port",
                str(self.health_port),
                "--progress-base-url",
                self.progress_base_url,
                "--progress-interval",
                "1",
                *self.extra,
            ],
            env=self.kube.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError("operator did not become healthy")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def log(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())


def get_json(kube: Any, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)
