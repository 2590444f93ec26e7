"""Benchmark (i): llmQuantize on a CPU, on the tiny Llama trained on license texts (the LLM tests' fixture).

Runs in the worker-llm environment (`make setup-llm`; run_all.py starts it with .venv-llm's python):

- perplexity of the original (bf16 weights, scored in fp32), W4A16 GPTQ and W4A16 round-to-nearest,
  each through `kompression run`;
- Kompression against llm-compressor called directly with the same recipe (GPTQModifier, scheme
  W4A16, ignore lm_head) on the same tokenized calibration text: perplexity within 1%, same size;
- W4A16's published weights against the bf16 original's (the target is at most 0.3x);
- 2:4 sparsity with SparseGPT, alone and followed by W4A16 round-to-nearest (GPTQ would fill in the zeros).

Every perplexity is of the folder as saved, loaded back by transformers (compressed-tensors) on the CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, THREADS, markdown_table, write_report

sys.path.insert(0, str(ROOT / "tests" / "llm"))
CALIBRATION_SAMPLES = 64
EVAL_SAMPLES = 120
MAX_LENGTH = 128
SPARSE24 = "- {name: sparse24, llmSparsify: {method: SparseGPT, pattern: '2:4'}}"
RTN_AFTER = "\n  - {name: w4a16, llmQuantize: {scheme: W4A16, algorithm: RTN}}"
NOTE = (
    " The absolute errors are small (a model this small and briefly trained has few outlier weights); "
    "the ordering, GPTQ below round-to-nearest, is what tests/llm asserts. No GPU was lent to this run, so "
    "NVFP4, MXFP4 and vLLM throughput are not measured here."
)


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((x.split(":", 1)[1].strip() for x in info if x.startswith("model name")), platform.machine())
    flags = set(next((x.split(":", 1)[1].split() for x in info if x.startswith("flags")), []))
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return f"{model}, CPU flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def texts(folder: Path) -> tuple[Path, Path]:
    from kompression.worker.llm.tiny_llama import paragraphs

    everything = paragraphs()
    (folder / "train.txt").write_text("\n".join(t for i, t in enumerate(everything) if i % 10) + "\n")
    (folder / "eval.txt").write_text("\n".join(everything[::10]) + "\n")
    return folder / "train.txt", folder / "eval.txt"


def kompression(
    work: Path, name: str, step: str, calibration: Path, evaluation: Path, *, steps: str | None = None
) -> dict:
    """`kompression run` of one llmQuantize step (its flow mapping), or of the `steps` list's YAML."""
    from llm_jobs import FIXTURE

    out = work / name
    job = work / f"{name}.yaml"
    job.write_text(
        f"""apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {{name: {name}}}
spec:
  model: {{uri: 'file://{FIXTURE}', format: HuggingFace, inputs: [{{name: input_ids, shape: [-1, -1], dtype: int64}}]}}
  data:
    calibration: {{uri: 'file://{calibration}', samples: {CALIBRATION_SAMPLES}, maxLength: {MAX_LENGTH}}}
    evaluation: {{uri: 'file://{evaluation}', samples: {EVAL_SAMPLES}, maxLength: {MAX_LENGTH}}}
  steps:
  {steps or f"- {{name: quantize, llmQuantize: {step}}}"}
  output: {{uri: 'file://{out}/'}}
  resources: {{gpus: 0}}
"""
    )
    started = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(job), "--progress", "json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{name}: kompression run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "runs" / manifest["runId"] / "report.json").read_text())
    models = report["details"]["models"]
    return {"result": report["result"], "seconds": time.monotonic() - started, "notes": models[-1]["notes"]}


def direct(work: Path, calibration: Path, evaluation: Path) -> tuple[float, int, float]:
    """llm-compressor as its README drives it: oneshot with GPTQModifier(scheme="W4A16"), then save."""
    import torch
    from datasets import Dataset
    from llm_jobs import FIXTURE
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kompression.worker.llm.perplexity import perplexity

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    lines = [x for x in calibration.read_text().splitlines() if x.strip()][:CALIBRATION_SAMPLES]
    ids = [tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in lines]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype="auto")
    oneshot(
        model=model,
        dataset=dataset,
        recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        num_calibration_samples=len(ids),
        max_seq_length=max(len(x) for x in ids),
        shuffle_calibration_samples=False,
    )
    out = work / "direct"
    model.save_pretrained(out, save_compressed=True)
    seconds = time.monotonic() - started
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    lines = [x for x in evaluation.read_text().splitlines() if x.strip()][:EVAL_SAMPLES]
    scored = perplexity(loaded, [tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in lines])
    return scored.value, sum(p.stat().st_size for p in out.glob("*.safetensors")), seconds


