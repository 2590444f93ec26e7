"""Planning a sweep: Grid's order, Random's seeded draw, TPE's replayable proposals, each trial's spec,
the Pareto front (against a brute-force front) and the best trial, and the explain table."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kompression.api.sweep_plan import (
    best,
    explain,
    metrics_from_result,
    next_trials,
    pareto_front,
    parse_sweep,
    plan,
    trial_count,
)
from kompression.api.v1alpha1 import Metrics, Objective, Result, TrialMetrics, TrialStatus
from sweep_cases import SWEEP, sweep


def test_grid_is_the_cartesian_product_first_axis_slowest() -> None:
    trials = plan(parse_sweep(SWEEP).spec)
    expected = list(itertools.product([0.3, 0.5, 0.7], ["DynamicInt8", "StaticInt8"], [True, False]))
    assert [tuple(t.values.values()) for t in trials] == expected
    assert [t.suffix for t in trials] == [f"t{i:02d}" for i in range(12)]
    assert [t.index for t in trials] == list(range(12))


def test_each_trial_spec_has_its_values_applied_and_an_output_of_its_own() -> None:
    trials = plan(parse_sweep(SWEEP).spec)
    t = trials[9]  # sparsity 0.7, DynamicInt8, without distill
    assert [s.name for s in t.spec.steps] == ["prune", "int8"]
    assert t.spec.steps[0].prune is not None and t.spec.steps[0].prune.sparsity == 0.7
    assert t.spec.steps[0].prune.fineTune is not None  # the template's other options are kept
    assert t.spec.steps[1].quantize is not None and t.spec.steps[1].quantize.method == "DynamicInt8"
    assert t.spec.output.uri == "file://.kompression/sweep/out/t09/"
    assert len({tr.spec.output.uri for tr in trials}) == 12


def test_random_draws_distinct_combinations_repeatably_by_seed() -> None:
    def draw(seed: int) -> list[tuple[Any, ...]]:
        spec = parse_sweep(sweep(search={"algorithm": "Random", "maxTrials": 5, "seed": seed})).spec
        return [tuple(t.values.values()) for t in plan(spec)]

    first = draw(7)
    assert len(first) == 5 == len(set(first))
    assert draw(7) == first
    assert draw(8) != first
    assert trial_count(parse_sweep(sweep(search={"algorithm": "Random", "maxTrials": 50})).spec) == 12


def test_next_trials_continues_the_fixed_plan_from_the_trials_made() -> None:
    spec = parse_sweep(SWEEP).spec
    whole = plan(spec)
    made = [TrialStatus(name=t.suffix, index=t.index, parameters=t.values) for t in whole[:5]]
    assert [t.values for t in next_trials(spec, made, 3)] == [t.values for t in whole[5:8]]
    assert next_trials(spec, made + [TrialStatus(name="x", index=i, parameters={}) for i in range(5, 12)], 3) == []


def _measure(values: dict[str, Any]) -> TrialMetrics:
    """A made-up but deterministic outcome of a trial: more sparsity compresses more and costs accuracy."""
    ratio = 4 * (1 + values["sparsity"]) * (1.2 if values["method"] == "StaticInt8" else 1.0)
    return TrialMetrics(compressionRatio=ratio, accuracyDelta=-values["sparsity"] / (2 if values["distill"] else 1))


def test_tpe_replays_history_so_the_next_proposal_survives_a_restart() -> None:
    spec = parse_sweep(sweep(search={"algorithm": "TPE", "maxTrials": 8, "seed": 3})).spec
    made: list[TrialStatus] = []
    for _ in range(8):
        (proposal,) = next_trials(spec, made, 1)
        # A restarted controller knows only the trials made: it proposes the same one.
        (again,) = next_trials(spec, list(reversed(made)), 1)
        assert again.values == proposal.values and again.suffix == proposal.suffix
        made.append(
            TrialStatus(
                name=proposal.suffix,
                index=proposal.index,
                parameters=proposal.values,
                phase="Succeeded",
                metrics=_measure(proposal.values),
            )
        )
    combos = [tuple(t.parameters.values()) for t in made]
    assert len(set(combos)) == 8  # never a trial twice
    assert next_trials(spec, made, 1) == []


def test_tpe_proposes_several_at_once_for_parallel_trials_without_repeats() -> None:
    spec = parse_sweep(sweep(search={"algorithm": "TPE", "maxTrials": 12})).spec
    proposals = next_trials(spec, [], 12)
    assert len({tuple(p.values.values()) for p in proposals}) == 12
    assert [p.index for p in proposals] == list(range(12))


OBJECTIVES = [Objective(metric="compressionRatio"), Objective(metric="latencyMs")]


def _trial(i: int, ratio: float | None, latency: float | None, phase: str = "Succeeded") -> TrialStatus:
    return TrialStatus(
        name=f"t{i}",
        index=i,
        phase=phase,  # type: ignore[arg-type]
        metrics=TrialMetrics(compressionRatio=ratio, latencyMs=latency),
    )


def test_front_keeps_passing_trials_with_every_objective_and_no_better_rival() -> None:
    trials = [
        _trial(0, 4.0, 2.0),
        _trial(1, 8.0, 3.0),
        _trial(2, 3.0, 2.5),  # beaten by t0 on both
        _trial(3, 9.0, 1.0, phase="Rejected"),  # would dominate, but missed a gate
        _trial(4, None, 0.5),  # lacks an objective
        _trial(5, 4.0, 2.0),  # ties t0: both stay
    ]
    assert [t.name for t in pareto_front(trials, OBJECTIVES)] == ["t0", "t1", "t5"]
    chosen = best(trials, OBJECTIVES)
    assert chosen is not None and chosen.name == "t1"
    assert best([trials[3], trials[4]], OBJECTIVES) is None


def test_best_breaks_ties_by_the_next_objective_then_the_lower_index() -> None:
    trials = [_trial(0, 8.0, 3.0), _trial(1, 8.0, 2.0), _trial(2, 8.0, 2.0)]
    chosen = best(trials, OBJECTIVES)
    assert chosen is not None and chosen.name == "t1"


def _brute_front(points: list[tuple[float, float]], directions: list[str]) -> set[int]:
    sign = [1 if d == "Maximize" else -1 for d in directions]
    front = set()
    for i, p in enumerate(points):
        beaten = False
        for j, q in enumerate(points):
            if j == i:
                continue
            ge = all(s * q[k] >= s * p[k] for k, s in enumerate(sign))
            gt = any(s * q[k] > s * p[k] for k, s in enumerate(sign))
            beaten |= ge and gt
        if not beaten:
            front.add(i)
    return front


@settings(max_examples=200, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 6).map(float), st.integers(0, 6).map(float)), min_size=0, max_size=12),
    directions=st.lists(st.sampled_from(["Maximize", "Minimize"]), min_size=2, max_size=2),
)
def test_front_equals_the_brute_force_front(points: list[tuple[float, float]], directions: list[str]) -> None:
    objectives = [
        Objective(metric="compressionRatio", direction=directions[0]),  # type: ignore[arg-type]
        Objective(metric="latencyMs", direction=directions[1]),  # type: ignore[arg-type]
    ]
    trials = [_trial(i, r, lat) for i, (r, lat) in enumerate(points)]
    assert {t.index for t in pareto_front(trials, objectives)} == _brute_front(points, directions)
    chosen = best(trials, objectives)
    if points:
        assert chosen is not None and chosen.index in _brute_front(points, directions)
    else:
        assert chosen is None


def test_metrics_come_from_the_job_result_under_the_objective_names() -> None:
    result = Result(
        final=Metrics(accuracy=0.9, perplexity=None, latencyMs=1.5),
        compressionRatio=6.0,
        accuracyDelta=-0.01,
        speedup=1.8,
    )
    assert metrics_from_result(result) == TrialMetrics(
        accuracy=0.9, accuracyDelta=-0.01, compressionRatio=6.0, latencyMs=1.5, speedup=1.8
    )
    assert metrics_from_result(None) is None


def test_explain_lists_the_axes_and_every_trial() -> None:
    text = explain(parse_sweep(SWEEP))
    lines = text.splitlines()
    assert lines[0].startswith("CompressionSweep digits: Grid, 12 trials of 12 combinations, at most 2 at once")
    assert "distill   distill  (runs)    True, False" in lines
    assert any(
        line.split() == ["t09", "0.7", "DynamicInt8", "False", "file://.kompression/sweep/out/t09/"] for line in lines
    )
    tpe = explain(parse_sweep(sweep(search={"algorithm": "TPE", "maxTrials": 4})))
    assert "TPE, 4 trials of 12 combinations" in tpe and "t00" not in tpe
