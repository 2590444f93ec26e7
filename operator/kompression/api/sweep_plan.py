"""Planning a CompressionSweep, shared by the controller and `kompression sweep`: which trials it makes,
each trial's CompressionJob spec, and how finished trials rank (the Pareto front, the best one).

Pure: no cluster, no torch. The plan is a function of the sweep's spec and of the trials made so far
only, so a restarted controller, or a second run of the local command, plans the same trials.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kompression.api.constants import API_VERSION, SWEEP_KIND
from kompression.api.v1alpha1 import (
    MAX_TRIALS,
    BestTrial,
    CompressionJobSpec,
    CompressionSweep,
    CompressionSweepSpec,
    Objective,
    Parameter,
    Result,
    TrialCounts,
    TrialMetrics,
    TrialStatus,
    axis_target,
    takes_integers,
    with_value,
)
from kompression.api.validation import (
    FieldError,
    SpecInvalid,
    integral_floats_as_ints,
    metadata_errors,
    pydantic_errors,
    rule_errors,
)
from kompression.extras import Need, require

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Axis:
    """A parameter with its values expanded and its target located in the template."""

    parameter: Parameter
    values: tuple[Any, ...]
    step: int  # index of the template step it varies


@dataclass(frozen=True)
class PlannedTrial:
    """One trial: its number, the suffix of its name, its value per axis and its CompressionJob spec."""

    index: int
    suffix: str
    values: dict[str, Any]
    spec: CompressionJobSpec


def axes(spec: CompressionSweepSpec) -> list[Axis]:
    """The sweep's axes, in order, with their values."""
    out = []
    for parameter in spec.parameters:
        step, info = axis_target(spec.template, parameter)
        values = parameter.resolved_values(info is not None and takes_integers(info))
        out.append(Axis(parameter, tuple(values), step))
    return out


def combinations(spec: CompressionSweepSpec) -> int:
    """How many distinct combinations the axes make."""
    return math.prod(len(a.values) for a in axes(spec))


def trial_count(spec: CompressionSweepSpec) -> int:
    """How many trials the sweep makes: every combination (Grid), or maxTrials of them at most."""
    total = combinations(spec)
    return total if spec.search.maxTrials is None else min(total, spec.search.maxTrials)


def trial_suffix(index: int, total: int) -> str:
    """The trial's name within its sweep: t0, t1, ... zero-padded so that names sort by number."""
    return f"t{index:0{len(str(max(total - 1, 0)))}d}"


def trial_output(uri: str, suffix: str) -> str:
    """Where a trial publishes: a folder of its own under the template's output, so no two trials
    overlap (the operator holds a job whose output overlaps another's)."""
    return f"{uri.rstrip('/')}/{suffix}/"


def apply_values(spec: CompressionSweepSpec, values: dict[str, Any], suffix: str) -> CompressionJobSpec:
    """The template with each axis's value applied and the output moved to the trial's own folder.
    Raises SpecInvalid (naming the trial and its values) when the combination breaks a job rule."""
    wire = spec.template.to_wire()
    steps: list[dict[str, Any]] = wire["steps"]
    keep = [True] * len(steps)
    for axis in axes(spec):
        value, field = values[axis.parameter.name], axis.parameter.field
        if field is None:
            keep[axis.step] = bool(value)
        else:
            kind = spec.template.steps[axis.step].kind
            steps[axis.step] = with_value(steps[axis.step], kind, field, value)
    wire["steps"] = [s for s, k in zip(steps, keep, strict=True) if k]
    wire["output"]["uri"] = trial_output(wire["output"]["uri"], suffix)
    where = f"trial {suffix} ({describe_values(values)})"
    try:
        job = CompressionJobSpec.model_validate(wire, strict=True)
    except ValidationError as exc:
        raise SpecInvalid(
            [FieldError(f"{where}: {e.path}", e.message) for e in pydantic_errors(exc)], kind=SWEEP_KIND
        ) from None
    errors = rule_errors(job, "template")
    if errors:
        raise SpecInvalid([FieldError(f"{where}: {e.path}", e.message) for e in errors], kind=SWEEP_KIND)
    return job


