"""The CompressionSweep: a template CompressionJob spec, the axes that vary it, how to search them, and
the objectives that rank the trials; and its status (trials, Pareto front, best trial)."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints, ValidationError, WithJsonSchema, model_validator
from pydantic.fields import FieldInfo

from kompression.api.rules import Rule, verdicts
from kompression.api.v1alpha1.base import DNS_LABEL_PATTERN, ApiModel, ShortString, StepName, Timestamp
from kompression.api.v1alpha1.job import CompressionJobSpec, ObjectMeta
from kompression.api.v1alpha1.status import Condition
from kompression.api.v1alpha1.step import TECHNIQUES

# Bounds that keep a sweep's status under the API server's object size limit (a trial's status is a
# few hundred bytes) and its planning cheap.
MAX_TRIALS = 1000
MAX_AXES = 16
MAX_VALUES = 1000
MAX_OBJECTIVES = 4

# Any JSON value but null: the API server prunes nulls, so a null value would reach no trial.
ParameterValue = Annotated[
    Any,
    WithJsonSchema(
        {
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "A value for the field: a number, string, boolean, list or object.",
        }
    ),
]

ObjectiveMetric = Literal["accuracy", "accuracyDelta", "perplexity", "compressionRatio", "latencyMs", "speedup"]
Direction = Literal["Maximize", "Minimize"]
# Which way each metric is better, when an objective does not say.
NATURAL_DIRECTION: dict[str, Direction] = {
    "accuracy": "Maximize",
    "accuracyDelta": "Maximize",
    "perplexity": "Minimize",
    "compressionRatio": "Maximize",
    "latencyMs": "Minimize",
    "speedup": "Maximize",
}


class ValueRange(ApiModel):
    """Numeric values from start to stop: every `step` apart (scale Linear) or `count` values evenly
    spaced on a log scale (scale Log). A field that takes integers gets the values rounded, repeats dropped."""

    start: float = Field(description="The first value.")
    stop: float = Field(description="The last value (included when a step lands on it).")
    scale: Literal["Linear", "Log"] = Field("Linear", description="Linear (needs step) or Log (needs count).")
    step: float | None = Field(None, gt=0, description="Scale Linear only: the distance between values.")
    count: int | None = Field(
        None, ge=2, le=MAX_VALUES, description="Scale Log only: how many values, start and stop included."
    )

    __rules__ = (
        Rule(cel="self.start <= self.stop", message="range.start must not exceed range.stop", field_path=".start"),
        Rule(
            cel="self.scale != 'Linear' || (has(self.step) && !has(self.count))",
            message="a Linear range takes `step` (the distance between values), not `count`",
            field_path=".step",
        ),
        Rule(
            cel="self.scale != 'Log' || (has(self.count) && !has(self.step) && self.start > 0.0)",
            message="a Log range takes `count` (how many values) and needs start > 0, not `step`",
            field_path=".count",
        ),
        Rule(
            cel="self.scale != 'Linear' || !has(self.step) || (self.stop - self.start) / self.step < "
            f"{float(MAX_VALUES)}",
            message=f"a Linear range may hold at most {MAX_VALUES} values; raise `step`",
            field_path=".step",
        ),
    )

    def values(self, integer: bool) -> list[int | float]:
        """The range's values; rounded to integers (repeats dropped) when the field takes integers."""
        if self.scale == "Log":
            assert self.count is not None
            ratio = (self.stop / self.start) ** (1 / (self.count - 1))
            raw = [self.start * ratio**i for i in range(self.count - 1)] + [self.stop]
        else:
            assert self.step is not None
            n = int((self.stop - self.start) / self.step + 1e-9)
            raw = [self.start + i * self.step for i in range(n + 1)]
        # Rounded so that 0.1 + 2 * 0.1 reads 0.3 in manifests and reports, not 0.30000000000000004.
        out: list[int | float] = [round(v) if integer else float(f"{v:.10g}") for v in raw]
        return list(dict.fromkeys(out))


