"""The cached helm binary, pointed at the test bed's kubeconfig."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .cluster import binary
from .procs import TestbedError


class Helm:
    """`binary` is the helm path; `run(...)` invokes it with the test bed as its cluster."""

    def __init__(self, kubeconfig: Path | None, workdir: Path) -> None:
        self.binary = binary("helm")
        self.kubeconfig = kubeconfig
        # Private cache/config dirs: tests must not read or write the developer's helm repos.
        self._env = {
            **os.environ,
            "HELM_CACHE_HOME": str(workdir / "cache"),
            "HELM_CONFIG_HOME": str(workdir / "config"),
            "HELM_DATA_HOME": str(workdir / "data"),
        }
        if kubeconfig is not None:
            self._env["KUBECONFIG"] = str(kubeconfig)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], env=self._env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise TestbedError(f"helm {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc
