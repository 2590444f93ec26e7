"""One prepared GPU check (about 6 minutes on one H200): what Kompression's GPU paths buy.

    python benchmarks/gpu_check.py                # needs CUDA; writes $OUT/gpu.json and $OUT/gpu.md
    python benchmarks/gpu_check.py --dry-run-cpu  # the same code on CPU with tiny sizes (no figures)

Sections, each timed interleaved (candidates alternate within every repetition), medians:
  precision  ResNet-18/50 batch 64: fp32 vs Kompression Float16/BFloat16, eager and torch.compile
  structured ResNet-50 batch 64 fp32: dense vs Kompression L1Structured 0.5 (its layout timed on cuda)
  sparse24   a BERT-sized FFN in fp16: dense vs Kompression SemiStructured24 (to_sparse_semi_structured)
  int8       torch._int_mm vs fp16 matmul; onnxruntime CUDA EP QDQ ResNet-18 vs fp32 when available
  fp8        the same FFN in bf16: dense vs Kompression FP8 (torch._scaled_mm)
  distill    bench_distill's teacher and student on cuda through Kompression's distill step
  llm        a Llama quantized by `kompression run` (W4A16 RTN, FP8Dynamic, FP8Dynamic ModelOpt): generate
             tokens/s of the original and each published folder in vLLM (when importable) and transformers
A failing section is recorded with its error and the others still run; a time budget skips what
would overrun.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common import job_context, workdir
from kompression.worker.model import Dataset, DataSets, OnnxModel, TorchModel
from kompression.worker.techniques import TECHNIQUES

BUDGET_S = 7 * 60  # leaves a minute of the 8 for start-up and writing
START = time.monotonic()
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sizes:
    device: str
    batch: int  # images per ResNet call
    image: int
    model_dim: int  # FFN width (BERT-large: 1024, 4096 hidden; here larger so GEMMs dominate)
    ffn_hidden: int
    tokens: int
    gemm: int  # M = N = K of the int8 GEMM
    repeats: int
    inner: int
    compile_backend: str
    distill_epochs: int
    teacher_max_epochs: int


FULL = Sizes("cuda", 64, 224, 4096, 16384, 8192, 8192, 9, 10, "inductor", 20, 40)
# Tiny, on CPU: every call runs once or twice so that typos and API misuse show without a GPU.
DRY = Sizes("cpu", 2, 32, 64, 256, 32, 64, 2, 1, "eager", 1, 2)


def over_budget() -> bool:
    return time.monotonic() - START > BUDGET_S


def timed(candidates: dict[str, Callable[[], object]], sizes: Sizes) -> dict[str, float]:
    """Median ms per call, candidates interleaved, with a device sync around each timed block."""

    def sync() -> None:
        if sizes.device == "cuda":
            torch.cuda.synchronize()

    for fn in candidates.values():
        for _ in range(2):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(sizes.repeats):
        for name, fn in candidates.items():
            sync()
            start = time.perf_counter()
            for _ in range(sizes.inner):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / sizes.inner * 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def rows_from(section: str, times: dict[str, float], baseline: str, notes: dict[str, str] | None = None) -> list[Row]:
    notes = notes or {}
    return [
        {
            "section": section,
            "candidate": name,
            "ms": round(ms, 3),
            "speedup": round(times[baseline] / ms, 3),
            "baseline": baseline,
            "note": notes.get(name, ""),
        }
        for name, ms in times.items()
    ]


def technique(model: TorchModel, step: dict[str, Any], shape: list[int], sizes: Sizes, data: DataSets) -> Any:
    ctx = job_context(step, workdir(), shape, data, device=sizes.device)
    return TECHNIQUES[type(ctx.config)](model, ctx)


def precision(sizes: Sizes) -> list[Row]:
    import torchvision

    rows: list[Row] = []
    shape = [-1, 3, sizes.image, sizes.image]
    for arch in ("resnet18", "resnet50"):
        # channels_last for every candidate: the layout tensor-core convolutions want, kept the same
        # for fp32 so that only the precision differs.
        base = getattr(torchvision.models, arch)().eval().to(sizes.device).to(memory_format=torch.channels_last)
        x = torch.randn(sizes.batch, 3, sizes.image, sizes.image, device=sizes.device)
        x = x.contiguous(memory_format=torch.channels_last)
        models: dict[str, Callable[..., Any]] = {"fp32": base}
        for method in ("Float16", "BFloat16"):
            models[method] = technique(
                TorchModel(base, (x[:1],)), {"name": "q", "quantize": {"method": method}}, shape, sizes, DataSets()
            ).model.module
        notes: dict[str, str] = {}
        if arch == "resnet50":
            for name in ("fp32", "Float16"):
                if over_budget():
                    notes[f"{name} compiled"] = "skipped: time budget"
                    continue
                compiled = torch.compile(models[name], backend=sizes.compile_backend)
                started = time.perf_counter()
                with torch.inference_mode():
                    compiled(x)
                models[f"{name} compiled"] = compiled
                notes[f"{name} compiled"] = f"first call (compile) {time.perf_counter() - started:.0f} s"
        with torch.inference_mode():
            times = timed({name: functools.partial(m, x) for name, m in models.items()}, sizes)
        rows += rows_from(f"precision {arch} b{sizes.batch}", times, "fp32", notes)
    return rows


class Ffn(nn.Module):
    """A transformer feed-forward block plus a small head (the head stays dense: it is the classifier)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.down(nn.functional.gelu(self.up(x))))
        return out


def structured(sizes: Sizes) -> list[Row]:
    """Structured pruning on the GPU: the prune step's layout choice runs its cuda-synchronized timing."""
    import torchvision

    dense = torchvision.models.resnet50().eval().to(sizes.device)
    x = torch.randn(sizes.batch, 3, sizes.image, sizes.image, device=sizes.device)
    step = {"name": "p", "prune": {"method": "L1Structured", "sparsity": 0.5}}
    result = technique(TorchModel(dense, (x[:1],)), step, [-1, 3, sizes.image, sizes.image], sizes, DataSets())
    pruned = result.model.module
    dense_cl = copy.deepcopy(dense).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        times = timed(
            {
                "dense fp32": lambda: dense(x),
                "dense fp32 channels-last": lambda: dense_cl(x),
                "L1Structured 0.5": lambda: pruned(x),
            },
            sizes,
        )
    layout = ", ".join(f"{k}={v}" for k, v in result.notes.items() if k.startswith(("memoryFormat", "layoutMs")))
    return rows_from(
        f"structured prune ResNet-50 b{sizes.batch} fp32", times, "dense fp32", {"L1Structured 0.5": layout}
    )


def sparse24(sizes: Sizes) -> list[Row]:
    torch.manual_seed(0)
    dense = Ffn(sizes.model_dim, sizes.ffn_hidden).half().to(sizes.device).eval()
    x = torch.randn(sizes.tokens, sizes.model_dim, device=sizes.device, dtype=torch.float16)
    step = {"name": "p", "prune": {"method": "SemiStructured24"}}
    result = technique(TorchModel(dense, (x[:64],)), step, [-1, sizes.model_dim], sizes, DataSets())
    sparse = result.model.module
    with torch.inference_mode():
        times = timed({"dense fp16": lambda: dense(x), "SemiStructured24 fp16": lambda: sparse(x)}, sizes)
    note = ", ".join(f"{k}={v}" for k, v in result.notes.items() if k.startswith("sparseKernel"))
    return rows_from(
        f"sparse24 FFN {sizes.model_dim}x{sizes.ffn_hidden}, {sizes.tokens} tokens",
        times,
        "dense fp16",
        {"SemiStructured24 fp16": note},
    )


