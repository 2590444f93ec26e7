"""What a job's steps need from the worker, read from the API's declaration of each step.

The one worker function that reads it (`job_needs`): which environment and model kind the steps
run on, which steps calibrate on text, and which need a GPU. Everything in the worker that acts on
a step's needs (the extras `kompression run` requires, the model kind the loader keeps, the text a
checkpoint folder's job reads, the GPU check) asks here.
"""

from __future__ import annotations

from dataclasses import dataclass

from kompression.api.v1alpha1 import LLM_GPU_ONLY_SCHEMES, CompressionJob


@dataclass(frozen=True)
class JobNeeds:
    # The steps are LLM techniques: the worker-llm environment, on a HuggingFace checkpoint folder.
    llm: bool
    calibration_text: frozenset[str]  # the steps that calibrate on spec.data.calibration's text
    gpu_only: tuple[str, ...]  # why a step cannot run without a GPU, one sentence each


def job_needs(job: CompressionJob) -> JobNeeds:
    """The job's needs, as its steps declare them."""
    calibrated = set()
    gpu_only = []
    for step in job.spec.steps:
        # SparseGPT and Wanda choose their zeros from calibration text; llmQuantize says for itself.
        if step.llmSparsify is not None or (step.llmQuantize is not None and step.llmQuantize.needs_calibration):
            calibrated.add(step.name)
        if step.llmQuantize is not None and step.llmQuantize.scheme in LLM_GPU_ONLY_SCHEMES:
            gpu_only.append(
                f"scheme {step.llmQuantize.scheme} is a GPU-only format (its kernels and its checkpoints' consumers "
                "run on NVIDIA GPUs)"
            )
    return JobNeeds(job.spec.runs_llm, frozenset(calibrated), tuple(gpu_only))


def gpu_refusal(reason: str, gpus: int) -> str:
    """The message for a step that needs a GPU in a worker without one."""
    why = "resources.gpus is 0" if gpus == 0 else "this worker sees no CUDA device"
    return f"{reason}, and {why}; run it with resources.gpus >= 1 on a GPU node, or use W4A16 or W8A8 on a CPU"
