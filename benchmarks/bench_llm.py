"""Benchmark (i): llmQuantize on a CPU, on the tiny Llama trained on license texts (the LLM tests' fixture).

Runs in the worker-llm environment (`make setup-llm`; run_all.py starts it with .venv-llm's python):

- perplexity of the original (bf16 weights, scored in fp32), W4A16 GPTQ and W4A16 round-to-nearest,
  each through `kompression run`;
- Kompression against llm-compressor called directly with the same recipe (GPTQModifier, scheme
  W4A16, ignore lm_head) on the same tokenized calibration text: perplexity within 1%, same size;
- W4A16's published weights against the bf16 original's (the target is at most 0.3x);
- 2:4 sparsity with SparseGPT, alone and followed by W4A16 round-to-nearest (GPTQ would fill in the zeros);
- the fixed cost of the LLM path: `kompression run` of GPTQ against a script that calls llm-compressor's
  oneshot and scores the original and the quantized folder once each, both fresh processes, run in
  alternation, with where each one's seconds go (Kompression's from its report's notes).

Every perplexity is of the folder as saved, loaded back by transformers (compressed-tensors) on the CPU.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, THREADS, load_average, markdown_table, write_report

sys.path.insert(0, str(ROOT / "tests" / "llm"))
CALIBRATION_SAMPLES = 64
# GPTQ through Kompression and the direct script, each run this many times in alternation (medians).
ROUNDS = 2
TARGET_RATIO = 1.5
START_UP = "start-up: imports (Kompression: and vetting the folder)"

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


def environment(work: Path) -> dict[str, str]:
    """Every child process's environment: the benchmark's threads, no GPU, and compiled bytecode kept
    between processes (under the work folder), as an installed image has it; otherwise each process
    would compile torch's and transformers' sources again and the side that imports more would pay
    for it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT / "operator"), env.get("PYTHONPATH")) if x)
    return env


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[list[tuple[float, str]], float, float]:
    """Run a fresh process (its stderr into `log`): each stdout line with the seconds since the
    start at which it arrived, and its wall and CPU seconds (user + system: on a shared machine the
    CPU seconds move less with other jobs' load than the wall's). Exits naming the log if it fails."""
    started = time.monotonic()
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert proc.stdout is not None
        lines = [(time.monotonic() - started, line) for line in proc.stdout]
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command[1:3])} failed ({proc.returncode}):\n{log.read_text()[-4000:]}")
    return lines, time.monotonic() - started, usage.ru_utime + usage.ru_stime


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
    lines, wall, cpu_seconds = timed(
        [sys.executable, "-m", "kompression", "run", str(job), "--progress", "json"],
        environment(work),
        work / f"{name}.log",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    report = json.loads((out / "runs" / manifest["runId"] / "report.json").read_text())
    models = report["details"]["models"]
    # When each progress event reached this process: the phases the report's notes do not time.
    events = {json.loads(x)["event"]: at for at, x in lines if x.startswith("{")}
    return {
        "result": report["result"],
        "seconds": wall,
        "cpuSeconds": cpu_seconds,
        "notes": models[-1]["notes"],
        "original": models[0]["notes"],
        "events": events,
    }


def kompression_phases(run: dict) -> dict[str, float]:
    """Where a one-step `kompression run` spent its seconds: its report's notes time the loads,
    the oneshot and the scoring; the progress events' arrival, the start-up before the original
    is scored and the publishing after the step."""
    original, step, events = run["original"]["scoreSeconds"], run["notes"], run["events"]
    scored = sum(original.values())
    return {
        START_UP: events["BaselineFinished"] - scored,
        "original: load": original["load"],
        "original: perplexity": original["perplexity"],
        "original: decode tok/s": original["decode"],
        "oneshot: load": step["stepSeconds"]["load"],
        "oneshot: calibrate and quantize": step["stepSeconds"]["calibrate"],
        "oneshot: save": step["stepSeconds"]["save"],
        "quantized: load back": step["scoreSeconds"]["load"],
        "quantized: perplexity": step["scoreSeconds"]["perplexity"],
        "quantized: decode tok/s": step["scoreSeconds"]["decode"],
        "publishing (digests, manifest, report)": events["PublishFinished"] - events["StepFinished"],
        "exit": run["seconds"] - events["Finished"],
    }


def direct(work: Path, calibration: Path, evaluation: Path) -> dict:
    """The direct script (`direct_script`) in a fresh process, as a user would run it: its wall
    seconds, and what it reports."""
    lines, wall, cpu_seconds = timed(
        [sys.executable, __file__, "--direct", str(work), str(calibration), str(evaluation)],
        environment(work),
        work / "direct.log",
    )
    result = json.loads(lines[-1][1])
    phases = result["phases"]
    # The interpreter's start and the imports before the script's clock (torch, by common.py).
    phases[START_UP] += wall - sum(phases.values())
    return {**result, "seconds": wall, "cpuSeconds": cpu_seconds}


def direct_script(work: Path, calibration: Path, evaluation: Path) -> None:
    """llm-compressor as its README drives it: oneshot with GPTQModifier(scheme="W4A16"), then save;
    then one perplexity pass of the original and of the saved folder, loaded back as Kompression
    scores them (float32 on the CPU). Prints its figures and the seconds of each phase as JSON."""
    phases: dict[str, float] = {}
    started = time.monotonic()

    def done(name: str) -> None:
        nonlocal started
        phases[name] = time.monotonic() - started
        started = time.monotonic()

    import torch
    from datasets import Dataset
    from llm_jobs import FIXTURE
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kompression.worker.llm.perplexity import perplexity

    torch.set_num_threads(THREADS)
    done(START_UP)
    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    lines = [x for x in calibration.read_text().splitlines() if x.strip()][:CALIBRATION_SAMPLES]
    ids = [tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in lines]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})
    lines = [x for x in evaluation.read_text().splitlines() if x.strip()][:EVAL_SAMPLES]
    scored = [tokenizer(x, truncation=True, max_length=MAX_LENGTH)["input_ids"] for x in lines]
    done("reading and tokenizing the text")
    original = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype=torch.float32).eval()
    done("original: load")
    base = perplexity(original, scored).value
    done("original: perplexity")
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, dtype="auto")
    done("oneshot: load")
    oneshot(
        model=model,
        dataset=dataset,
        recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        num_calibration_samples=len(ids),
        max_seq_length=max(len(x) for x in ids),
        shuffle_calibration_samples=False,
    )
    done("oneshot: calibrate and quantize")
    out = work / "direct"
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    done("oneshot: save")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    done("quantized: load back")
    value = perplexity(loaded, scored).value
    done("quantized: perplexity")
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(json.dumps({"perplexity": value, "original": base, "sizeBytes": size, "phases": phases}))


