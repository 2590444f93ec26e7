"""`kompression run` for an llmQuantize job: load the causal LM folder, score it, run llm-compressor's
oneshot, save compressed-tensors, load the result back through transformers as servers would,
score it, gate, publish.

Runs in the worker-llm environment (llm-compressor, its torch and transformers); it shares the
storage, publishing, gates and report code of the main worker, none of which imports onnx.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from llmcompressor import oneshot
from transformers import AutoModelForCausalLM, AutoTokenizer

from kompression.api.constants import ENV_WORKDIR
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import (
    LLM_GPU_ONLY_SCHEMES,
    ArtifactKind,
    CompressionJob,
    DataSource,
    LLMQuantizeStep,
    Metrics,
)
from kompression.worker import gates, publish, reporting, storage
from kompression.worker.errors import GateFailed, ModelError, RuntimeMissing, StepInvalid
from kompression.worker.llm import recipe, text, throughput
from kompression.worker.llm.perplexity import perplexity
from kompression.worker.progress import Reporter

# Files a HuggingFace folder may hold: weights in safetensors only, configs and tokenizers as data.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
BACKENDS = ("llmcompressor", "compressed-tensors", "transformers", "torch")


@dataclass
class RunOptions:
    output: str | None = None  # overrides spec.output.uri
    workdir: Path | None = None


def backend_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in BACKENDS}


def device_for(cfg: LLMQuantizeStep, gpus: int) -> str:
    """The device to calibrate and score on; GPU-only schemes fail here, before any work."""

    has_gpu = gpus > 0 and torch.cuda.is_available()
    if cfg.scheme in LLM_GPU_ONLY_SCHEMES and not has_gpu:
        why = "resources.gpus is 0" if gpus == 0 else "this worker sees no CUDA device"
        raise RuntimeMissing(
            f"scheme {cfg.scheme} is a GPU-only format (its kernels and its checkpoints' consumers run on NVIDIA "
            f"GPUs), and {why}; run it with resources.gpus >= 1 on a GPU node, or use W4A16 or W8A8 on a CPU"
        )
    return "cuda" if has_gpu else "cpu"


def vet_folder(folder: Path) -> None:
    """A HuggingFace folder with safetensors weights and no remote code, or a ModelError."""
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelError(f"spec.model.uri: {folder.name} is not a HuggingFace model folder (no config.json)")
    pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLED_WEIGHTS)
    if pickled:
        raise ModelError(
            f"spec.model.uri: the folder holds pickled weights ({', '.join(pickled[:3])}), which run code when "
            "loaded; convert them to safetensors (save_pretrained(safe_serialization=True))"
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelError("spec.model.uri: the folder has no .safetensors weights")
    config = json.loads((folder / "config.json").read_text())
    if config.get("auto_map"):
        raise ModelError(
            "spec.model.uri: config.json names remote code (auto_map); the worker never runs a model's own "
            "Python code, so use an architecture transformers ships"
        )


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _load(folder: Path, dtype: Any) -> Any:
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
    except (ValueError, OSError, KeyError) as exc:
        raise ModelError(f"spec.model.uri: transformers cannot load a causal LM from the folder: {exc}") from None


def _score(folder: Path, sequences: list[list[int]] | None, device: str) -> tuple[float | None, int, float]:
    """Perplexity (None without evaluation text), parameter count and decode tokens/s of the folder's
    model, loaded by transformers as a server loads it: float32 on a CPU, the folder's dtype on a GPU.
    (A loaded compressed-tensors model keeps packed weights as buffers, so only the original's count
    is meant.)"""

    model = _load(folder, torch.float32 if device == "cpu" else "auto").to(device).eval()
    parameters = sum(p.numel() for p in model.parameters())
    value = None if sequences is None else round(perplexity(model, sequences, device).value, 4)
    speed = round(throughput.tokens_per_second(model, throughput.prompt(model, sequences), device), 2)
    del model
    return value, parameters, speed


def _text(source: DataSource, workdir: Path, tokenizer: Any, where: str) -> tuple[list[list[int]], str]:
    assert source.uri is not None  # the API refuses builtin data for llmQuantize text
    with storage.local_copy(source.uri, workdir) as path:
        samples = text.read_samples(path, where, source.samples)
        digest = storage.sha256_file(path)
    return text.tokenize(tokenizer, samples, source, where), digest


def _peak_memory(device: str) -> int:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quantize(model_dir: Path, out: Path, cfg: LLMQuantizeStep, calibration: list[list[int]] | None) -> None:
    """llm-compressor's oneshot with the recipe for cfg, saved as compressed-tensors."""

    model = _load(model_dir, "auto")
    dataset = None
    if calibration is not None:
        dataset = Dataset.from_dict({"input_ids": calibration, "attention_mask": [[1] * len(x) for x in calibration]})
    try:
        with recipe.host_only_safe():
            oneshot(
                model=model,
                recipe=recipe.modifiers(cfg),
                dataset=dataset,
                num_calibration_samples=len(calibration) if calibration else 0,
                max_seq_length=max((len(x) for x in calibration), default=1) if calibration else None,
                shuffle_calibration_samples=False,
            )
    except ValueError as exc:  # e.g. a group size that does not divide a layer's input size
        raise StepInvalid(f"llmQuantize {cfg.scheme} cannot apply to this model: {exc}") from None
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(out)


