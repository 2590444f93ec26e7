"""`kompression run` for an LLM job ([llmQuantize], [llmSparsify] or [llmSparsify, llmQuantize]): load
the causal LM folder and score it; for each step run llm-compressor's oneshot on the previous step's
folder, save compressed-tensors, load the result back through transformers as servers would and
score it; gate the last one, publish it.

Runs in the worker-llm environment (llm-compressor, its torch and transformers); it shares the
storage, publishing, gates and report code of the main worker, none of which imports onnx.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from llmcompressor import oneshot
from transformers import AutoModelForCausalLM

from kompression.api.constants import ENV_WORKDIR
from kompression.api.report import WorkerReport
from kompression.api.v1alpha1 import (
    LLM_GPU_ONLY_SCHEMES,
    ArtifactKind,
    CompressionJob,
    DataSource,
    LLMQuantizeStep,
    Metrics,
    Step,
)
from kompression.worker import gates, hf_folder, publish, reporting, storage
from kompression.worker.errors import DataError, GateFailed, ModelError, RuntimeMissing, StepInvalid
from kompression.worker.llm import distributed as ranks
from kompression.worker.llm import modelopt_backend, recipe, sparsity, tasks, text, throughput
from kompression.worker.llm.perplexity import perplexity
from kompression.worker.progress import Reporter
from kompression.worker.texts import read_texts

MODEL_URI = "spec.model.uri"
BACKENDS = ("llmcompressor", "compressed-tensors", "transformers", "torch")


@dataclass
class RunOptions:
    output: str | None = None  # overrides spec.output.uri
    workdir: Path | None = None


def backend_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in BACKENDS}


def device_for(cfg: LLMQuantizeStep | None, gpus: int) -> str:
    """The device to calibrate and score on; GPU-only schemes fail here, before any work."""

    has_gpu = gpus > 0 and torch.cuda.is_available()
    if cfg is not None and cfg.scheme in LLM_GPU_ONLY_SCHEMES and not has_gpu:
        why = "resources.gpus is 0" if gpus == 0 else "this worker sees no CUDA device"
        raise RuntimeMissing(
            f"scheme {cfg.scheme} is a GPU-only format (its kernels and its checkpoints' consumers run on NVIDIA "
            f"GPUs), and {why}; run it with resources.gpus >= 1 on a GPU node, or use W4A16 or W8A8 on a CPU"
        )
    return "cuda" if has_gpu else "cpu"


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _load(vetted: hf_folder.Folder, dtype: Any, device_map: str | None = None, *, original: bool = False) -> Any:
    """The vetted folder's causal LM; the job's own model (`original`) must hold every weight it
    expects, where a step's output is a checkpoint compressed-tensors reshapes as it loads."""
    with hf_folder.loading(MODEL_URI, "a causal LM"):
        loaded: Any = AutoModelForCausalLM.from_pretrained(
            vetted.path,
            dtype=dtype,
            device_map=device_map,
            output_loading_info=True,
            **hf_folder.load_options(vetted, AutoModelForCausalLM),
        )
    model, info = loaded
    if original:
        hf_folder.check_complete(info, model, MODEL_URI)
    return model


def _score(
    vetted: hf_folder.Folder,
    sequences: list[list[int]] | None,
    device: str,
    suite: tasks.Suite | None = None,
    *,
    original: bool = False,
) -> tuple[float | None, int, tasks.Scores | None, float]:
    """Perplexity (None without evaluation text), parameter count, task accuracies (None without
    data.tasks) and decode tokens/s of the folder's model, loaded by transformers as a server loads
    it: float32 on a CPU, the folder's dtype on a GPU. (A loaded compressed-tensors model keeps
    packed weights as buffers, so only the original's count is meant.)"""

    # On GPUs accelerate spreads the layers over every GPU the pod has (and the CPU beyond them):
    # a model larger than one GPU is scored too.
    cpu = device == "cpu"
    model = _load(vetted, torch.float32 if cpu else "auto", device_map=None if cpu else "auto", original=original)
    model.eval()
    parameters = sum(p.numel() for p in model.parameters())
    value = None if sequences is None else round(perplexity(model, sequences, device).value, 4)
    scores = None
    if suite is not None:
        tokenizer = hf_folder.tokenizer(vetted.path, MODEL_URI)
        scores = tasks.score(model, tokenizer, suite)
    speed = round(throughput.tokens_per_second(model, throughput.prompt(model, sequences), device), 2)
    del model
    return value, parameters, scores, speed


