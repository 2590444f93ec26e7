"""The memory plan, from config.json and safetensors headers alone (api/memory_plan.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kompression.api import memory_plan
from kompression.api.memory_plan import GiB, HeaderInvalid, Tensor, Workload

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "vocab_size": 32000}


def _llama_tensors(layers: int, hidden: int, intermediate: int, vocab: int, dtype: str = "BF16") -> dict[str, Tensor]:
    out = {
        "model.embed_tokens.weight": Tensor(dtype, (vocab, hidden)),
        "lm_head.weight": Tensor(dtype, (vocab, hidden)),
    }
    for i in range(layers):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{p}.self_attn.{name}.weight"] = Tensor(dtype, (hidden, hidden))
        out[f"{p}.mlp.gate_proj.weight"] = Tensor(dtype, (intermediate, hidden))
        out[f"{p}.mlp.up_proj.weight"] = Tensor(dtype, (intermediate, hidden))
        out[f"{p}.mlp.down_proj.weight"] = Tensor(dtype, (hidden, intermediate))
        out[f"{p}.input_layernorm.weight"] = Tensor(dtype, (hidden,))
    return out


def _work(samples: int = 512, length: int = 2048, gpus: int = 1, algorithm: str = "GPTQ") -> Workload:
    return Workload("llmQuantize", algorithm, "W4A16", "LLMCompressor", samples, length, gpus)


def test_a_header_is_read_from_its_bytes_alone(tmp_path: Path) -> None:
    header = json.dumps(
        {"__metadata__": {"format": "pt"}, "w": {"dtype": "BF16", "shape": [4, 8], "data_offsets": [0, 64]}}
    ).encode()
    blob = struct.pack("<Q", len(header)) + header + b"\0" * 64
    n = memory_plan.header_length(blob[:8])
    assert n == len(header)
    assert memory_plan.header_tensors(blob[8 : 8 + n]) == {"w": Tensor("BF16", (4, 8))}
    assert Tensor("BF16", (4, 8)).nbytes == 64


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x01\x00", "8 bytes"),
        (struct.pack("<Q", 10**12), "at most"),
    ],
)
def test_a_prefix_that_is_no_safetensors_length_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(HeaderInvalid, match=says):
        memory_plan.header_length(data)


def test_a_header_that_is_no_tensor_table_is_refused() -> None:
    with pytest.raises(HeaderInvalid, match="not JSON"):
        memory_plan.header_tensors(b"\xff{")
    with pytest.raises(HeaderInvalid, match="no dtype and shape"):
        memory_plan.header_tensors(b'{"w": {"dtype": "F32"}}')


def test_a_7b_llama_plans_its_weights_cache_and_one_layer() -> None:
    tensors = _llama_tensors(32, 4096, 11008, 32000)
    plan = memory_plan.plan(LLAMA_7B, tensors, _work())
    weights = sum(t.nbytes for t in tensors.values())
    assert 12 * GiB < weights < 13 * GiB  # 6.7e9 parameters in bfloat16
    assert plan.parts["weights"] == weights
    # 512 samples x 2048 tokens x 4096 x bfloat16, in and out of the layer: 16 GiB.
    assert plan.parts["calibrationCache"] == 16 * GiB
    assert plan.host == sum(plan.parts.values())
    assert "spec.data.calibration.samples" in plan.knob  # the cache dominates: fewer samples lower it
    # One layer on the GPU with GPTQ's Hessians (11008^2 floats for down_proj alone: 0.45 GiB).
    assert 1 * GiB < plan.gpu < 4 * GiB
    # The model, its 4-bit copy and caches.
    assert weights < plan.scratch < 2 * weights
    # docs/steps.md quotes this plan in its example of a refusal.
    docs = (Path(__file__).resolve().parents[2] / "docs" / "steps.md").read_text()
    assert f"less than the {memory_plan.gib(plan.host)} of host memory planned" in docs


def test_the_plan_follows_each_knob() -> None:
    tensors = _llama_tensors(4, 1024, 2816, 32000)
    config = {**LLAMA_7B, "hidden_size": 1024, "intermediate_size": 2816}
    base = memory_plan.plan(config, tensors, _work())
    assert memory_plan.plan(config, tensors, _work(samples=128)).host < base.host
    assert memory_plan.plan(config, tensors, _work(length=512)).host < base.host
    assert memory_plan.plan(config, tensors, _work(algorithm="RTN")).gpu < base.gpu
    cpu = memory_plan.plan(config, tensors, _work(gpus=0))
    assert cpu.gpu == 0 and cpu.host > base.host  # a sample's activations are on the host too


def test_model_optimizer_on_a_cpu_holds_the_model_in_float32() -> None:
    tensors = _llama_tensors(2, 512, 1024, 1000)
    config = {"hidden_size": 512, "intermediate_size": 1024}
    plan = memory_plan.plan(config, tensors, Workload("llmQuantize", "RTN", "FP8", "ModelOpt", 8, 64, 0))
    assert plan.parts["weights"] == 2 * sum(t.nbytes for t in tensors.values())
    assert plan.parts["hessians"] == 0
    # Its SparseGPT holds every decoder Linear's Hessian at once: per layer 6 of 512^2 and one of 1024^2.
    sparse = memory_plan.plan(config, tensors, Workload("llmSparsify", "SparseGPT", None, "ModelOpt", 8, 64, 0))
    assert sparse.parts["hessians"] == 2 * (6 * 512**2 + 1024**2) * 4
    on_gpu = memory_plan.plan(config, tensors, Workload("llmSparsify", "SparseGPT", None, "ModelOpt", 8, 64, 1))
    assert on_gpu.gpu > sparse.parts["hessians"] and "hessians" not in on_gpu.parts


def test_model_free_holds_no_calibration_cache_and_no_layer_copy() -> None:
    """method ModelFree runs no text through a model: its plan is the runtime, the weights (the step
    scores the model where transformers has its class) and the published copy, far below Oneshot's."""
    tensors = _llama_tensors(32, 4096, 11008, 32000)
    free = memory_plan.plan(LLAMA_7B, tensors, _work(algorithm=memory_plan.MODEL_FREE))
    oneshot = memory_plan.plan(LLAMA_7B, tensors, _work(algorithm="RTN"))
    assert set(free.parts) == {"runtime", "weights", "published"}
    assert free.host == oneshot.host - oneshot.parts["calibrationCache"] - oneshot.parts["layer"]
    # On a GPU: the largest tensor (the 32000 x 4096 embedding or head) in float32, beside the runtime.
    assert free.gpu == memory_plan.RUNTIME_GPU + 32000 * 4096 * 2 * 4


@pytest.mark.parametrize(
    ("quantity", "n"),
    [("16Gi", 16 * GiB), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1.5Gi", 3 * GiB // 2), ("100", 100)],
)
def test_quantities_in_bytes(quantity: str, n: int) -> None:
    assert memory_plan.quantity_bytes(quantity) == n
