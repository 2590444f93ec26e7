"""The images `make images` builds (hack/build-images.sh), and running them the way a pod does.

Containers run with podman (no daemon) as UID 65532, with a read-only root, every capability
dropped, no network and a tmpfs /tmp: what the operator's pod spec asks of a kubelet. On VMs with
hybrid cgroups and no CAP_SYS_RESOURCE podman needs the cgroupfs manager, runc, and rlimits no
as high as the current ones.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PREFIX = "ghcr.io/kompression"
TAGS = {
    "operator": f"{PREFIX}/operator:{VERSION}",
    "worker-cpu": f"{PREFIX}/worker:{VERSION}-cpu",
    "worker-llm": f"{PREFIX}/worker-llm:{VERSION}",
}
UID = "65532"
RLIMIT = 8192
# Opt-in: `make test` does not build the images (minutes, gigabytes); `make test-images` does.
OPT_IN = "KOMPRESSION_TEST_IMAGES"


def inspect(tag: str) -> dict[str, object] | None:
    """buildah's view of an image (config, labels, size), or None when it is not built."""
    if shutil.which("buildah") is None:
        return None
    proc = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    info: dict[str, object] = json.loads(proc.stdout)
    return info


def require(name: str) -> str:
    """The image's tag; skips the test (naming the fix) unless asked for (`make test-images` sets
    KOMPRESSION_TEST_IMAGES=1), or when the image is not built or podman is missing."""
    tag = TAGS[name]
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"the built images' tests run with `make test-images` ({OPT_IN}=1)")
    if shutil.which("podman") is None or shutil.which("buildah") is None:
        pytest.skip("podman and buildah are not installed (apt-get install podman buildah)")
    if inspect(tag) is None:
        pytest.skip(f"{tag} is not built: run `make images` (hack/build-images.sh {name})")
    return tag


def podman_run(
    tag: str, *args: str, entrypoint: str | None = None, mounts: tuple[str, ...] = (), timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    # Well below the current limits: without CAP_SYS_RESOURCE runc failed with EPERM on the current
    # values, on half of them, and on 40000 processes; 8192 of each served.
    nofile = min(RLIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    nproc = min(RLIMIT, resource.getrlimit(resource.RLIMIT_NPROC)[0])
    argv = [
        "podman",
        "--cgroup-manager=cgroupfs",
        "--runtime=runc",
        "run",
        "--rm",
        "--read-only",
        "--read-only-tmpfs=false",
        "--tmpfs=/tmp:rw,size=1g,mode=1777",
        f"--user={UID}:{UID}",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--network=none",
        f"--ulimit=nofile={nofile}:{nofile}",
        f"--ulimit=nproc={nproc}:{nproc}",
        "--pull=never",
    ]
    argv += [f"--volume={m}" for m in mounts]
    if entrypoint is not None:
        argv.append(f"--entrypoint={entrypoint}")
    return subprocess.run([*argv, tag, *args], capture_output=True, text=True, timeout=timeout, check=False)