def describe_values(values: dict[str, Any]) -> str:
    """`sparsity=0.5, method=DynamicInt8`: a trial's values in one line."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _decode(number: int, sizes: Sequence[int]) -> list[int]:
    """The value indices of the combination with this number, the first axis varying slowest."""
    out = []
    for size in reversed(sizes):
        number, rest = divmod(number, size)
        out.append(rest)
    return out[::-1]


def _combination(all_axes: Sequence[Axis], indices: Sequence[int]) -> dict[str, Any]:
    return {a.parameter.name: a.values[i] for a, i in zip(all_axes, indices, strict=True)}


def _fixed_plan(spec: CompressionSweepSpec) -> Iterator[dict[str, Any]]:
    """Grid's and Random's trials, in order: they do not depend on results."""
    all_axes = axes(spec)
    sizes = [len(a.values) for a in all_axes]
    if spec.search.algorithm == "Grid":
        for indices in itertools.product(*(range(s) for s in sizes)):
            yield _combination(all_axes, indices)
        return
    # Drawn from the numbers of the combinations, never materialized: a space can be far larger than its sample.
    chosen = random.Random(spec.search.seed_or_default).sample(range(math.prod(sizes)), trial_count(spec))
    for number in chosen:
        yield _combination(all_axes, _decode(number, sizes))


def plan(spec: CompressionSweepSpec) -> list[PlannedTrial]:
    """Every trial of a Grid or Random sweep, in order (a TPE sweep's come from next_trials)."""
    if spec.search.algorithm == "TPE":
        raise ValueError("a TPE sweep's trials depend on the results: use next_trials")
    total = trial_count(spec)
    out = []
    for index, values in enumerate(_fixed_plan(spec)):
        suffix = trial_suffix(index, total)
        out.append(PlannedTrial(index, suffix, values, apply_values(spec, values, suffix)))
    return out


def _value_index(axis: Axis, value: Any) -> int:
    return axis.values.index(value)


def _history_trial(
    trial: TrialStatus,
    all_axes: Sequence[Axis],
    objectives: Sequence[Objective],
    distributions: dict[str, optuna.distributions.BaseDistribution],
) -> optuna.trial.FrozenTrial:
    """A trial made earlier, as Optuna's study records it: its values, and its objectives once known."""
    import optuna  # only TPE needs Optuna, the operator extra's (see _tpe_trials)

    params = {a.parameter.name: _value_index(a, trial.parameters[a.parameter.name]) for a in all_axes}
    measured = objective_values(trial, objectives)
    if trial.phase in ("Succeeded", "Rejected") and measured is not None:
        state, values = optuna.trial.TrialState.COMPLETE, measured
    elif trial.phase in ("Pending", "Running"):
        # Running trials are told as such, so that the sampler's constant liar steers away from them.
        state, values = optuna.trial.TrialState.RUNNING, None
    else:
        state, values = optuna.trial.TrialState.FAIL, None
    return optuna.trial.create_trial(state=state, params=params, distributions=distributions, values=values)


def next_trials(spec: CompressionSweepSpec, made: Sequence[TrialStatus], count: int) -> list[PlannedTrial]:
    """The next `count` trials (fewer once the sweep has made all of its), given the trials made so far:
    the lowest numbers not made yet, so a trial deleted by hand is made again.

    Grid and Random: those of the fixed plan. TPE: see _tpe_trials.
    """
    total = trial_count(spec)
    taken = {t.index for t in made}
    indices = [i for i in range(total) if i not in taken][: max(0, count)]
    if spec.search.algorithm == "TPE":
        return _tpe_trials(spec, made, indices)
    chosen = set(indices)
    return [
        PlannedTrial(i, trial_suffix(i, total), v, apply_values(spec, v, trial_suffix(i, total)))
        for i, v in enumerate(_fixed_plan(spec))
        if i in chosen
    ]


def _tpe_trials(spec: CompressionSweepSpec, made: Sequence[TrialStatus], indices: Sequence[int]) -> list[PlannedTrial]:
    """Optuna's TPESampler, told every trial made so far (finished ones with their objectives, unfinished
    ones as running), asks for each next trial. Its seed is the sweep's plus the trial's number, so the
    same history always yields the same proposal, whether the controller restarted in between or not.
    A proposal that repeats a trial already made is replaced by a seeded draw among those not made yet.
    Each axis is a categorical distribution over the indices of its values (which may be any JSON)."""
    require(Need("search algorithm TPE", "operator", ("optuna",)))
    # Imported here, not at the top: Grid and Random sweeps plan without Optuna, so `kompression sweep`
    # runs them with the worker extra alone.
    import optuna

    # Optuna logs every trial it is told about at INFO; the sweep's status says the same.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total = trial_count(spec)
    all_axes = axes(spec)
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        a.parameter.name: optuna.distributions.CategoricalDistribution(tuple(range(len(a.values)))) for a in all_axes
    }
    history = sorted(made, key=lambda t: t.index)
    out: list[PlannedTrial] = []
    for index in indices:
        study = optuna.create_study(
            directions=[
                optuna.study.StudyDirection.MAXIMIZE
                if o.direction_or_default == "Maximize"
                else optuna.study.StudyDirection.MINIMIZE
                for o in spec.objectives
            ],
            sampler=optuna.samplers.TPESampler(seed=spec.search.seed_or_default + index),
        )
        for trial in history:
            study.add_trial(_history_trial(trial, all_axes, spec.objectives, distributions))
        asked = study.ask(distributions)
        values = _combination(all_axes, [asked.params[a.parameter.name] for a in all_axes])
        tried = [t.parameters for t in history]
        if values in tried:
            values = _untried(all_axes, tried, random.Random(spec.search.seed_or_default + index))
        suffix = trial_suffix(index, total)
        out.append(PlannedTrial(index, suffix, values, apply_values(spec, values, suffix)))
        history.append(TrialStatus(name=suffix, index=index, parameters=values, phase="Pending"))
    return out


