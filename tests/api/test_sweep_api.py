"""The CompressionSweep's typed model: axes are checked against the template's steps and each field's
own schema, and every refusal names the axis and what would be accepted."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from api_cases import ROOT

from kompression.api.sweep_plan import next_trials, parse_sweep, trial_count
from kompression.api.v1alpha1 import CompressionSweep, ValueRange
from kompression.api.validation import SpecInvalid, check_update
from sweep_cases import SWEEP, sweep


def _refusal(manifest: dict[str, Any]) -> str:
    with pytest.raises(SpecInvalid) as info:
        parse_sweep(manifest)
    return str(info.value)


def test_the_sample_sweep_parses_with_its_defaults() -> None:
    parsed = parse_sweep(SWEEP)
    assert parsed.spec.search.algorithm == "Grid"
    assert [o.direction_or_default for o in parsed.spec.objectives] == ["Maximize", "Maximize"]
    assert parsed.spec.suspend is False
    assert parsed.spec.maxFailedTrials is None


def test_an_axis_on_a_missing_step_names_the_template_steps() -> None:
    text = _refusal(sweep(parameters=[{"name": "s", "step": "prun", "field": "sparsity", "values": [0.5]}]))
    assert "parameters[0] (s)" in text
    assert "'prun' is not a step of the template; its steps are prune, distill, int8" in text


def test_an_axis_on_a_missing_field_lists_the_fields_of_that_technique() -> None:
    text = _refusal(sweep(parameters=[{"name": "s", "step": "prune", "field": "sparsness", "values": [0.5]}]))
    assert "parameters[0] (s): 'sparsness' is no field of step prune (prune)" in text
    assert "its fields are method, sparsity, ignoreLayers, fineTune" in text


def test_a_nested_field_path_is_followed_and_checked() -> None:
    ok = parse_sweep(
        sweep(parameters=[{"name": "epochs", "step": "prune", "field": "fineTune.epochs", "values": [1, 3]}])
    )
    assert ok.spec.parameters[0].field == "fineTune.epochs"
    text = _refusal(sweep(parameters=[{"name": "e", "step": "prune", "field": "fineTune.epoch", "values": [1]}]))
    assert "FineTune has no field 'epoch'; its fields are epochs, learningRate, batchSize" in text


@pytest.mark.parametrize(
    ("axis", "expected"),
    [
        ({"field": "sparsity", "values": [0.5, 1.5]}, "prune.sparsity refuses 1.5"),
        ({"field": "method", "values": ["L1Structured", "Magic"]}, "prune.method refuses 'Magic'"),
        ({"field": "fineTune.epochs", "values": [2, 0]}, "prune.fineTune.epochs refuses 0"),
        ({"field": "sparsity", "range": {"start": 0.5, "stop": 1.1, "step": 0.3}}, "prune.sparsity refuses 1.1"),
    ],
)
def test_a_value_the_field_refuses_is_refused_naming_the_axis(axis: dict[str, Any], expected: str) -> None:
    text = _refusal(sweep(parameters=[{"name": "ax", "step": "prune", **axis}]))
    assert "parameters[0] (ax)" in text and expected in text


def test_an_include_axis_takes_booleans_only() -> None:
    text = _refusal(sweep(parameters=[{"name": "d", "step": "distill", "values": [True, "no"]}]))
    assert "without `field` the values say whether step distill runs: true or false, not 'no'" in text


def test_a_combination_that_breaks_a_job_rule_is_refused_naming_the_trial() -> None:
    # StaticInt8's calibrator is refused for DynamicInt8: only the combination shows it.
    manifest = sweep()
    manifest["spec"]["template"]["steps"][2]["quantize"]["calibrator"] = "Entropy"
    text = _refusal(manifest)
    assert "CompressionSweep 'digits' is invalid" in text
    assert "trial t00 (sparsity=0.3, method=DynamicInt8, distill=True)" in text
    assert "`calibrator` is only used by method StaticInt8" in text


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"search": {"algorithm": "Random"}}, "search algorithms Random and TPE need `maxTrials`"),
        ({"search": {"algorithm": "Grid", "maxTrials": 3}}, "`maxTrials` and `seed` are for Random and TPE"),
        ({"objectives": [{"metric": "speedup"}, {"metric": "speedup"}]}, "each objective's metric may appear once"),
        ({"objectives": [{"metric": "size"}]}, "spec.objectives[0].metric: Input should be 'accuracy'"),
        ({"parallelism": 0}, "spec.parallelism"),
    ],
)
def test_search_objectives_and_bounds_are_checked(spec: dict[str, Any], expected: str) -> None:
    assert expected in _refusal(sweep(**spec))


def test_parameter_names_are_unique() -> None:
    axis = {"name": "a", "step": "prune", "field": "sparsity", "values": [0.5]}
    assert "parameter names must be unique" in _refusal(sweep(parameters=[axis, axis]))


def test_a_grid_larger_than_the_bound_is_refused_with_the_way_out() -> None:
    axes = [
        {"name": f"a{i}", "step": "prune", "field": "sparsity", "range": {"start": 0.1, "stop": 0.9, "step": 0.1}}
        for i in range(4)
    ]
    text = _refusal(sweep(parameters=axes))
    assert "the grid has 6561 combinations, more than 1000" in text and "Random or TPE" in text


def test_linear_and_log_ranges_expand_rounded_and_integers_when_the_field_takes_them() -> None:
    assert ValueRange(start=0.1, stop=0.5, step=0.1).values(integer=False) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert ValueRange(start=1, stop=16, scale="Log", count=5).values(integer=True) == [1, 2, 4, 8, 16]
    # Rounding to integers drops the repeats a narrow log range makes.
    assert ValueRange(start=1, stop=3, scale="Log", count=5).values(integer=True) == [1, 2, 3]
    assert ValueRange(start=1e-4, stop=1e-2, scale="Log", count=3).values(integer=False) == [1e-4, 1e-3, 1e-2]


def test_range_rules() -> None:
    bad = {"name": "s", "step": "prune", "field": "sparsity"}
    assert "a Log range takes `count`" in _refusal(
        sweep(parameters=[{**bad, "range": {"start": 0.1, "stop": 0.5, "scale": "Log", "step": 0.1}}])
    )
    assert "range.start must not exceed range.stop" in _refusal(
        sweep(parameters=[{**bad, "range": {"start": 0.5, "stop": 0.1, "step": 0.1}}])
    )
    assert "axis s: give either `values` (a list) or `range`" in _refusal(
        sweep(parameters=[{**bad, "values": [0.5], "range": {"start": 0.1, "stop": 0.5, "step": 0.1}}])
    )


def test_only_parallelism_max_failed_trials_and_suspend_change_after_creation() -> None:
    old = CompressionSweep.model_validate(SWEEP).spec
    changed = old.model_copy(update={"parallelism": 4, "suspend": True, "maxFailedTrials": 2})
    assert check_update(old, changed) == []
    other = CompressionSweep.model_validate(sweep(objectives=[{"metric": "speedup"}])).spec
    (error,) = check_update(old, other)
    assert "template, parameters, search and objectives are immutable" in error.message


SWEEPS_PAGE = ROOT / "docs" / "sweeps.md"


def _cluster_section_sweeps() -> list[dict[str, Any]]:
    section = SWEEPS_PAGE.read_text().split("## CompressionSweep on a cluster", 1)[1]
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    return [b for b in blocks if isinstance(b, dict) and b.get("kind") == "CompressionSweep"]


def test_the_cluster_section_sweep_is_valid_as_written() -> None:
    (manifest,) = _cluster_section_sweeps()
    parsed = parse_sweep(manifest)
    assert parsed.spec.search.algorithm == "TPE"
    assert trial_count(parsed.spec) == 12
    (first,) = next_trials(parsed.spec, [], 1)
    assert first.spec.output.uri == "s3://results/resnet-int8/t00/"