def main() -> None:
    import importlib.metadata

    import torch

    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="kompression-bench-llm-"))
    calibration, evaluation = texts(work)
    # The first runs compile the bytecode every later process reads (environment()).
    rtn = kompression(work, "w4a16-rtn", "{scheme: W4A16, algorithm: RTN}", calibration, evaluation)
    sparse = kompression(work, "sparse24", "", calibration, evaluation, steps=SPARSE24)
    sparse_rtn = kompression(work, "sparse24-rtn", "", calibration, evaluation, steps=SPARSE24 + RTN_AFTER)
    gptqs, directs = [], []
    for index in range(ROUNDS):
        # Alternate which side runs first, so that neither always follows the same neighbour.
        for side in ("kompression", "direct") if index % 2 == 0 else ("direct", "kompression"):
            if side == "direct":
                directs.append(direct(work, calibration, evaluation))
            else:
                name = f"w4a16-gptq-{index}"
                gptqs.append(kompression(work, name, "{scheme: W4A16, algorithm: GPTQ}", calibration, evaluation))
    loads = load_average()
    gptq, first = gptqs[0], directs[0]
    direct_ppl, direct_size = first["perplexity"], first["sizeBytes"]
    k_phases = [kompression_phases(run) for run in gptqs]
    k_seconds = statistics.median(run["seconds"] for run in gptqs)
    d_seconds = statistics.median(run["seconds"] for run in directs)
    k_cpu = statistics.median(run["cpuSeconds"] for run in gptqs)
    d_cpu = statistics.median(run["cpuSeconds"] for run in directs)
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
        row("Kompression W4A16 GPTQ (`kompression run`)", g["perplexity"], g["sizeBytes"], k_seconds),
        row("Kompression W4A16 RTN (`kompression run`)", r["perplexity"], r["sizeBytes"], rtn["seconds"]),
        row("llm-compressor oneshot directly, GPTQ W4A16", direct_ppl, direct_size, d_seconds),
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
    breakdown = phase_rows(k_phases, [d["phases"] for d in directs], k_seconds, d_seconds)
    breakdown.append(["whole process (CPU: user + system)", f"{k_cpu:.1f}", f"{d_cpu:.1f}"])
    ratio, cpu_ratio = k_seconds / d_seconds, k_cpu / d_cpu
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
        "model this small sits near the 4/16 + scales floor. Seconds are a whole fresh process's: for Kompression "
        "the `kompression run`, for the direct call a script that loads, quantizes and saves, and scores the "
        "original and the saved folder once each (the GPTQ rows are medians of "
        f"{ROUNDS} runs of each, in alternation). 2:4: the pruned folder "
        "is stored dense (compressed-tensors 0.19 writes no sparse format), so its size is the original's; after "
        f"W4A16 RTN, loaded back and dequantized, {measured['layersConforming']} of {measured['layers']} decoder "
        f"Linear layers are 2:4 ({measured['conformingGroupFraction']:.2%} of groups of 4 with at least 2 zeros, "
        f"{measured['zeroFraction']:.2%} zeros)." + NOTE,
        "",
        "Where the GPTQ run's seconds go (medians over the rounds; Kompression's phases are what its "
        "report.json records, `scoreSeconds` and `stepSeconds` in each model's notes):",
        "",
        *markdown_table(["phase", "Kompression s", "direct s"], breakdown),
        "",
        f"Kompression takes {ratio:.2f}x the direct script's wall seconds and {cpu_ratio:.2f}x its CPU seconds "
        f"(target at most {TARGET_RATIO}x: {'met' if max(ratio, cpu_ratio) <= TARGET_RATIO else 'not met'}). Both sides are fresh processes reading bytecode "
        "compiled by an earlier run, as in an installed image. Kompression does what the script does, plus a "
        "decode tok/s measurement of each model (greedy generation, a warm-up and three timed runs: the "
        "report's tokensPerSecond), the folder's vetting and publishing with digests. The original is scored "
        "once per job and its figures reused by every step and trial; the text is tokenized once; the saved "
        "folder is loaded back to be scored, so that what is published is what was measured. The machine was "
        f"shared with other jobs (load average {loads} at the end). The direct script's start-up row is the wall "
        "time its own clock does not cover (the interpreter, importing torch, and its exit).",
        "",
    ]
    write_report("llm", "\n".join(lines))


def phase_rows(
    kompression_runs: list[dict[str, float]], direct_runs: list[dict[str, float]], k_total: float, d_total: float
) -> list[list[str]]:
    """One row per phase, median seconds of each side ('-' where a side has no such phase)."""
    names = list(dict.fromkeys([*kompression_runs[0], *direct_runs[0]]))

    def median(runs: list[dict[str, float]], name: str) -> str:
        return f"{statistics.median(r[name] for r in runs):.1f}" if name in runs[0] else "-"

    rows = [[name, median(kompression_runs, name), median(direct_runs, name)] for name in names]
    return [*rows, ["whole process (wall)", f"{k_total:.1f}", f"{d_total:.1f}"]]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--direct"]:
        direct_script(*(Path(x) for x in sys.argv[2:5]))
    else:
        main()