def _text(source: DataSource, workdir: Path, tokenizer: Any, where: str) -> tuple[list[list[int]], str]:
    assert source.uri is not None  # the API refuses builtin data for llmQuantize text
    path = storage.source(source.uri, workdir / "downloads", DataError, where)
    samples = read_texts(path, where, tokenizer).texts[: source.samples]
    digest = storage.sha256_file(path)
    return text.tokenize(tokenizer, samples, source, where), digest


def _oneshot(
    model_dir: Path, out: Path, build: Callable[[Any], list[Any]], calibration: list[list[int]] | None, what: str
) -> int:
    """llm-compressor's oneshot with the recipe build(model) makes, saved as compressed-tensors;
    returns the peak memory of calibration. Under torchrun every rank runs it on its share of the
    samples, and the ranks part after the collective save."""

    dataset = None
    if calibration is not None:
        dataset = Dataset.from_dict({"input_ids": calibration, "attention_mask": [[1] * len(x) for x in calibration]})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with ranks.peak_memory(device) as peak:
        model = ranks.load(model_dir, out.parent / f"{out.name}-offload")
        try:
            with recipe.host_only_safe():
                oneshot(
                    model=model,
                    recipe=build(model),
                    dataset=dataset,
                    num_calibration_samples=len(calibration) if calibration else 0,
                    max_seq_length=max((len(x) for x in calibration), default=1) if calibration else None,
                    shuffle_calibration_samples=False,
                )
        except ValueError as exc:  # e.g. a group size that does not divide a layer's input size
            raise StepInvalid(f"{what} cannot apply to this model: {exc}") from None
    model.save_pretrained(out, save_compressed=True)
    ranks.disband()
    if ranks.leads():
        hf_folder.tokenizer(model_dir, MODEL_URI).save_pretrained(out)
    return peak[0]


def apply(
    step: Step, model_dir: Path, out: Path, calibration: list[list[int]] | None
) -> tuple[dict[str, Any], str, int]:
    """Run one llm-compressor step from model_dir into out: what report.json says about its method,
    a summary, and calibration's peak memory. Every rank of a torchrun group runs it."""
    if step.llmSparsify is not None:
        sparse = step.llmSparsify
        what = f"llmSparsify {sparse.method} {sparse.pattern}"
        peak = _oneshot(model_dir, out, lambda model: sparsity.modifiers(sparse, model), calibration, what)
        return sparsity.describe(sparse), f"{sparse.pattern} {sparse.method}", peak
    cfg = step.llmQuantize
    assert cfg is not None  # the API allows only these two on this path
    peak = _oneshot(model_dir, out, lambda _: recipe.modifiers(cfg), calibration, f"llmQuantize {cfg.scheme}")
    notes = recipe.describe(cfg)
    return notes, f"{cfg.scheme} {notes['algorithm']}", peak


@dataclass
class Texts:
    """The job's tokenized text and what report.json says about the calibration set."""

    calibration: list[list[int]] | None
    evaluation: list[list[int]] | None
    calibration_notes: dict[str, Any] | None


def _needs_calibration(step: Step) -> bool:
    """SparseGPT and Wanda choose their zeros from calibration text; llmQuantize says for itself."""
    return step.llmSparsify is not None or (step.llmQuantize is not None and step.llmQuantize.needs_calibration)


def _texts(job: CompressionJob, tokenizer: Any, work: Path) -> Texts:
    data = job.spec.data
    calibration = notes = evaluation = None
    if any(_needs_calibration(s) for s in job.spec.steps):
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


@dataclass
class StepRun:
    """One step run into its folder and scored."""

    out: Path
    notes: dict[str, Any]
    summary: str
    seconds: float
    peak: int  # calibration's peak memory
    ranks: int  # the processes that shared its calibration
    perplexity: float | None
    scores: tasks.Scores | None
    speed: float | None  # decode tokens/s of the published folder (None where it cannot be loaded here)


def _run_step(step: Step, current: Path, out: Path, texts: Texts, *, suite: tasks.Suite | None, device: str) -> StepRun:
    """Run a step on the previous step's folder into out, and score the result."""
    started = time.monotonic()
    sharing = ranks.world()  # the ranks part after the first step's save
    cfg = step.llmQuantize
    if cfg is not None and cfg.backend_or_default == "ModelOpt":
        # Scored in memory: no runtime here loads its checkpoint (the API keeps it alone in its job).
        with ranks.peak_memory(device) as box:
            after = modelopt_backend.quantize(
                current, out, cfg, calibration=texts.calibration, evaluation=texts.evaluation, device=device
            )
        notes = modelopt_backend.describe(cfg)
        seconds = round(time.monotonic() - started, 3)
        return StepRun(out, notes, f"{cfg.scheme} {notes['algorithm']}", seconds, box[0], sharing, after, None, None)
    notes, summary, peak = apply(step, current, out, ranks.share(current, step, texts.calibration))
    seconds = round(time.monotonic() - started, 3)
    # Neither step removes a weight (pruned ones are zeros, quantized ones packed): the count stays.
    after, _, scores, speed = _score(hf_folder.vet(out, MODEL_URI), texts.evaluation, device, suite)
    return StepRun(out, notes, summary, seconds, peak, sharing, after, scores, speed)


