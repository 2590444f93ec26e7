"""Pinned requirements for the CPU worker image, from pip's install report, without the CUDA parts
that `import torch` does not load.

PyPI's Linux x86_64 torch is the CUDA build, and its libtorch_cuda.so is linked against cudart,
cuBLAS, cuFFT, cuFile, cuSPARSE(Lt), nvJitLink, NVRTC, cuDNN, NCCL, NVSHMEM and CUPTI: without them
`import torch` fails, so they stay. What nothing links and a CPU never loads leaves: triton (the GPU
kernel compiler, about 1 GB), cuSOLVER, NVTX, CCCL (headers), curand and the cuda-python bindings.
The image's build checks that torch still imports and runs a convolution.

Usage: python cpu-requirements.py REPORT.json > requirements.txt
"""

from __future__ import annotations

import json
import re
import sys

LEAVE_OUT = frozenset(
    {
        "triton",
        "cuda-bindings",
        "cuda-pathfinder",
        "cuda-toolkit",
        "nvidia-cusolver",
        "nvidia-cusolver-cu12",
        "nvidia-nvtx",
        "nvidia-nvtx-cu12",
        "nvidia-cuda-cccl",
        "nvidia-curand",
        "nvidia-curand-cu12",
    }
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(report_path: str) -> int:
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    for item in report["install"]:
        name = normalize(item["metadata"]["name"])
        if name in LEAVE_OUT or name == "kompression":
            continue
        print(f"{name}=={item['metadata']['version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
