"""What the worker tells the operator: the same shape live (progress channel), in the pod's
termination message (compact), and in report.json under the output prefix (complete)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from kompression.api.failures import Reason
from kompression.api.v1alpha1 import ApiModel, Artifact, Environment, MemoryPlan, Progress, Result, StepStatus


class WorkerReport(ApiModel):
    """A snapshot of the worker's state. Each report replaces the previous one (it is not a delta),
    so a lost or repeated POST is harmless."""

    phase: Literal["Running", "Succeeded", "Failed"] = Field(description="The worker's state.")
    currentStep: str | None = Field(None, description="The step running now.")
    progress: Progress | None = Field(None, description="Percent done and time left.")
    steps: list[StepStatus] = Field(default_factory=list, description="Per-step state and metrics.")
    result: Result | None = Field(None, description="The outcome, once known.")
    artifacts: list[Artifact] = Field(default_factory=list, description="Published files with digests.")
    environment: Environment | None = Field(None, description="Versions and hardware.")
    memoryPlan: MemoryPlan | None = Field(None, description="An LLM job's planned peak memory and disk.")
    reason: Reason | None = Field(
        None, description="With phase Failed: one CamelCase word, a reason of the failure table (api/failures.py)."
    )
    message: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        None, description="Human-readable details."
    )
    sequence: int = Field(0, ge=0, description="Increases with each report, so stale ones can be dropped.")
