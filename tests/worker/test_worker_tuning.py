"""The Auto strategy's choice of layers to keep in float is measured, not positional."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kompression.worker.model import Dataset, DataSets, TorchModel
from kompression.worker.trial import Loaded
from kompression.worker.tuning import sensitive_layers


def _model_with_one_fragile_layer() -> nn.Sequential:
    torch.manual_seed(0)
    first, middle, last = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
    with torch.no_grad():
        # One hidden unit carries a huge constant that `middle` ignores: a per-tensor u8 range for
        # middle's input must span it, which wipes out the small units middle does rely on.
        first.bias[0] = 1000.0
        first.weight[0].zero_()
        middle.weight[:, 0] = 0.0
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), last)


def _loaded(module: nn.Module, inputs: np.ndarray) -> Loaded:
    return Loaded(
        job=None,  # type: ignore[arg-type]  # not read by the sensitivity measurement
        prefix="file://unused/",
        model=TorchModel(module, (torch.from_numpy(inputs[:1]),)),
        model_path=Path("unused"),
        data=DataSets(calibration=Dataset({"x": inputs})),
        baseline=None,  # type: ignore[arg-type]
        workdir=Path("unused"),
        device="cpu",
    )


def test_the_layer_whose_int8_error_is_largest_comes_first() -> None:
    inputs = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    ranked = sensitive_layers(_loaded(_model_with_one_fragile_layer(), inputs))
    assert ranked[0] == "2"  # `middle`, third in the Sequential: not the first or last layer
    assert len(ranked) == 2


def test_the_measurement_leaves_the_weights_untouched() -> None:
    model = _model_with_one_fragile_layer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sensitive_layers(_loaded(model, np.random.default_rng(1).random((16, 8), dtype=np.float32)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_trials_keep_more_of_a_low_rank_steps_energy_or_rank() -> None:
    from kompression.api.v1alpha1 import Step
    from kompression.worker.tuning import candidates

    steps = [
        Step.model_validate({"name": "a", "lowRank": {"method": "SVD", "energy": 0.8}}),
        Step.model_validate({"name": "b", "lowRank": {"method": "Tucker2", "rankRatio": 0.2}}),
    ]
    trials = list(candidates(steps, []))
    energies = [t[0].lowRank.energy for t in trials if t[0].lowRank is not None]
    ratios = [t[1].lowRank.rankRatio for t in trials if t[1].lowRank is not None]
    assert energies == [0.8, 0.85, 0.9, 0.95]  # the discarded 0.2 scaled by 1, 0.75, 0.5, 0.25
    assert ratios == [0.2, 0.4, 0.6, 0.8]