class Parameter(ApiModel):
    """One axis of the search: a field of one step of the template and the values it takes."""

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL_PATTERN, max_length=63)] = Field(
        description="Name of the axis (a DNS label), shown in the sweep's status and report."
    )
    step: StepName = Field(description="Name of a step of the template.")
    field: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z][a-zA-Z0-9]*(\.[a-zA-Z][a-zA-Z0-9]*)*$")] | None = Field(
        None,
        max_length=253,
        description=(
            "Path of a field inside that step's technique options, dots between levels: `sparsity`, "
            "`method`, `fineTune.epochs`. Unset: the axis decides whether the step runs at all, and its "
            "values are true and false."
        ),
    )
    values: list[ParameterValue] | None = Field(
        None,
        min_length=1,
        max_length=MAX_VALUES,
        description="The values, each of which the field's own schema must accept.",
    )
    range: ValueRange | None = Field(None, description="Numeric values from start to stop, instead of `values`.")

    __rules__ = (
        Rule(
            cel="has(self.field) || !has(self.range)",
            message="an axis without `field` includes or leaves out its step: give `values: [true, false]`, not a range",
            field_path=".range",
        ),
    )

    @model_validator(mode="after")
    def _values_or_range(self) -> Parameter:
        # Not a CEL rule: the API server hides untyped nodes (`values` takes any JSON) from CEL, so
        # `kompression validate` and the controller refuse this one.
        if (self.values is None) == (self.range is None):
            raise ValueError(
                f"axis {self.name}: give either `values` (a list) or `range` (start, stop and step or count)"
            )
        return self

    def resolved_values(self, integer: bool) -> list[Any]:
        """The axis's values: the list as given, or the range expanded."""
        if self.values is not None:
            return list(self.values)
        assert self.range is not None
        return list(self.range.values(integer))


SearchAlgorithm = Literal["Grid", "Random", "TPE"]


class Search(ApiModel):
    """How trials are chosen from the axes' values."""

    algorithm: SearchAlgorithm = Field(
        "Grid",
        description=(
            "Grid runs every combination, in order (the first axis varies slowest). Random draws maxTrials "
            "distinct combinations with `seed`. TPE asks Optuna's tree-structured Parzen estimator, which "
            "proposes each next combination from the objectives of the trials finished so far."
        ),
    )
    maxTrials: int | None = Field(
        None, ge=1, le=MAX_TRIALS, description="Random and TPE only (required there): how many trials to run."
    )
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Random and TPE only: the random seed; unset means 0."
    )

    __rules__ = (
        Rule(
            cel="self.algorithm == 'Grid' || has(self.maxTrials)",
            message="search algorithms Random and TPE need `maxTrials`",
            field_path=".maxTrials",
        ),
        Rule(
            cel="self.algorithm != 'Grid' || (!has(self.maxTrials) && !has(self.seed))",
            message="search algorithm Grid runs every combination: `maxTrials` and `seed` are for Random and TPE",
            field_path=".algorithm",
        ),
    )

    @property
    def seed_or_default(self) -> int:
        """The random seed of Random and TPE."""
        return 0 if self.seed is None else self.seed


class Objective(ApiModel):
    """A metric to maximize or minimize, read from each trial's status.result."""

    metric: ObjectiveMetric = Field(
        description=(
            "accuracy, perplexity and latencyMs are the final model's (status.result.final); accuracyDelta, "
            "compressionRatio and speedup are status.result's."
        )
    )
    direction: Direction | None = Field(
        None,
        description=(
            "Maximize or Minimize. Unset: the metric's better way (Minimize for perplexity and latencyMs, "
            "Maximize for the others)."
        ),
    )

    @property
    def direction_or_default(self) -> Direction:
        """Which way the metric is better."""
        return NATURAL_DIRECTION[self.metric] if self.direction is None else self.direction


class CompressionSweepSpec(ApiModel):
    """The template, the axes, the search and the objectives."""

    template: CompressionJobSpec = Field(
        description="The CompressionJob spec every trial starts from; its acceptance gates apply to every trial."
    )
    parameters: list[Parameter] = Field(
        min_length=1, max_length=MAX_AXES, description="The axes: each varies one field of one step."
    )
    search: Search = Field(default_factory=Search, description="How trials are chosen.")
    objectives: list[Objective] = Field(
        min_length=1,
        max_length=MAX_OBJECTIVES,
        description="What to optimize, most important first: the Pareto front is over all of them, the best "
        "trial is by the first.",
    )
    parallelism: int = Field(1, ge=1, le=256, description="The most trials unfinished at once.")
    maxFailedTrials: int | None = Field(
        None,
        ge=0,
        le=MAX_TRIALS,
        description="End the sweep Failed once more trials than this have failed (a rejected trial, one that "
        "ran but missed a gate, is not failed). Unset: failures never end the sweep early.",
    )
    suspend: bool = Field(False, description="Start no new trials; running ones go on. False resumes.")

    __rules__: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.parameters.all(p, self.parameters.exists_one(q, q.name == p.name))",
            message="parameter names must be unique",
            field_path=".parameters",
        ),
        Rule(
            cel="self.parameters.all(p, self.template.steps.exists(s, s.name == p.step))",
            message="each parameter's `step` must name a step of the template",
            field_path=".parameters",
        ),
        Rule(
            cel="self.objectives.all(o, self.objectives.exists_one(q, q.metric == o.metric))",
            message="each objective's metric may appear once",
            field_path=".objectives",
        ),
    )

    @model_validator(mode="after")
    def _axes_fit_the_template(self) -> CompressionSweepSpec:
        errors = [e for i, axis in enumerate(self.parameters) for e in axis_errors(self.template, axis, i)]
        if errors:
            raise ValueError("; ".join(errors))
        return self


