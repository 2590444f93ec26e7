"""Images: the size of each image `make images` builds, and the container's overhead on the
quickstart: `kompression run` of examples/quickstart.yaml in this environment against the same
run in the CPU worker image under podman, as a pod runs it (UID 65532, read-only root, no
capabilities, no network). Writes benchmarks/results/images.md.

    .venv/bin/python benchmarks/bench_images.py [--runs 5]     # needs buildah and podman; `make images` first
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import ROOT, write_report

sys.path.insert(0, str(ROOT / "tests" / "images"))
from built import TAGS, inspect, podman_run  # tests/images/built.py: the tags and the pod-like podman run

KOMPRESSION = str(Path(sys.executable).parent / "kompression")


def size_mb(tag: str) -> float:
    """buildah's figure: the sum of the uncompressed layers."""
    listed = subprocess.run(
        ["buildah", "images", "--format", "{{.Size}}", tag], capture_output=True, text=True, check=True
    ).stdout.strip()
    value, unit = listed.split()
    return float(value) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[unit]


def base_name(tag: str) -> str:
    out = subprocess.run(["buildah", "inspect", "--type", "image", tag], capture_output=True, text=True, check=True)
    labels = json.loads(out.stdout)["OCIv1"]["config"]["Labels"]
    return str(labels.get("org.opencontainers.image.base.name", "?"))


def job_file(workdir: Path, model: str, output: str) -> Path:
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["spec"]["model"]["uri"] = model
    job["spec"]["output"]["uri"] = output
    path = workdir / "quickstart.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def outside(workdir: Path) -> float:
    model = f"file://{workdir}/digits-cnn.pt2"
    subprocess.run([KOMPRESSION, "example-model", "--output", model], check=True, capture_output=True)
    job = job_file(workdir, model, f"file://{workdir}/out/")
    started = time.monotonic()
    subprocess.run([KOMPRESSION, "run", str(job)], check=True, capture_output=True)
    return time.monotonic() - started


def inside(workdir: Path) -> float:
    (workdir / "job").mkdir()
    job_file(workdir / "job", "file:///tmp/digits-cnn.pt2", "file:///tmp/out/")
    # The model is trained in the same container (the root is read-only; /tmp is its tmpfs), and
    # the run is timed from inside, so the figure is the run's, plus nothing of the training.
    script = (
        "kompression example-model --output file:///tmp/digits-cnn.pt2 >/dev/null"
        " && s=$(date +%s.%N) && kompression run /job/quickstart.yaml >/dev/null"
        ' && e=$(date +%s.%N) && echo "run $s $e"'
    )
    proc = podman_run(TAGS["worker-cpu"], "-c", script, entrypoint="/bin/sh", mounts=(f"{workdir / 'job'}:/job:ro",))
    if proc.returncode != 0:
        raise SystemExit(f"the run in the container failed:\n{proc.stderr[-2000:]}")
    _, start, end = proc.stdout.split()[-3:]
    return float(end) - float(start)


def container_start() -> float:
    started = time.monotonic()
    proc = podman_run(TAGS["worker-cpu"], "version")
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("buildah") is None or shutil.which("podman") is None:
        raise SystemExit("needs buildah and podman (apt-get install buildah podman), and `make images`")
    rows = [
        f"| `{tag}` | {size_mb(tag) / 1000:.2f} GB | `{base_name(tag)}` |"
        if inspect(tag) is not None
        else f"| `{tag}` | not built | |"
        for tag in TAGS.values()
    ]
    runs_out, runs_in, starts = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            runs_out.append(outside(Path(a)))
            Path(b).chmod(0o755)
            runs_in.append(inside(Path(b)))
        starts.append(container_start())
    med_out, med_in = statistics.median(runs_out), statistics.median(runs_in)
    text = f"""# Images and the real node (`benchmarks/bench_images.py`)

`benchmarks/bench_images.py --runs {args.runs}` on {platform.machine()}, 2 CPU cores (shared machine). Sizes
are buildah's (uncompressed layers); the bases are the stand-in `make images` builds where no
registry is reachable (Debian bookworm minbase with Python 3.11, see docs/install.md).

| image | size | base |
|---|---|---|
{chr(10).join(rows)}

The CPU worker leaves out what `import torch` never loads on a CPU (triton, cuSOLVER, NVTX, CCCL,
cuda-bindings: about 1.3 GB of PyPI's wheels); cuBLAS, cuDNN, cuFFT, cuSPARSE(Lt), NCCL, NVSHMEM,
NVRTC and CUPTI stay (2.8 GB), because PyPI's x86_64 torch is the CUDA build and its
libtorch_cuda.so links them: without any one, `import torch` fails.

The quickstart's `kompression run` (examples/quickstart.yaml), median of {args.runs}:

| where | run s | container start s |
|---|---|---|
| this environment (`.venv`, Python {platform.python_version()}) | {med_out:.1f} | - |
| the CPU worker image under podman, UID 65532, read-only root | {med_in:.1f} | {statistics.median(starts):.1f} |

**Container overhead on the run: {med_in / med_out:.2f}x** (the image's Python is the base's, the
libraries the same versions).
"""
    write_report("images", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
