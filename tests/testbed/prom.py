"""Prometheus and Pushgateway from Debian's packages, on loopback, configured per test.

Prometheus runs with `--web.enable-lifecycle` so a test can swap its scrape targets with a
config reload instead of a restart (a restart would cost a TSDB open and a few seconds).
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .procs import LOOPBACK, Daemon, TestbedError, free_port, wait_for

SCRAPE_INTERVAL = "1s"  # tests wait for samples; a fast interval keeps them short
INSTALL_HINT = "install it with `make -f Makefile.testbed testbed-deps` (apt-get install {pkg})"


def debian_binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise TestbedError(f"{name} not found on PATH; " + INSTALL_HINT.format(pkg=package))
    return found


@dataclass(frozen=True)
class ScrapeTarget:
    """One scrape job; `address` is host:port of an HTTP server exposing `metrics_path`."""

    address: str
    job: str = ""
    metrics_path: str = "/metrics"
    # Pushgateway targets need honor_labels so pushed `job`/`instance` labels survive.
    honor_labels: bool = False

    def config(self, index: int) -> dict[str, Any]:
        return {
            "job_name": self.job or f"target-{index}",
            "metrics_path": self.metrics_path,
            "honor_labels": self.honor_labels,
            "scrape_interval": SCRAPE_INTERVAL,
            "static_configs": [{"targets": [self.address]}],
        }


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return dict(json.loads(r.read()))


class Prometheus:
    """A Prometheus server; call it with `scrape_targets=[...]` to (re)configure what it scrapes."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_file = workdir / "prometheus.yml"
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._binary = debian_binary("prometheus", "prometheus")
        self._daemon: Daemon | None = None

    def __call__(self, scrape_targets: Sequence[ScrapeTarget | str] = ()) -> Prometheus:
        self.configure(scrape_targets)
        return self

    def configure(self, scrape_targets: Sequence[ScrapeTarget | str]) -> None:
        """Write a config with exactly these targets, then start or hot-reload Prometheus."""
        targets = [t if isinstance(t, ScrapeTarget) else ScrapeTarget(t) for t in scrape_targets]
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [t.config(i) for i, t in enumerate(targets)],
        }
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        if self._daemon is None:
            self._start()
        else:
            req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
            urllib.request.urlopen(req, timeout=10).close()

    def _start(self) -> None:
        self._daemon = Daemon(
            "prometheus",
            [
                self._binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
            self.workdir / "prometheus.pid",
        )
        wait_for("prometheus /-/ready", lambda: _status(f"{self.url}/-/ready") == 200, timeout=30, alive=[self._daemon])

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the `result` list (vector samples with `metric` and `value`)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = _get_json(url)
        if body.get("status") != "success":
            raise TestbedError(f"query {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for_value(self, promql: str, timeout: float = 20) -> float:
        """Poll until `promql` returns a sample and return the first sample's value."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return float(result[0]["value"][1])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sample for {promql!r} within {timeout}s; targets: {self.active_targets()}")
            time.sleep(0.5)

    def active_targets(self) -> list[dict[str, Any]]:
        return list(_get_json(f"{self.url}/api/v1/targets")["data"]["activeTargets"])

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None


class Pushgateway:
    """A Pushgateway; `url` for pushing, `scrape_target` for handing it to Prometheus."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.url = f"http://{self.address}"
        self._daemon = Daemon(
            "prometheus-pushgateway",
            [
                debian_binary("prometheus-pushgateway", "prometheus-pushgateway"),
                f"--web.listen-address={self.address}",
                "--web.enable-admin-api",  # lets wipe() reset state between tests
                "--log.level=warn",
            ],
            workdir / "pushgateway.log",
            workdir / "pushgateway.pid",
        )
        wait_for(
            "pushgateway /-/ready", lambda: _status(f"{self.url}/-/ready") == 200, timeout=30, alive=[self._daemon]
        )

    @property
    def scrape_target(self) -> ScrapeTarget:
        return ScrapeTarget(self.address, job="pushgateway", honor_labels=True)

    def wipe(self) -> None:
        """Delete every pushed group."""
        req = urllib.request.Request(f"{self.url}/api/v1/admin/wipe", method="PUT")
        urllib.request.urlopen(req, timeout=5).close()

    def stop(self) -> None:
        self._daemon.stop()


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as r:
        return int(r.status)