def int8(sizes: Sizes) -> list[Row]:
    n = sizes.gemm
    a16 = torch.randn(n, n, device=sizes.device, dtype=torch.float16)
    b16 = torch.randn(n, n, device=sizes.device, dtype=torch.float16)
    a8 = torch.randint(-127, 127, (n, n), device=sizes.device, dtype=torch.int8)
    b8 = torch.randint(-127, 127, (n, n), device=sizes.device, dtype=torch.int8)
    times = timed({"fp16 matmul": lambda: a16 @ b16, "torch._int_mm int8": lambda: torch._int_mm(a8, b8)}, sizes)
    rows = rows_from(f"int8 GEMM {n}x{n}x{n}", times, "fp16 matmul")
    rows += _onnxruntime_int8(sizes)
    return rows


def _onnxruntime_int8(sizes: Sizes) -> list[Row]:
    import onnxruntime as ort
    import torchvision

    from kompression.worker.steps.onnx_io import export_onnx

    provider = "CUDAExecutionProvider" if sizes.device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return [{"section": "int8 onnxruntime", "candidate": "-", "note": f"skipped: no {provider} in onnxruntime"}]
    shape = [-1, 3, sizes.image, sizes.image]
    calib = np.random.default_rng(0).standard_normal((16, 3, sizes.image, sizes.image)).astype(np.float32)
    model = TorchModel(torchvision.models.resnet18().eval(), (torch.from_numpy(calib[:1]),))
    fp32 = export_onnx(model, workdir() / "fp32.onnx", ["x"])
    step = {"name": "q", "quantize": {"method": "StaticInt8"}}
    qdq = technique(model, step, shape, sizes, DataSets(calibration=Dataset({"x": calib}))).model
    assert isinstance(qdq, OnnxModel)
    x = np.random.default_rng(1).standard_normal((sizes.batch, 3, sizes.image, sizes.image)).astype(np.float32)
    sessions = {
        name: ort.InferenceSession(str(path), providers=[provider])
        for name, path in (("fp32", fp32.path), ("Kompression StaticInt8 QDQ", qdq.path))
    }
    times = timed({name: functools.partial(s.run, None, {"x": x}) for name, s in sessions.items()}, sizes)
    return rows_from(f"int8 onnxruntime {provider} ResNet-18 b{sizes.batch}", times, "fp32")


def fp8(sizes: Sizes) -> list[Row]:
    from kompression.worker.steps.fp8 import convert_to_fp8

    torch.manual_seed(0)
    dense = Ffn(sizes.model_dim, sizes.ffn_hidden).to(torch.bfloat16).to(sizes.device).eval()
    x = torch.randn(sizes.tokens, sizes.model_dim, device=sizes.device, dtype=torch.bfloat16)
    if sizes.device == "cuda":
        step = {"name": "q", "quantize": {"method": "FP8"}}
        result = technique(TorchModel(dense, (x[:16],)), step, [-1, sizes.model_dim], sizes, DataSets())
        fast, note = result.model.module, f"fp8Layers={result.notes.get('fp8Layers')}"
    else:  # the technique refuses CPUs (RuntimeMissing); its layer swap is exercised directly
        fast = copy.deepcopy(dense)
        note = f"dry run: convert_to_fp8 swapped {convert_to_fp8(fast, set())[0]} layers"
    with torch.inference_mode():
        reference, got = dense(x).float(), fast(x).float()
        error = float((got - reference).norm() / reference.norm())
        times = timed({"dense bf16": lambda: dense(x), "FP8 (e4m3, _scaled_mm)": lambda: fast(x)}, sizes)
    return rows_from(
        f"fp8 FFN {sizes.model_dim}x{sizes.ffn_hidden}, {sizes.tokens} tokens",
        times,
        "dense bf16",
        {"FP8 (e4m3, _scaled_mm)": f"{note}; relative output error {error:.4f}"},
    )