def run(job: CompressionJob, options: RunOptions, reporter: Reporter) -> tuple[WorkerReport, list[reporting.Row]]:
    """Run the job to completion. Raises a WorkerError (GateFailed after publishing under rejected/)."""

    spec = job.spec
    prefix = options.output or spec.output.uri
    storage.parse_uri(prefix)  # an unusable output URI fails before any work
    devices = {device_for(s.llmQuantize, spec.resources.gpus) for s in spec.steps}
    device = "cuda" if "cuda" in devices else "cpu"
    workroot = options.workdir or (Path(os.environ[ENV_WORKDIR]) if os.environ.get(ENV_WORKDIR) else None)
    ranks.join(device)
    if not ranks.leads():  # under torchrun: only calibrate the first step (rank 0 does the rest)
        ranks.follow(apply, workroot)
        return reporter.report, []
    reporter.set_environment(reporting.torch_environment())
    with tempfile.TemporaryDirectory(prefix="kompression-llm-", dir=workroot) as tmp:
        work = Path(tmp)
        model_dir = storage.source(spec.model.uri, work / "downloads", ModelError, MODEL_URI)
        vetted = hf_folder.vet(model_dir, MODEL_URI)
        tokenizer = hf_folder.tokenizer(model_dir, MODEL_URI)
        texts = _texts(job, tokenizer, work)
        suite = tasks.prepare(spec.data.tasks, work) if spec.data and spec.data.tasks else None
        before, parameters, tasks_before, speed = _score(vetted, texts.evaluation, device, suite, original=True)
        baseline = Metrics(
            sizeBytes=weights_bytes(model_dir),
            parameters=parameters,
            accuracy=tasks_before.mean if tasks_before else None,
            perplexity=before,
            tokensPerSecond=speed,
            device="GPU" if device == "cuda" else "CPU",
            provider="PyTorch",
        )
        reporter.phase_done("Baseline")
        original = {"taskScores": tasks_before.per_task} if tasks_before else None
        rows = [reporting.Row("original", baseline, {}, None, original)]
        current, final = model_dir, baseline
        pruned = None  # the llmSparsify step whose pattern later steps must keep
        for index, step in enumerate(spec.steps):
            reporter.step_started(step.name)
            done = _run_step(step, current, work / f"step-{index}", texts, suite=suite, device=device)
            out, notes, scores = done.out, done.notes, done.scores
            final = final.model_copy(
                update={
                    "sizeBytes": weights_bytes(out),
                    "perplexity": done.perplexity,
                    "accuracy": scores.mean if scores else None,
                    "tokensPerSecond": done.speed,
                }
            )
            pruned = step.llmSparsify or pruned
            notes = {
                **notes,
                **({"measuredSparsity": sparsity.measure(out, pruned)} if pruned is not None else {}),
                "calibration": texts.calibration_notes if _needs_calibration(step) else None,
                **({"tasks": suite.describe(), "taskScores": scores.per_task} if suite and scores else {}),
                "backends": backend_versions(),
                **ranks.memory_notes(done.peak, baseline.sizeBytes, device, done.ranks),
            }
            reporter.step_finished(step.name, final, done.summary)
            rows.append(reporting.Row(step.name, final, {}, done.seconds, notes))
            current = out
        result = gates.compute_result(baseline, final)
        result.gates = gates.evaluate(spec.acceptance, result)
        result.gatesPassed = all(g.passed for g in result.gates)
        reporter.set_result(result)
        target = prefix if result.gatesPassed else storage.join(prefix, publish.REJECTED)
        _publish(job, target, out=current, work=work, rows=rows, reporter=reporter)
        if not result.gatesPassed:
            raise GateFailed(
                f"{gates.describe_failures(result)}. The compressed model is kept under {target}/ for inspection; "
                "nothing was published as the result"
            )
        return reporter.report, rows


def _publish(
    job: CompressionJob, target: str, *, out: Path, work: Path, rows: list[reporting.Row], reporter: Reporter
) -> None:
    """The folder under runs/<id>/model/, report.json and report.md, then the manifest (the commit)."""
    step = job.spec.steps[-1].name
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
