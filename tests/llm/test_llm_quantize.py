"""llmQuantize end to end through `kompression run`, on a tiny Llama trained on license texts
(tests/llm/fixtures/tiny-llama, made by `python -m kompression.worker.llm.tiny_llama`): GPTQ and
round-to-nearest W4A16 publish compressed-tensors folders that transformers loads on a CPU and
generates with, the perplexity gate passes and fails, and GPU-only schemes fail clearly on a CPU."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from llm_jobs import FIXTURE, Run, Texts, job_yaml, kompression_run, kompression_runs, write_job

from kompression.api.constants import ExitCode

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")


def _run(folder: Path, texts: Texts, step: str, **kwargs: Any) -> Run:
    return Run(kompression_run(write_job(folder, job_yaml(texts, step, **kwargs))), folder / "out")


@pytest.fixture(scope="module")
def runs(texts: Texts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """W4A16 with GPTQ and with round-to-nearest, side by side. GPTQ reads its evaluation text as
    .jsonl, RTN as .txt: both readers must give the same baseline."""
    folders = tmp_path_factory.mktemp("gptq"), tmp_path_factory.mktemp("rtn")
    jobs = (
        write_job(
            folders[0],
            job_yaml(
                texts,
                "{scheme: W4A16, algorithm: GPTQ}",
                acceptance="acceptance: {maxPerplexityIncrease: 0.05, minCompressionRatio: 3}",
                evaluation=texts.evaluation_jsonl,
            ),
        ),
        write_job(folders[1], job_yaml(texts, "{scheme: W4A16, algorithm: RTN}")),
    )
    gptq, rtn = kompression_runs(*jobs)
    return Run(gptq, folders[0] / "out"), Run(rtn, folders[1] / "out")


@pytest.fixture(scope="module")
def gptq(runs: tuple[Run, Run]) -> Run:
    return runs[0]


@pytest.fixture(scope="module")
def rtn(runs: tuple[Run, Run]) -> Run:
    return runs[1]


def test_gptq_and_rtn_publish_every_file_with_its_digest(gptq: Run, rtn: Run) -> None:
    for run, algorithm in ((gptq, "GPTQ"), (rtn, "RTN")):
        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
        manifest = run.manifest
        assert manifest["passed"] is True
        published = {a["uri"].removeprefix("file://"): a for a in manifest["artifacts"]}
        on_disk = {str(p) for p in run.folder.rglob("*") if p.is_file()}
        assert set(published) == on_disk
        for path, artifact in published.items():
            assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == artifact["sha256"], path
        names = {Path(p).relative_to(run.folder).as_posix() for p in on_disk}
        assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json", "report.json"} <= names
        notes = run.notes()
        assert notes["scheme"] == "W4A16"
        assert notes["algorithm"] == algorithm
        assert notes["groupSize"] == 128
        assert notes["weights"] == "int4 group"
        assert set(notes["backends"]) == {"llmcompressor", "compressed-tensors", "transformers", "torch"}
        if algorithm == "GPTQ":
            assert notes["calibration"]["samples"] == 32
            assert notes["calibration"]["uri"].endswith("train.txt")
        else:
            assert notes["calibration"] is None  # round-to-nearest reads no data


def test_the_report_says_where_each_models_seconds_went(gptq: Run, rtn: Run) -> None:
    models = {m["name"]: m for m in gptq.report["details"]["models"]}
    original, step = models["original"]["notes"], models["quantize"]["notes"]
    assert set(original["scoreSeconds"]) == set(step["scoreSeconds"]) == {"load", "perplexity", "decode"}
    assert set(step["stepSeconds"]) == {"load", "calibrate", "save"}
    phases = [*step["stepSeconds"].values(), *step["scoreSeconds"].values()]
    assert all(seconds > 0 for seconds in phases)
    # The phases are parts of the step's row (its technique and its scoring), rounded to milliseconds.
    assert sum(phases) <= models["quantize"]["seconds"] + 0.01
    # Round-to-nearest reads no text, but its step is still loaded, quantized and saved.
    assert set(rtn.notes()["stepSeconds"]) == {"load", "calibrate", "save"}


def test_gptq_beats_round_to_nearest_and_both_cost_measurable_perplexity(gptq: Run, rtn: Run) -> None:
    # The same original, scored from .jsonl (GPTQ's job) and .txt (RTN's job).
    assert gptq.report["result"]["baseline"]["perplexity"] == rtn.report["result"]["baseline"]["perplexity"]
    assert rtn.increase > 0
    assert gptq.increase < rtn.increase
    gates = {g["name"]: g for g in gptq.report["result"]["gates"]}
    assert gates["maxPerplexityIncrease"]["passed"]
    assert gates["maxPerplexityIncrease"]["measured"] == pytest.approx(gptq.increase, abs=1e-5)


def test_w4a16_weights_are_under_three_tenths_of_the_bf16_original(gptq: Run) -> None:
    assert json.loads((FIXTURE / "config.json").read_text())["dtype"] == "bfloat16"
    result = gptq.report["result"]
    assert result["final"]["sizeBytes"] <= 0.3 * result["baseline"]["sizeBytes"]
    assert result["gates"][1] == {
        "name": "minCompressionRatio",
        "passed": True,
        "limit": 3.0,
        "measured": result["compressionRatio"],
    }


def test_transformers_loads_the_published_folder_on_cpu_and_generates(gptq: Run, texts: Texts) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kompression.worker.llm.perplexity import perplexity

    folder = gptq.folder / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["format"] == "pack-quantized"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True).eval()
    prompt = tokenizer("This License", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 12
    assert len(tokenizer.decode(generated[0], skip_special_tokens=True)) > len("This License")
    # The figure in report.json is this loaded model's, not the in-memory one llm-compressor produced.
    samples = [json.loads(line)["text"] for line in texts.evaluation_jsonl.read_text().splitlines()[:40]]
    ids = [tokenizer(s, truncation=True, max_length=128)["input_ids"] for s in samples]
    assert perplexity(model, ids).value == pytest.approx(gptq.report["result"]["final"]["perplexity"], rel=1e-3)


def test_the_perplexity_gate_keeps_a_failing_model_under_rejected(texts: Texts, tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        texts,
        "{scheme: W4A16, algorithm: RTN, groupSize: 256, symmetric: true}",
        acceptance="acceptance: {maxPerplexityIncrease: 0.0}",
    )
    assert run.proc.returncode == ExitCode.GATE_FAILED, run.proc.stderr[-3000:]
    assert "gate maxPerplexityIncrease failed: perplexity rose by" in run.proc.stderr
    assert not (run.output / "manifest.json").exists()
    rejected = json.loads((run.output / "rejected" / "manifest.json").read_text())
    assert rejected["passed"] is False
    assert rejected["result"]["gates"][0]["measured"] > 0


def test_w8a8_and_fp8_dynamic_publish_checkpoints_transformers_loads_on_a_cpu(texts: Texts, tmp_path: Path) -> None:
    cases = {
        "{scheme: W8A8, smoothingStrength: 0.5}": ("SmoothQuant+GPTQ", "int8 channel", "int8 dynamic token", "int"),
        "{scheme: FP8Dynamic}": ("RTN", "float8 channel", "float8 dynamic token", "float"),
    }
    gate = "acceptance: {maxPerplexityIncrease: 0.05}"
    folders = [tmp_path / str(i) for i in range(len(cases))]
    jobs = [
        write_job(f, job_yaml(texts, step, acceptance=gate, eval_samples=12))
        for f, step in zip(folders, cases, strict=True)
    ]
    for proc, folder, expected in zip(kompression_runs(*jobs), folders, cases.values(), strict=True):
        run = Run(proc, folder / "out")
        algorithm, weights, activations, form = expected
        assert run.proc.returncode == 0, run.proc.stderr[-3000:]
        notes = run.notes()
        assert (notes["algorithm"], notes["weights"], notes["activations"]) == (algorithm, weights, activations)
        config = json.loads((run.folder / "model" / "config.json").read_text())["quantization_config"]
        assert config["format"] == f"{form}-quantized"
        # The perplexity is the published folder's, loaded back by transformers on the CPU; it passed the gate.
        assert run.report["result"]["gates"][0]["passed"]
        assert abs(run.increase) < 0.05


# NVFP4 and MXFP4 declare the same GPU need (LLMQuantizeStep.__needs__); one scheme keeps CI short.
@pytest.mark.parametrize("scheme", ["NVFP4"])
def test_gpu_only_schemes_fail_on_a_cpu_naming_the_cause(scheme: str, texts: Texts, tmp_path: Path) -> None:
    # Without a GPU asked for, validation refuses the job before anything runs ...
    refused = _run(tmp_path / "no-gpu", texts, f"{{scheme: {scheme}}}")
    assert refused.proc.returncode == ExitCode.INVALID_SPEC
    assert "llmQuantize with scheme NVFP4 or MXFP4 needs a GPU" in refused.proc.stderr
    # ... and with one asked for, a worker that sees no CUDA device fails before any work.
    job = job_yaml(texts, f"{{scheme: {scheme}}}").replace("gpus: 0", "gpus: 1")
    run = Run(kompression_run(write_job(tmp_path / "gpu", job)), tmp_path / "gpu" / "out")
    assert run.proc.returncode == ExitCode.RUNTIME_MISSING
    assert "error (RuntimeMissing, exit code 7): step " in run.proc.stderr
    assert "needs a GPU; NVFP4 and MXFP4 are GPU-only formats" in run.proc.stderr
    assert "this worker sees no CUDA device" in run.proc.stderr
    assert "Traceback" not in run.proc.stderr
    assert not run.output.exists()


def test_pickled_weights_are_refused(texts: Texts, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(FIXTURE, model)
    (model / "pytorch_model.bin").write_bytes(b"not loaded")
    proc = kompression_run(write_job(tmp_path, job_yaml(texts, "{scheme: W4A16, algorithm: RTN}"), model=model))
    assert proc.returncode == ExitCode.MODEL_ERROR
    assert "pickled weights (pytorch_model.bin)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_jsonl_without_a_text_field_is_a_data_error(texts: Texts, tmp_path: Path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no text field"}\n')
    run = _run(tmp_path, texts, "{scheme: W4A16, algorithm: RTN}", evaluation=bad)
    assert run.proc.returncode == ExitCode.DATA_ERROR
    assert "spec.data.evaluation: eval.jsonl line 2 needs exactly one of a `text` string" in run.proc.stderr
