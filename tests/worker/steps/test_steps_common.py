"""The small helpers the techniques share, and the small CNN the step tests train."""

from __future__ import annotations

import pytest
import torch

from factories import trained_cnn
from kompression.worker.data.arrays import digits
from kompression.worker.steps.modules import final_layer
from kompression.worker.steps.onnx_io import module_path_of_node
from kompression.worker.steps.prune import mask_2_4
from kompression.worker.steps.training import accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_cnn_trains() -> None:
    assert accuracy(trained_cnn().module, digits("eval")) > 0.93


def test_final_layer_follows_execution_order() -> None:
    model = trained_cnn()
    assert final_layer(model.module, model.example_inputs) == "head.3"


def test_mask_2_4_keeps_the_two_largest_of_each_four() -> None:
    w = torch.tensor([[1.0, -4.0, 3.0, 0.5, 0.1, 0.2, -0.3, 0.4]])
    assert mask_2_4(w).tolist() == [[0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("node", "module"),
    [
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1"),
        ("/conv1/Conv", "conv1"),
        ("/head/head.1/Gemm", "head.1"),
        ("Add_3", ""),
    ],
)
def test_onnx_node_names_map_back_to_modules(node: str, module: str) -> None:
    assert module_path_of_node(node) == module