# The spec is immutable except for these (trials already made would no longer match a changed template).
MUTABLE_SWEEP_FIELDS = ("parallelism", "maxFailedTrials", "suspend")
SWEEP_IMMUTABLE_MESSAGE = (
    "a sweep's template, parameters, search and objectives are immutable after creation (only parallelism, "
    "maxFailedTrials and suspend change); create a new CompressionSweep instead"
)
CompressionSweepSpec.__rules__ += (
    Rule(
        cel=" && ".join(
            f"self.{f} == oldSelf.{f}" for f in CompressionSweepSpec.model_fields if f not in MUTABLE_SWEEP_FIELDS
        ),
        message=SWEEP_IMMUTABLE_MESSAGE,
        transition=True,
    ),
)


def _target(config: type[ApiModel], path: str) -> FieldInfo | str:
    """The field a dotted path names inside a technique config, or why it names none."""
    cls: type[ApiModel] | None = config
    info: FieldInfo | None = None
    for part in path.split("."):
        if cls is None or part not in cls.model_fields:
            where = cls.__name__ if cls is not None else "a value"
            accepted = ", ".join(cls.model_fields) if cls is not None else "nothing"
            return f"{where} has no field {part!r}; its fields are {accepted}"
        info = cls.model_fields[part]
        cls = _model_in(info.annotation)
    assert info is not None
    return info


def _model_in(annotation: Any) -> type[ApiModel] | None:
    """The ApiModel class of a field typed X or X | None."""
    if isinstance(annotation, type) and issubclass(annotation, ApiModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, ApiModel)]
        return found[0] if found else None
    return None


def takes_integers(info: FieldInfo) -> bool:
    """Whether a field holds an int (so a range over it yields integers)."""
    annotation = info.annotation
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    return annotation is int or int in args


def axis_target(template: CompressionJobSpec, axis: Parameter) -> tuple[int, FieldInfo | None]:
    """The template step's index an axis varies, and the field (None for an include-the-step axis)."""
    index = next(i for i, s in enumerate(template.steps) if s.name == axis.step)
    if axis.field is None:
        return index, None
    found = _target(TECHNIQUES[template.steps[index].kind], axis.field)
    assert isinstance(found, FieldInfo)
    return index, found


def with_value(step: dict[str, Any], kind: str, path: str, value: Any) -> dict[str, Any]:
    """A step's wire form with one field of its technique options set (parents made as needed)."""
    out = dict(step)
    node = out[kind] = dict(out.get(kind) or {})
    *parents, leaf = path.split(".")
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    node[leaf] = value
    return out


def axis_errors(template: CompressionJobSpec, axis: Parameter, i: int) -> list[str]:
    """Why an axis does not fit the template: a step or field it names that is not there, or a value the
    field's own schema refuses; each message names the axis and what is accepted."""
    where = f"parameters[{i}] ({axis.name})"
    own = [axis, *([axis.range] if axis.range is not None else [])]
    if not all(all(verdicts(type(node).__rules__, node.to_wire())) for node in own):
        return []  # the axis's own rules name what is wrong with it; its values cannot be listed yet
    names = [s.name for s in template.steps]
    if axis.step not in names:
        return [f"{where}: step {axis.step!r} is not a step of the template; its steps are {', '.join(names)}"]
    step = template.steps[names.index(axis.step)]
    if axis.field is None:
        bad = [v for v in axis.resolved_values(False) if not isinstance(v, bool)]
        if bad:
            return [
                f"{where}: without `field` the values say whether step {axis.step} runs: true or false, not {bad[0]!r}"
            ]
        return []
    config = TECHNIQUES[step.kind]
    found = _target(config, axis.field)
    if isinstance(found, str):
        return [f"{where}: {axis.field!r} is no field of step {axis.step} ({step.kind}): {found}"]
    errors = []
    wire = step.to_wire()
    for value in axis.resolved_values(takes_integers(found)):
        if value is None:
            errors.append(f"{where}: a value may not be null")
            continue
        try:
            config.model_validate(with_value(wire, step.kind, axis.field, value)[step.kind], strict=True)
        except ValidationError as exc:
            detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or axis.field}: {e['msg']}" for e in exc.errors())
            errors.append(f"{where}: {step.kind}.{axis.field} refuses {value!r}: {detail}")
    return errors


SweepPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
# Pending: not made yet or waiting for its queue. Rejected: it ran to the end but missed a gate.
TrialPhase = Literal["Pending", "Running", "Succeeded", "Rejected", "Failed"]


class TrialMetrics(ApiModel):
    """What a trial measured, under the objectives' metric names."""

    accuracy: float | None = Field(None, description="The final model's evaluation metric.")
    accuracyDelta: float | None = Field(None, description="Final minus original evaluation metric.")
    perplexity: float | None = Field(None, description="The final model's perplexity (LLM jobs).")
    compressionRatio: float | None = Field(None, description="Original size / final size on disk.")
    latencyMs: float | None = Field(None, description="The final model's median latency in milliseconds.")
    speedup: float | None = Field(None, description="Original / final median latency.")


class TrialStatus(ApiModel):
    """One trial: its child CompressionJob, its values, and what it measured."""

    name: ShortString = Field(description="Name of the trial's CompressionJob.")
    index: int = Field(ge=0, description="The trial's number in the sweep, from 0.")
    parameters: dict[str, ParameterValue] = Field(
        default_factory=dict, description="The value of each axis, by axis name (a left-out step reads false)."
    )
    phase: TrialPhase = Field("Pending", description="Pending, Running, Succeeded, Rejected or Failed.")
    metrics: TrialMetrics | None = Field(None, description="The trial's measurements, once it finished.")
    message: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        None, description="Why it failed or was rejected."
    )


class TrialCounts(ApiModel):
    """How many trials are in each phase."""

    pending: int = Field(0, ge=0, description="Not made yet, or queued.")
    running: int = Field(0, ge=0, description="Running.")
    succeeded: int = Field(0, ge=0, description="Finished and passed every gate.")
    rejected: int = Field(0, ge=0, description="Finished but missed a gate.")
    failed: int = Field(0, ge=0, description="Failed.")


class BestTrial(ApiModel):
    """The best trial by the first objective, among those that passed their gates."""

    name: ShortString = Field(description="Name of the trial's CompressionJob.")
    metrics: TrialMetrics = Field(description="Its measurements.")


class CompressionSweepStatus(ApiModel):
    """The observed state, written by the operator only."""

    phase: SweepPhase | None = Field(None, description="Pending, Running, Succeeded, Failed or Suspended.")
    observedGeneration: int | None = Field(None, ge=0, description="The generation the operator last acted on.")
    trialsTotal: int | None = Field(None, ge=0, description="How many trials the sweep will make.")
    trialsDone: int | None = Field(None, ge=0, description="How many trials finished: succeeded, rejected or failed.")
    counts: TrialCounts | None = Field(None, description="Trials by phase.")
    trials: list[TrialStatus] = Field(
        default_factory=list, max_length=MAX_TRIALS, description="Every trial made so far, by index."
    )
    paretoFront: list[ShortString] = Field(
        default_factory=list,
        max_length=MAX_TRIALS,
        description="Names of the trials no other passing trial beats on every objective.",
    )
    best: BestTrial | None = Field(None, description="The best passing trial by the first objective.")
    startTime: Timestamp | None = Field(None, description="When the first trial was made.")
    completionTime: Timestamp | None = Field(None, description="When the sweep finished.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Latest observations.")


class CompressionSweep(ApiModel):
    """A CompressionSweep runs one CompressionJob per combination of values of its parameters (all of them,
    or those a search picks), and reports the trials' Pareto front over its objectives."""

    apiVersion: Literal["kompression.dev/v1alpha1"] = Field(description="kompression.dev/v1alpha1.")
    kind: Literal["CompressionSweep"] = Field(description="CompressionSweep.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: CompressionSweepSpec = Field(description="The template, the axes, the search and the objectives.")
    status: CompressionSweepStatus | None = Field(None, description="Observed state, written by the operator.")
