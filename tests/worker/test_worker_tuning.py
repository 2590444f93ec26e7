"""The Auto strategy's trials: each step config relaxes itself, and int8 trials keep more layers float."""

from __future__ import annotations

from typing import Any

from kompression.api.v1alpha1 import Step
from kompression.worker.tuning import REMOVAL_FACTORS, candidates


def _steps(*configs: dict[str, Any]) -> list[Step]:
    return [Step.model_validate({"name": f"s{i}", **c}) for i, c in enumerate(configs)]


def test_auto_trials_keep_more_of_a_low_rank_steps_energy_or_rank() -> None:
    steps = _steps({"lowRank": {"method": "SVD", "energy": 0.8}}, {"lowRank": {"method": "Tucker2", "rankRatio": 0.2}})
    trials = list(candidates(steps))
    energies = [t.steps[0].lowRank.energy for t in trials if t.steps[0].lowRank is not None]
    ratios = [t.steps[1].lowRank.rankRatio for t in trials if t.steps[1].lowRank is not None]
    assert energies == [0.8, 0.85, 0.9, 0.95]  # the discarded 0.2 scaled by 1, 0.75, 0.5, 0.25
    assert ratios == [0.2, 0.4, 0.6, 0.8]
    assert all(t.extra_float_layers == 0 for t in trials)  # nothing here keeps layers float


def test_each_relaxation_is_tried_with_0_1_and_2_more_float_layers_from_the_most_compressed() -> None:
    steps = _steps(
        {"prune": {"method": "L1Structured", "sparsity": 0.4}},
        {"quantize": {"method": "StaticInt8", "excludeLayers": ["head"]}},
    )
    trials = [(t.steps[0].prune.sparsity, t.extra_float_layers) for t in candidates(steps) if t.steps[0].prune]
    assert trials == [(round(0.4 * f, 4), extra) for f in REMOVAL_FACTORS for extra in (0, 1, 2)]
    # The quantize step is never rewritten: its own excludeLayers stay, the extras are added in the step.
    assert all(t.steps[1] == steps[1] for t in candidates(steps))


def test_a_job_with_nothing_to_relax_is_tried_once_as_written() -> None:
    steps = _steps({"prune": {"method": "SemiStructured24"}}, {"quantize": {"method": "Float16"}})
    assert [t.steps for t in candidates(steps)] == [steps]


def test_dynamic_int8_alone_is_tried_with_up_to_two_more_float_layers() -> None:
    steps = _steps({"quantize": {"method": "DynamicInt8"}})
    assert [(t.steps, t.extra_float_layers) for t in candidates(steps)] == [(steps, 0), (steps, 1), (steps, 2)]