def _untried(all_axes: Sequence[Axis], tried: Sequence[dict[str, Any]], rng: random.Random) -> dict[str, Any]:
    """A combination not in `tried`, drawn at random (there is one: fewer trials than combinations are made)."""
    sizes = [len(a.values) for a in all_axes]
    for number in rng.sample(range(math.prod(sizes)), min(math.prod(sizes), len(tried) + 1)):
        values = _combination(all_axes, _decode(number, sizes))
        if values not in tried:
            return values
    raise AssertionError("every combination is tried, yet the sweep plans another trial")


def parse_sweep(obj: Any) -> CompressionSweep:
    """Parse a CompressionSweep manifest, raising SpecInvalid with every problem found: the API's rules,
    each axis against the template, and (Grid and Random) every trial's CompressionJob spec."""
    if not isinstance(obj, dict):
        raise SpecInvalid([FieldError("<root>", f"expected a mapping, got {type(obj).__name__}")], kind=SWEEP_KIND)
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != SWEEP_KIND:
        raise SpecInvalid(
            [FieldError("apiVersion/kind", f"expected {API_VERSION} {SWEEP_KIND}")], name, kind=SWEEP_KIND
        )
    try:
        sweep = CompressionSweep.model_validate(integral_floats_as_ints(obj), strict=True)
    except ValidationError as exc:
        raise SpecInvalid(metadata_errors(meta) + pydantic_errors(exc), name, kind=SWEEP_KIND) from None
    errors = metadata_errors(meta) + rule_errors(sweep.spec, "spec")
    if not errors and sweep.spec.search.algorithm == "Grid" and combinations(sweep.spec) > MAX_TRIALS:
        errors.append(
            FieldError(
                "spec.parameters",
                f"the grid has {combinations(sweep.spec)} combinations, more than {MAX_TRIALS}; use fewer values, "
                "or search Random or TPE with maxTrials",
            )
        )
    if errors:
        raise SpecInvalid(errors, name, kind=SWEEP_KIND)
    if sweep.spec.search.algorithm != "TPE":
        try:
            plan(sweep.spec)
        except SpecInvalid as exc:  # the first trial whose combination breaks a job rule
            raise SpecInvalid(exc.errors, name, kind=SWEEP_KIND) from None
    return sweep


def metrics_from_result(result: Result | None) -> TrialMetrics | None:
    """A trial's measurements, under the objectives' metric names, from its CompressionJob's status.result."""
    if result is None:
        return None
    final = result.final
    return TrialMetrics(
        accuracy=final.accuracy if final else None,
        accuracyDelta=result.accuracyDelta,
        perplexity=final.perplexity if final else None,
        compressionRatio=result.compressionRatio,
        latencyMs=final.latencyMs if final else None,
        speedup=result.speedup,
    )


