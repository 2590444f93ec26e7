"""The LLM tests' jobs: the fixture model, its text splits, and `kompression run` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-llama"


@dataclass(frozen=True)
class Texts:
    calibration: Path  # .txt, the paragraphs the fixture model trained on
    evaluation: Path  # .txt, the held-out paragraphs
    evaluation_jsonl: Path  # the same, as .jsonl


def job_yaml(
    texts: Texts,
    llm_quantize: str,
    *,
    acceptance: str = "",
    evaluation: Path | None = None,
    eval_samples: int = 40,
) -> str:
    """A CompressionJob for the fixture model; llm_quantize is the step's flow mapping. It names no
    output: write_job gives it one."""
    return f"""\
apiVersion: kompression.dev/v1alpha1
kind: CompressionJob
metadata: {{name: tiny-llama}}
spec:
  model:
    uri: file://{FIXTURE}
    format: HuggingFace
    inputs: [{{name: input_ids, shape: [-1, -1], dtype: int64}}]
  data:
    calibration: {{uri: 'file://{texts.calibration}', samples: 32, maxLength: 128}}
    evaluation: {{uri: 'file://{evaluation or texts.evaluation}', samples: {eval_samples}, maxLength: 128}}
  steps:
  - name: quantize
    llmQuantize: {llm_quantize}
  {acceptance}
  resources: {{gpus: 0}}
"""


def write_job(folder: Path, manifest: str | dict[str, Any], *, model: Path = FIXTURE) -> Path:
    """folder/job.yaml (the folder made if missing): `manifest` (job_yaml's, or a job from the docs or
    examples, as YAML or as the document) with `model` as its model and folder/out as its output,
    whatever it named, so that each test's job, and what it publishes, stay in one folder."""
    doc = yaml.safe_load(manifest) if isinstance(manifest, str) else manifest
    doc["spec"]["model"]["uri"] = f"file://{model}"
    doc["spec"]["output"] = {"uri": f"file://{folder}/out/"}
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    return job


def kompression_run(
    job: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    guard: str | None = None,
    answers: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`kompression run` of job as the worker-llm pod runs it: one torch thread, no GPU, `args` after
    the job's. `env` replaces this process's environment; `guard` is a program that runs
    `kompression` under an audit hook (hostile.GUARD: `python -c GUARD run ...`); `answers` go to
    stdin, for a prompt the run must never act on."""
    program = ["-c", guard] if guard is not None else ["-m", "kompression"]
    return subprocess.run(
        [sys.executable, *program, "run", str(job), "--progress", "json", *args],
        input=answers,
        capture_output=True,
        text=True,
        env={**(os.environ if env is None else env), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        check=False,
        timeout=600,
    )


def kompression_runs(*jobs: Path) -> list[subprocess.CompletedProcess[str]]:
    """kompression_run of each job, side by side (CI has two cores, and most of a tiny model's run
    is single-threaded Python)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(kompression_run, jobs))


@dataclass(frozen=True)
class Run:
    """One `kompression run` and what it published under output."""

    proc: subprocess.CompletedProcess[str]
    output: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.output / "manifest.json").read_text())

    @property
    def folder(self) -> Path:
        return self.output / "runs" / self.manifest["runId"]

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.folder / "report.json").read_text())

    @property
    def increase(self) -> float:
        """The final perplexity relative to the original's, minus one."""
        result = self.report["result"]
        return result["final"]["perplexity"] / result["baseline"]["perplexity"] - 1

    def notes(self, step: str = "quantize") -> dict[str, Any]:
        """What report.json says about a step's method."""
        return next(m for m in self.report["details"]["models"] if m["name"] == step)["notes"]

    @property
    def quantization_config(self) -> dict[str, Any]:
        return json.loads((self.folder / "model" / "config.json").read_text())["quantization_config"]
