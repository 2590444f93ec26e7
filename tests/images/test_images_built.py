"""The built images (`make images`) hold what they promise and run as a pod runs them: UID 65532,
a read-only root, no capabilities, no network. Skipped, naming the fix, where the images are not
built or podman is missing (`make test-images` builds them first)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from built import REPO, TAGS, UID, VERSION, inspect, podman_run, require

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def _config(tag: str) -> dict[str, Any]:
    info = inspect(tag)
    assert info is not None
    config: dict[str, Any] = info["OCIv1"]["config"]  # type: ignore[index]
    return config


@pytest.mark.parametrize("name", TAGS)
def test_image_runs_as_65532_with_oci_labels_and_its_inputs(name: str) -> None:
    tag = require(name)
    config = _config(tag)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["kompression"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == f"kompression-{name}"
    for key in ("description", "source", "licenses", "base.name"):
        assert labels[f"org.opencontainers.image.{key}"], key
    # The build cache's key: a rebuild with the same inputs is skipped.
    assert re.fullmatch(r"[0-9a-f]{64}", labels["dev.kompression.inputs"])


@pytest.mark.parametrize("name", TAGS)
def test_version_prints_the_libraries_with_a_read_only_root(name: str) -> None:
    tag = require(name)
    proc = podman_run(tag, "version")
    assert proc.returncode == 0, proc.stderr
    versions = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert versions["kompression"] == VERSION
    if name == "operator":
        assert versions["torch"] == "-" and versions["kopf"] != "-" and versions["aiohttp"] != "-"
    elif name == "worker-cpu":
        assert versions["torch"].startswith("2.15.") and versions["onnxruntime"] != "-"
        assert versions["kopf"] == "-" and versions["tensorrt"] == "-"
    else:
        assert versions["llmcompressor"] != "-" and versions["nvidia-modelopt"] != "-"


@pytest.mark.parametrize("name", TAGS)
def test_no_build_tools_pip_or_caches_and_the_root_is_read_only(name: str) -> None:
    tag = require(name)
    probe = (
        "import os, shutil, sys\n"
        "found = [t for t in ('gcc', 'cc', 'g++', 'make', 'ld') if shutil.which(t)]\n"
        "found += [p for p in ('/opt/kompression/bin/pip', '/root/.cache/pip', '/src', '/wheels') if os.path.exists(p)]\n"
        # Compiled at build time: the root is read-only, so a start could not cache what it compiles.
        "import importlib.util, kompression.cli\n"
        "print('compiled', os.path.exists(importlib.util.cache_from_source(kompression.cli.__file__)))\n"
        "print('found', found)\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "try:\n"
        "    open('/opt/kompression/written', 'w')\n"
        "except OSError as e:\n"
        "    print('write', e.errno)\n"
    )
    proc = podman_run(tag, "-c", probe, entrypoint="/opt/kompression/bin/python")
    assert proc.returncode == 0, proc.stderr
    assert "found []" in proc.stdout
    assert "compiled True" in proc.stdout
    assert f"uid {UID} {UID}" in proc.stdout
    assert "write 30" in proc.stdout  # EROFS


def test_cpu_worker_leaves_out_what_torch_does_not_load_on_a_cpu() -> None:
    tag = require("worker-cpu")
    probe = (
        "import importlib.metadata as m, torch\n"
        "print(sorted({d.metadata['Name'].lower().replace('_', '-') for d in m.distributions()}))\n"
        "print(torch.cuda.is_available(), torch.nn.Linear(4, 2)(torch.ones(1, 4)).shape)\n"
    )
    proc = podman_run(tag, "-c", probe, entrypoint="/opt/kompression/bin/python")
    assert proc.returncode == 0, proc.stderr
    installed = set(ast.literal_eval(proc.stdout.splitlines()[-2]))
    assert not installed & {"triton", "nvidia-cusolver", "nvidia-nvtx", "cuda-bindings", "cuda-toolkit"}
    # What libtorch_cuda.so links stays, or `import torch` fails even on a CPU.
    assert {"nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= installed
    assert proc.stdout.splitlines()[-1] == "False torch.Size([1, 2])"


@pytest.mark.slow
def test_cpu_worker_runs_the_quickstart_as_a_pod_would(tmp_path: Path) -> None:
    tag = require("worker-cpu")
    job = yaml.safe_load(QUICKSTART.read_text())
    job["spec"]["model"]["uri"] = "file:///tmp/digits-cnn.pt2"
    job["spec"]["output"]["uri"] = "file:///out/"
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "quickstart.yaml").write_text(yaml.safe_dump(job))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the container's UID 65532 writes here; nothing else is writable
    script = "kompression example-model --output file:///tmp/digits-cnn.pt2 && kompression run /job/quickstart.yaml"
    proc = podman_run(
        tag,
        "-c",
        script,
        entrypoint="/bin/sh",
        mounts=(f"{tmp_path / 'job'}:/job:ro", f"{out}:/out"),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert any(name.endswith(".onnx") for name in written), written