def main() -> None:
    import importlib.metadata

    import torch

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="kompression-bench-llm-"))
    calibration, evaluation = texts(work)
    gptq = kompression(work, "w4a16-gptq", "{scheme: W4A16, algorithm: GPTQ}", calibration, evaluation)
    rtn = kompression(work, "w4a16-rtn", "{scheme: W4A16, algorithm: RTN}", calibration, evaluation)
    sparse = kompression(work, "sparse24", "", calibration, evaluation, steps=SPARSE24)
    sparse_rtn = kompression(work, "sparse24-rtn", "", calibration, evaluation, steps=SPARSE24 + RTN_AFTER)
    direct_ppl, direct_size, direct_s = direct(work, calibration, evaluation)
    base = gptq["result"]["baseline"]
    bf16 = base["sizeBytes"]

    def row(name: str, ppl: float, size: int, seconds: float | None) -> list[str]:
        return [
            name,
            f"{ppl:.3f}",
            f"{ppl / base['perplexity'] - 1:+.2%}",
            f"{size / 1024:.0f}",
            f"{size / bf16:.3f}",
            "-" if seconds is None else f"{seconds:.0f}",
        ]

    g, r = gptq["result"]["final"], rtn["result"]["final"]
    rows = [
        row("original (bf16 weights, scored in fp32)", base["perplexity"], bf16, None),
        row("Kompression W4A16 GPTQ (`kompression run`)", g["perplexity"], g["sizeBytes"], gptq["seconds"]),
        row("Kompression W4A16 RTN (`kompression run`)", r["perplexity"], r["sizeBytes"], rtn["seconds"]),
        row("llm-compressor oneshot directly, GPTQ W4A16", direct_ppl, direct_size, direct_s),
        *(
            row(label, x["result"]["final"]["perplexity"], x["result"]["final"]["sizeBytes"], x["seconds"])
            for label, x in (
                ("Kompression 2:4 SparseGPT (`kompression run`)", sparse),
                ("Kompression 2:4 SparseGPT, then W4A16 RTN", sparse_rtn),
            )
        ),
    ]
    measured = sparse_rtn["notes"]["measuredSparsity"]
    header = ["model", "perplexity", "vs original", "weights KiB", "vs bf16", "seconds"]
    versions = ", ".join(
        f"{n} {importlib.metadata.version(n)}" for n in ("llmcompressor", "compressed-tensors", "transformers", "torch")
    )
    gap = g["perplexity"] / direct_ppl - 1
    lines = [
        "# (i) LLM quantization on a CPU: W4A16 GPTQ and RTN through Kompression vs llm-compressor directly (the LLM issue's benchmark (g))",
        "",
        f"Machine: {cpu()}; {versions}; python {platform.python_version()}, {THREADS} threads, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Command: `.venv-llm/bin/python "
        "benchmarks/bench_llm.py`.",
        "",
        *markdown_table(header, rows),
        "",
        f"Model: tests/llm/fixtures/tiny-llama, a 3-layer Llama (hidden 256, GQA 4/2 heads, vocab 384, tied "
        f"embeddings, 1.87M parameters) trained for 300 steps on Debian's license texts by "
        f"`python -m kompression.worker.llm.tiny_llama`, stored in bf16. Calibration: {CALIBRATION_SAMPLES} "
        f"training paragraphs; evaluation: the first {EVAL_SAMPLES} held-out paragraphs (every tenth), at most "
        f"{MAX_LENGTH} tokens each; perplexity of each folder as saved, loaded back by transformers on the CPU. "
        f"Kompression GPTQ vs llm-compressor directly: perplexity {gap:+.3%} (target within 1%), weights "
        f"{g['sizeBytes']} vs {direct_size} bytes. W4A16 weights are {g['sizeBytes'] / bf16:.3f}x the bf16 "
        "original's (target at most 0.3x); the embedding table (shared with lm_head) stays bf16, which is why a "
        "model this small sits near the 4/16 + scales floor. Seconds include loading, both perplexity passes and "
        "publishing for Kompression, and quantizing plus saving only for the direct call. 2:4: the pruned folder "
        "is stored dense (compressed-tensors 0.19 writes no sparse format), so its size is the original's; after "
        f"W4A16 RTN, loaded back and dequantized, {measured['layersConforming']} of {measured['layers']} decoder "
        f"Linear layers are 2:4 ({measured['conformingGroupFraction']:.2%} of groups of 4 with at least 2 zeros, "
        f"{measured['zeroFraction']:.2%} zeros)." + NOTE,
        "",
    ]
    write_report("llm", "\n".join(lines))


if __name__ == "__main__":
    main()