@dataclass
class Texts:
    """The job's tokenized text and what report.json says about the calibration set."""

    calibration: list[list[int]] | None
    evaluation: list[list[int]] | None
    calibration_notes: dict[str, Any] | None


def _texts(job: CompressionJob, cfg: LLMQuantizeStep, tokenizer: Any, work: Path) -> Texts:
    data = job.spec.data
    calibration = notes = evaluation = None
    if cfg.needs_calibration:
        assert data is not None and data.calibration is not None  # the API requires it
        calibration, digest = _text(data.calibration, work, tokenizer, "spec.data.calibration")
        notes = {
            "uri": data.calibration.uri,
            "sha256": digest,
            "samples": len(calibration),
            "tokens": sum(len(x) for x in calibration),
        }
    if data is not None and data.evaluation is not None:
        evaluation, _ = _text(data.evaluation, work, tokenizer, "spec.data.evaluation")
    return Texts(calibration, evaluation, notes)


def run(job: CompressionJob, options: RunOptions, reporter: Reporter) -> tuple[WorkerReport, list[reporting.Row]]:
    """Run the job to completion. Raises a WorkerError (GateFailed after publishing under rejected/)."""

    spec = job.spec
    step = spec.steps[0]
    cfg = step.llmQuantize
    assert cfg is not None  # the CLI sends only llmQuantize jobs here, and the API keeps them single-step
    prefix = options.output or spec.output.uri
    storage.parse_uri(prefix)  # an unusable output URI fails before any work
    device = device_for(cfg, spec.resources.gpus)
    reporter.set_environment(reporting.torch_environment())
    workroot = options.workdir or (Path(os.environ[ENV_WORKDIR]) if os.environ.get(ENV_WORKDIR) else None)
    with tempfile.TemporaryDirectory(prefix="kompression-llm-", dir=workroot) as tmp:
        work = Path(tmp)
        out = work / "out"
        with storage.local_copy(spec.model.uri, work) as model_dir:
            vet_folder(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
            texts = _texts(job, cfg, tokenizer, work)
            before, parameters, speed = _score(model_dir, texts.evaluation, device)
            baseline = Metrics(
                sizeBytes=weights_bytes(model_dir),
                parameters=parameters,
                perplexity=before,
                tokensPerSecond=speed,
                device="GPU" if device == "cuda" else "CPU",
                provider="PyTorch",
            )
            reporter.phase_done("Baseline")
            reporter.step_started(step.name)
            started = time.monotonic()
            quantize(model_dir, out, cfg, texts.calibration)
        seconds = round(time.monotonic() - started, 3)
        after, _, speed = _score(out, texts.evaluation, device)  # quantization keeps every weight: the count stays
        final = baseline.model_copy(
            update={"sizeBytes": weights_bytes(out), "perplexity": after, "tokensPerSecond": speed}
        )
        notes: dict[str, Any] = {
            **recipe.describe(cfg),
            "calibration": texts.calibration_notes,
            "backends": backend_versions(),
            "peakMemoryBytes": _peak_memory(device),
        }
        reporter.step_finished(step.name, final, f"{cfg.scheme} {notes['algorithm']}")
        result = gates.compute_result(baseline, final)
        result.gates = gates.evaluate(spec.acceptance, result)
        result.gatesPassed = all(g.passed for g in result.gates)
        reporter.set_result(result)
        rows = [reporting.Row("original", baseline, {}), reporting.Row(step.name, final, {}, seconds, notes)]
        target = prefix if result.gatesPassed else storage.join(prefix, publish.REJECTED)
        _publish(job, target, out=out, work=work, rows=rows, reporter=reporter)
        if not result.gatesPassed:
            raise GateFailed(
                f"{gates.describe_failures(result)}. The quantized model is kept under {target}/ for inspection; "
                "nothing was published as the result"
            )
        return reporter.report, rows


def _publish(
    job: CompressionJob, target: str, *, out: Path, work: Path, rows: list[reporting.Row], reporter: Reporter
) -> None:
    """The folder under runs/<id>/model/, report.json and report.md, then the manifest (the commit)."""
    step = job.spec.steps[0].name
    result = reporter.report.result
    assert result is not None
    publisher = publish.Publisher(target)
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        kind: ArtifactKind = "SafeTensors" if path.suffix == ".safetensors" else "HuggingFaceFile"
        publisher.add(path, step, kind, f"model/{path.relative_to(out).as_posix()}")
    reporter.set_artifacts(list(publisher.artifacts))
    snapshot = reporter.report.model_copy(deep=True)
    snapshot.phase = "Succeeded" if result.gatesPassed else "Failed"
    name = job.metadata.name or "compressionjob"
    reports = work / "reports"
    reports.mkdir()
    publisher.add(reporting.write_json(snapshot, rows, publisher.run_id, reports / "report.json"), "report", "Report")
    publisher.add(reporting.write_markdown(snapshot, rows, [], name, reports / "report.md"), "report", "Report")
    manifest = publisher.commit(
        {"job": name, "namespace": job.metadata.namespace, "passed": result.gatesPassed, "result": result.to_wire()}
    )
    reporter.set_artifacts([*publisher.artifacts, manifest])
    reporter.phase_done("Publish")
