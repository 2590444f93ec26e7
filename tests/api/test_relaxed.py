"""relaxed(factor) on the prune and lowRank configs: 1 is the config as written, smaller removes less,
and every relaxed config is one the API accepts."""

from __future__ import annotations

from typing import Any

import pytest

from kompression.api.v1alpha1 import LowRankStep, PruneStep

FACTORS = (1.0, 0.75, 0.5, 0.25, 0.01)


def _revalidated(config: PruneStep | LowRankStep) -> PruneStep | LowRankStep:
    """The relaxed config through the API's own validation, as a manifest that spelled it out would be."""
    return type(config).model_validate(config.to_wire())


@pytest.mark.parametrize("method", ["L1Unstructured", "GlobalMagnitude", "L1Structured", "TaylorStructured"])
def test_a_relaxed_prune_removes_that_fraction_of_its_sparsity(method: str) -> None:
    prune = PruneStep.model_validate({"method": method, "sparsity": 0.6, "ignoreLayers": ["head"]})
    relaxed = [prune.relaxed(f) for f in FACTORS]
    assert relaxed[0] == prune
    assert [r.sparsity for r in relaxed] == [round(0.6 * f, 4) for f in FACTORS]
    assert all(r.ignoreLayers == ["head"] and r.method == method for r in relaxed)
    assert all(_revalidated(r) == r for r in relaxed)
    assert prune.sparsity == 0.6  # a new config; the written one is unchanged


def test_semi_structured_24_has_nothing_to_relax() -> None:
    prune = PruneStep.model_validate({"method": "SemiStructured24"})
    assert all(prune.relaxed(f) == prune for f in FACTORS)


@pytest.mark.parametrize(("knob", "kept"), [("energy", 0.8), ("rankRatio", 0.2), ("rankRatio", 1.0)])
def test_a_relaxed_low_rank_step_discards_that_fraction_of_what_it_discards(knob: str, kept: float) -> None:
    low_rank = LowRankStep.model_validate({"method": "SVD", knob: kept, "excludeLayers": ["head"]})
    relaxed = [low_rank.relaxed(f) for f in FACTORS]
    assert relaxed[0] == low_rank
    assert [getattr(r, knob) for r in relaxed] == [round(1 - (1 - kept) * f, 4) for f in FACTORS]
    assert all(r.excludeLayers == ["head"] and (r.energy is None) == (knob != "energy") for r in relaxed)
    assert all(_revalidated(r) == r for r in relaxed)


@pytest.mark.parametrize("factor", [0.0, -0.5, 1.5])
@pytest.mark.parametrize(
    "config",
    [PruneStep(method="L1Structured"), PruneStep(method="SemiStructured24"), LowRankStep(method="SVD", energy=0.9)],
)
def test_a_factor_outside_0_to_1_is_refused(config: Any, factor: float) -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        config.relaxed(factor)
