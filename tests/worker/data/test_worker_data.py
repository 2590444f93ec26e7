"""Data sets: the .npz format, the builtin Digits split, and the checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factories import npz
from kompression.api.v1alpha1 import DataSpec, ModelInput
from kompression.worker.data.arrays import EVALUATION_BATCH_SIZE, digits, load_datasets
from kompression.worker.errors import DataError

X = [ModelInput(name="x", shape=[-1, 1, 8, 8])]


def spec(**roles: object) -> DataSpec:
    return DataSpec.model_validate(roles)


def test_digits_split_is_deterministic_disjoint_and_scaled() -> None:
    train, held_out = digits("train"), digits("eval")
    assert train.inputs["x"].shape == (1437, 1, 8, 8) and held_out.inputs["x"].shape == (360, 1, 8, 8)
    assert train.inputs["x"].dtype == np.float32 and train.inputs["x"].min() >= 0 and train.inputs["x"].max() <= 1
    assert np.array_equal(digits("eval").inputs["x"], held_out.inputs["x"])
    rows = {r.tobytes() for r in train.inputs["x"]}
    assert sum(r.tobytes() in rows for r in held_out.inputs["x"]) < 10  # only duplicate images in the source


def test_roles_read_their_split_and_samples_cap() -> None:
    sets = load_datasets(
        spec(calibration={"builtin": "Digits", "samples": 100}, evaluation={"builtin": "Digits"}), X, Path
    )
    assert sets.calibration is not None and len(sets.calibration) == 100
    assert sets.evaluation is not None and len(sets.evaluation) == 360


def test_each_set_carries_its_batch_size_and_evaluation_stays_large_when_unset() -> None:
    digits_source = {"builtin": "Digits"}
    unset = load_datasets(spec(calibration=digits_source, evaluation=digits_source, training=digits_source), X, Path)
    assert unset.calibration is not None and unset.calibration.batch_size == 32  # the API's default
    assert unset.training is not None and unset.training.batch_size == 32
    assert unset.evaluation is not None and unset.evaluation.batch_size == EVALUATION_BATCH_SIZE == 256
    chosen = {"builtin": "Digits", "batchSize": 7}
    sets = load_datasets(spec(calibration=chosen, evaluation=chosen), X, Path)
    assert sets.calibration is not None and sets.calibration.batch_size == 7
    assert sets.evaluation is not None and sets.evaluation.batch_size == 7


def test_npz_round_trip(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", np.zeros((5, 1, 8, 8), np.float64), np.arange(5))
    sets = load_datasets(spec(evaluation={"uri": "file://d.npz"}), X, lambda uri: path)
    assert sets.evaluation is not None and sets.evaluation.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.full((4, 1, 8, 8), np.inf, np.float32), "NaN or Inf"),
        (np.zeros((4, 3, 8, 8), np.float32), r"shape \[4, 3, 8, 8\].*\[1, 8, 8\]"),
        (np.zeros((0, 1, 8, 8), np.float32), "empty"),
    ],
)
def test_bad_data_is_a_data_error_naming_the_field(tmp_path: Path, inputs: np.ndarray, message: str) -> None:
    path = npz(tmp_path / "d.npz", inputs, np.zeros(len(inputs), np.int64))
    with pytest.raises(DataError, match=rf"spec\.data\.calibration.*{message}"):
        load_datasets(spec(calibration={"uri": "file://d.npz"}), X, lambda uri: path)


def test_missing_inputs_and_unlabeled_top1(tmp_path: Path) -> None:
    np.savez(tmp_path / "nope.npz", images=np.zeros((2, 1, 8, 8)))
    with pytest.raises(DataError, match=r"no array for spec\.model\.inputs\[0\] 'x' \(or `inputs`"):
        load_datasets(spec(evaluation={"uri": "file://x"}), X, lambda uri: tmp_path / "nope.npz")
    path = npz(tmp_path / "d.npz", np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="Top1Accuracy needs `labels`"):
        load_datasets(spec(evaluation={"uri": "file://d.npz"}), X, lambda uri: path)


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", inputs=np.array([object()], dtype=object))
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_datasets(spec(evaluation={"uri": "file://x"}), X, lambda uri: tmp_path / "obj.npz")