def distill(sizes: Sizes) -> list[Row]:
    import bench_distill
    from kompression.worker.data.arrays import digits
    from kompression.worker.steps.training import accuracy

    started = time.perf_counter()
    teacher, teacher_epochs = bench_distill.train_teacher(sizes.device, max_epochs=sizes.teacher_max_epochs)
    teacher_acc = accuracy(teacher.module, digits("eval"), sizes.device)
    rows: list[Row] = [
        {
            "section": "distill digits",
            "candidate": f"teacher ({teacher_epochs} epochs, early-stopped)",
            "accuracy": round(teacher_acc, 4),
        }
    ]
    for name, alpha in (("student KD", bench_distill.ALPHA), ("student alone", 0.0)):
        _, acc = bench_distill.train_student(teacher, 0, alpha, device=sizes.device, epochs=sizes.distill_epochs)
        rows.append({"section": "distill digits", "candidate": name, "accuracy": round(acc, 4)})
    rows[0]["note"] = f"{sizes.device}, seed 0, {sizes.distill_epochs} epochs, {time.perf_counter() - started:.0f} s"
    return rows


def llm(sizes: Sizes) -> list[Row]:
    import gpu_llm

    return gpu_llm.llm(sizes.device)


SECTIONS: dict[str, Callable[[Sizes], list[Row]]] = {
    "precision": precision,
    "structured": structured,
    "sparse24": sparse24,
    "int8": int8,
    "fp8": fp8,
    "distill": distill,
    "llm": llm,
}


def environment(sizes: Sizes, dry_run: bool) -> dict[str, Any]:
    env: dict[str, Any] = {
        "dry_run": dry_run,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "sizes": dataclasses.asdict(sizes),
        # Default fp32 settings, recorded because they decide what "fp32" means on a GPU.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if sizes.device == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(),
            capability=".".join(map(str, torch.cuda.get_device_capability())),
            cuda=torch.version.cuda,
        )
    return env


def markdown(env: dict[str, Any], rows: list[Row]) -> str:
    lines = [
        "# GPU check: precision, 2:4 sparsity, int8, fp8, distillation, LLM tokens/s on cuda",
        "",
        f"Machine: {env.get('gpu', 'CPU (dry run)')}, torch {env['torch']}, cuda {env.get('cuda', '-')}, "
        f"python {env['python']}; TF32 convolutions {env['cudnn_allow_tf32']}, TF32 matmul {env['matmul_allow_tf32']}",
        "",
        "| section | candidate | median ms | speedup vs baseline | accuracy | note |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['section']} | {r.get('candidate', '-')} | {r.get('ms', '-')} | {r.get('speedup', '-')} "
        f"| {r.get('accuracy', '-')} | {r.get('note', '')} |"
        for r in rows
    ]
    lines += [
        "",
        "Produced by benchmarks/gpu_check.py: candidates interleaved within each repetition, medians of "
        f"{env['sizes']['repeats']} repetitions x {env['sizes']['inner']} calls after 2 warm-up calls, "
        "torch.cuda.synchronize around each timed block.",
        "",
    ]
    if env["dry_run"]:
        lines.insert(2, "**Dry run on CPU with tiny sizes: it checks the code paths; its figures mean nothing.**\n")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run-cpu", action="store_true", help="run every section on CPU with tiny sizes")
    parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is visible to torch (torch.cuda.is_available() is False); run it on a "
            "GPU machine, or use --dry-run-cpu to check the code paths here",
            file=sys.stderr,
        )
        return 2
    sizes = DRY if args.dry_run_cpu else FULL
    torch.manual_seed(0)
    env = environment(sizes, args.dry_run_cpu)
    rows: list[Row] = []
    failed = 0
    for name in args.only or list(SECTIONS):
        if over_budget():
            rows.append({"section": name, "note": "skipped: time budget"})
            continue
        started = time.monotonic()
        try:
            rows += SECTIONS[name](sizes)
        except Exception as exc:  # a section's failure is a result to report, not a reason to lose the others
            failed += 1
            traceback.print_exc()
            rows.append({"section": name, "note": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
        print(f"gpu_check: {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        if sizes.device == "cuda":
            torch.cuda.empty_cache()
    env["elapsed_s"] = round(time.monotonic() - START, 1)
    out = Path(os.environ.get("OUT", "./gpu-out"))
    out.mkdir(parents=True, exist_ok=True)
    report = markdown(env, rows)
    (out / "gpu.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    (out / "gpu.md").write_text(report)
    print(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