def objective_values(trial: TrialStatus, objectives: Sequence[Objective]) -> list[float] | None:
    """The trial's value of each objective, or None when it lacks one."""
    if trial.metrics is None:
        return None
    values = [getattr(trial.metrics, o.metric) for o in objectives]
    return None if any(v is None for v in values) else values


def _oriented(trial: TrialStatus, objectives: Sequence[Objective]) -> tuple[float, ...] | None:
    """The objective values, negated where smaller is better, so that larger is better throughout."""
    values = objective_values(trial, objectives)
    if values is None:
        return None
    return tuple(v if o.direction_or_default == "Maximize" else -v for v, o in zip(values, objectives, strict=True))


def _candidates(
    trials: Sequence[TrialStatus], objectives: Sequence[Objective]
) -> list[tuple[TrialStatus, tuple[float, ...]]]:
    """Trials that passed their gates and measured every objective."""
    out = []
    for trial in trials:
        point = _oriented(trial, objectives) if trial.phase == "Succeeded" else None
        if point is not None:
            out.append((trial, point))
    return out


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether a is at least as good as b on every objective and better on one (larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_front(trials: Sequence[TrialStatus], objectives: Sequence[Objective]) -> list[TrialStatus]:
    """The passing trials that no other passing trial dominates, by index. Trials that measure the same
    on every objective are all on the front."""
    candidates = _candidates(trials, objectives)
    front = [t for t, p in candidates if not any(dominates(q, p) for _, q in candidates)]
    return sorted(front, key=lambda t: t.index)


def best(trials: Sequence[TrialStatus], objectives: Sequence[Objective]) -> TrialStatus | None:
    """The passing trial best by the first objective; ties go to the next objectives, then the lower index."""
    candidates = _candidates(trials, objectives)
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[1], -c[0].index))[0]


def best_trial(trials: Sequence[TrialStatus], objectives: Sequence[Objective]) -> BestTrial | None:
    """best(), as the status names it: the trial and its metrics; None before one passed."""
    top = best(trials, objectives)
    return BestTrial(name=top.name, metrics=top.metrics) if top is not None and top.metrics else None


def tally(trials: Sequence[TrialStatus], total: int) -> TrialCounts:
    """The status's counts by phase; the trials not made yet count as pending."""
    return TrialCounts(
        pending=sum(t.phase == "Pending" for t in trials) + (total - len(trials)),
        running=sum(t.phase == "Running" for t in trials),
        succeeded=sum(t.phase == "Succeeded" for t in trials),
        rejected=sum(t.phase == "Rejected" for t in trials),
        failed=sum(t.phase == "Failed" for t in trials),
    )


def explain(sweep: CompressionSweep) -> str:
    """The trials a sweep will make, as a table (a TPE sweep's axes, since its trials follow its results)."""
    spec = sweep.spec
    all_axes = axes(spec)
    total = trial_count(spec)
    head = (
        f"{SWEEP_KIND} {sweep.metadata.name or '<unnamed>'}: {spec.search.algorithm}, {total} trials of "
        f"{combinations(spec)} combinations, at most {spec.parallelism} at once; objectives "
        + ", ".join(f"{o.metric} ({o.direction_or_default})" for o in spec.objectives)
    )
    axis_rows = [
        [a.parameter.name, a.parameter.step, a.parameter.field or "(runs)", ", ".join(map(str, a.values))]
        for a in all_axes
    ]
    lines = [head, "", *_table(["axis", "step", "field", "values"], axis_rows)]
    if spec.search.algorithm == "TPE":
        lines += [
            "",
            "TPE proposes each trial from the results of those before it, so its trials are known only as "
            "the sweep runs.",
        ]
    else:
        rows = [[t.suffix, *(str(t.values[a.parameter.name]) for a in all_axes), t.spec.output.uri] for t in plan(spec)]
        lines += ["", *_table(["trial", *(a.parameter.name for a in all_axes), "output"], rows)]
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    render = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return [render[0], "  ".join("-" * w for w in widths), *render[1:]]
