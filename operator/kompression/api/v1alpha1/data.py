"""spec.data: calibration, evaluation and training data sets, and lm-eval tasks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from kompression.api.rules import Rule
from kompression.api.v1alpha1.base import MAX_SEQUENCE_LENGTH, ApiModel, StepName, StorageUri, uri_rules

TEXT_SUFFIXES = (".jsonl", ".txt")
DEFAULT_PADDING = "MaxLength"
DEFAULT_TRUNCATION = True


def is_text_cel(source: str) -> str:
    """CEL: the data source at `source` is a text set (its uri ends in .jsonl or .txt)."""
    ends = " || ".join(f"{source}.uri.endsWith('{suffix}')" for suffix in TEXT_SUFFIXES)
    return f"(has({source}.uri) && ({ends}))"


_TEXT_ONLY = "is only used by text data (a uri ending in .jsonl or .txt); remove it for .npz and builtin data"


class DataSource(ApiModel):
    """A data set: a file in object storage, or a built-in reference set."""

    uri: StorageUri | None = Field(
        None,
        description=(
            "Where the data set is stored: an .npz file with one array (N, ...) per model input, named as "
            "in spec.model.inputs (`inputs` is the shorthand for a single-input model) and, for labelled "
            "data, an integer `labels` array (N,); or text for a HuggingFace model, tokenized with the "
            "model folder's own tokenizer: .jsonl (one object per line with a `text` string and an "
            "optional integer `label`) or .txt (one sample per line)."
        ),
    )
    builtin: Literal["Digits"] | None = Field(
        None,
        description=(
            "A reference data set shipped with the worker instead of `uri`. Digits is scikit-learn's "
            "8x8 handwritten digits, split deterministically: training and calibration read the "
            "training split, evaluation the held-out split."
        ),
    )
    samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Use at most this many samples; unset uses them all."
    )
    batchSize: int = Field(32, ge=1, le=65536, description="Batch size used when reading this data set.")
    maxLength: int | None = Field(
        None,
        ge=1,
        le=MAX_SEQUENCE_LENGTH,
        description=(
            "Text data: tokens per sample after tokenizing. Unset: the model input's declared sequence "
            "length when it is fixed, else the tokenizer's own limit (capped at 2048 for llmQuantize steps). "
            f"At most {MAX_SEQUENCE_LENGTH} (128Ki), the longest context of today's open models; every "
            "sample may be padded to it, so a larger value would only exhaust the worker's memory."
        ),
    )
    padding: Literal["MaxLength", "Longest"] | None = Field(
        None,
        description=(
            "Text data: pad every sample to maxLength (MaxLength, the default) or to the longest sample "
            "of the data set (Longest)."
        ),
    )
    truncation: bool | None = Field(
        None, description="Text data: cut samples longer than maxLength (default true); false refuses them."
    )

    __rules__ = (
        *uri_rules(optional=True),
        Rule(
            cel="has(self.uri) != has(self.builtin)",
            message="set exactly one of `uri` or `builtin`",
        ),
        *(
            Rule(
                cel=f"!has(self.{name}) || {is_text_cel('self')}",
                message=f"`{name}` {_TEXT_ONLY}",
                field_path=f".{name}",
            )
            for name in ("maxLength", "padding", "truncation")
        ),
    )

    @property
    def is_text(self) -> bool:
        return self.uri is not None and self.uri.endswith(TEXT_SUFFIXES)

    @property
    def padding_or_default(self) -> str:
        return DEFAULT_PADDING if self.padding is None else self.padding

    @property
    def truncation_or_default(self) -> bool:
        return DEFAULT_TRUNCATION if self.truncation is None else self.truncation


class EvaluationData(DataSource):
    """The data set that scores the model before and after every step."""

    metric: Literal["Top1Accuracy", "OutputAgreement", "CosineSimilarity"] = Field(
        "Top1Accuracy",
        description=(
            "How to score. Top1Accuracy needs labels; OutputAgreement (same arg-max as the original "
            "model) and CosineSimilarity (of the outputs; per-token outputs are first mean-pooled over the "
            "`attention_mask` input when the model has one) compare with the original model and need none."
        ),
    )


DATA_ROLES = ("calibration", "evaluation", "training")
MAX_TASKS = 16


class TaskData(ApiModel):
    """A multiple-choice task scored by lm-eval-harness on a local file: nothing is downloaded."""

    name: StepName = Field(description="The task's name in the report (a DNS label, unique among data.tasks).")
    uri: StorageUri = Field(
        description=(
            "Where the task's .jsonl file is stored (the schemes of spec.model.uri). Each line is one question: "
            '{"question": "...", "choices": ["...", "..."], "answer": 0}, where `answer` indexes the correct '
            "choice. The model scores each choice's log-likelihood as the continuation of the question; the "
            "most likely one is its answer."
        )
    )
    samples: int | None = Field(
        None, ge=1, le=10_000_000, description="Score at most this many questions, the file's first; unset scores all."
    )
    fewShot: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Solved questions from the same file put before each question (never the question itself); "
            "0 asks each question alone."
        ),
    )

    __rules__ = (
        *uri_rules(),
        Rule(
            cel="self.uri.endsWith('.jsonl')",
            message='a task is a .jsonl file, one {"question": str, "choices": [str, ...], "answer": int} per line',
            field_path=".uri",
        ),
    )


class DataSpec(ApiModel):
    """The data the steps use."""

    calibration: DataSource | None = Field(
        None, description="Representative inputs for static quantization ranges (StaticInt8, TensorRT INT8)."
    )
    evaluation: EvaluationData | None = Field(
        None, description="Held-out data that measures accuracy for the acceptance gates."
    )
    training: DataSource | None = Field(None, description="Labelled data for fine-tuning and distillation.")
    tasks: list[TaskData] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TASKS,
        description=(
            "llmQuantize only: multiple-choice tasks scored with lm-eval-harness on the original and the "
            "quantized model; their mean `acc` is the job's accuracy, which acceptance.maxAccuracyDrop gates."
        ),
    )

    __rules__ = (
        Rule(
            cel="!has(self.tasks) || self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
            message="task names must be unique",
            field_path=".tasks",
        ),
    )
