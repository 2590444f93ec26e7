"""Model formats and the untrusted-input rules."""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from factories import Tiny, save_tiny
from kompression.api.constants import ENV_ARCHITECTURE_MODULES, ExitCode
from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, RuntimeMissing, SpecError
from kompression.worker.formats import loader, safetensors_weights, size, torch_export
from kompression.worker.model import OnnxModel, TorchModel


def source(uri: str, fmt: str = "TorchExport", shape: list[int] | None = None, **extra: object) -> ModelSource:
    return ModelSource.model_validate(
        {"uri": uri, "format": fmt, "inputs": [{"name": "x", "shape": shape or [-1, 1, 8, 8]}], **extra}
    )


def test_torch_export_loads_as_eager_layers(tmp_path: Path) -> None:
    model = loader.load_model(source("file://m.pt2"), save_tiny(tmp_path / "m.pt2"))
    assert isinstance(model, TorchModel)
    assert any(isinstance(m, torch.nn.Linear) for m in model.module.modules())
    assert "classifier.1.weight" in model.module.state_dict()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))  # unpickling creates the marker file


def _malicious_pt2(good: Path, bad: Path, marker: Path) -> None:
    """Replace the sample inputs with a pickle that creates marker when unpickled."""
    payload = pickle.dumps(_Evil(marker))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                data = payload
            dst.writestr(item, data)


def test_malicious_pt2_is_refused_before_any_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _malicious_pt2(save_tiny(tmp_path / "m.pt2"), tmp_path / "evil.pt2", marker)
    # The threat is real: torch's own loader falls back to a full unpickle of these bytes.
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises after running the payload
        torch.export.load(str(tmp_path / "evil.pt2"))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelError, match="needs more than weights_only"):
        loader.load_model(source("file://evil.pt2"), tmp_path / "evil.pt2")
    assert not marker.exists()


def test_torch_save_pickle_is_refused_with_advice(tmp_path: Path) -> None:
    torch.save(Tiny(), tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match=r"torch.save\(\) pickle.*safetensors"):
        loader.load_model(source("file://ckpt.pt"), tmp_path / "ckpt.pt")


def test_shape_mismatch_names_input_and_both_shapes(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"'x'.*\[-1, 1, 16, 16\].*\[-1, 1, 8, 8\]"):
        loader.load_model(source("file://m.pt2", shape=[-1, 1, 16, 16]), save_tiny(tmp_path / "m.pt2"))


def test_safetensors_with_architecture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "torch.nn")
    safetensors_weights.save_safetensors(torch.nn.Linear(4, 3), tmp_path / "w.safetensors")
    model = loader.load_model(
        source(
            "file://w.safetensors",
            "SafeTensors",
            [-1, 4],
            architecture="torch.nn:Linear",
            architectureArguments={"in_features": 4, "out_features": 3},
        ),
        tmp_path / "w.safetensors",
    )
    assert isinstance(model, TorchModel)
    with pytest.raises(ModelError, match="do not fit"):
        loader.load_model(
            source(
                "file://w.safetensors",
                "SafeTensors",
                [-1, 5],
                architecture="torch.nn:Linear",
                architectureArguments={"in_features": 5, "out_features": 3},
            ),
            tmp_path / "w.safetensors",
        )


def test_torchscript_loads_only_when_trusted_as_code(tmp_path: Path) -> None:
    torch.jit.script(Tiny()).save(str(tmp_path / "m.ts"))  # type: ignore[no-untyped-call]
    trusted = source("file://m.ts", "TorchScript", trustTorchScriptCode=True)
    assert isinstance(loader.load_model(trusted, tmp_path / "m.ts"), TorchModel)
    with pytest.raises(ModelError, match="trustTorchScriptCode"):
        loader.load_model(source("file://m.ts", "TorchScript"), tmp_path / "m.ts")


class _ReadsAFile(torch.nn.Module):
    """What an untrusted TorchScript forward() can do: read a file of the pod into its output."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leaked = torch.from_file(self.secret, shared=False, size=4, dtype=torch.uint8)
        return x.flatten(1)[:, :4] * 0 + leaked.to(x.dtype)


def test_untrusted_torchscript_never_runs(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_bytes(b"\x01\x02\x03\x04")
    torch.jit.script(_ReadsAFile(str(secret))).save(str(tmp_path / "m.ts"))  # type: ignore[no-untyped-call]
    ran = torch.jit.load(str(tmp_path / "m.ts"))(torch.zeros(1, 1, 8, 8))  # type: ignore[no-untyped-call]
    assert ran.tolist() == [[1.0, 2.0, 3.0, 4.0]]  # the threat: the file's bytes come out
    with pytest.raises(ModelError, match="code that runs in the worker"):
        loader.load_model(source("file://m.ts", "TorchScript"), tmp_path / "m.ts")


def test_huggingface_without_transformers_is_runtime_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules is Python's own way of making an import fail, as in an image
    # built without the package.
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(RuntimeMissing, match=r"transformers.*pip install 'kompression\[worker\]'"):
        loader.load_model(source("file://hf", "HuggingFace"), tmp_path)


def _tiny_bert(folder: Path) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    return model


def test_huggingface_folder_loads_with_its_logits(tmp_path: Path) -> None:
    original = _tiny_bert(tmp_path / "bert")
    src = ModelSource.model_validate(
        {
            "uri": "file://bert",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, 8], "dtype": "int64"}],
        }
    )
    loaded = loader.load_model(src, tmp_path / "bert")
    assert isinstance(loaded, TorchModel)
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.allclose(loaded.module(ids), original(ids).logits, atol=1e-6)


def _tiny_hf(folder: Path, kind: str) -> torch.nn.Module:
    """A bare BERT encoder, or a ViT with an image-classification head, saved as a HuggingFace folder."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "vit":
        vit = transformers.ViTConfig(
            image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, num_labels=3,
        )  # fmt: skip
        model = transformers.ViTForImageClassification(vit)
    else:
        bert = transformers.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        model = transformers.BertModel(bert)
    model.eval().save_pretrained(str(folder))
    return model


HF_INPUTS = {
    "bert": [
        {"name": "input_ids", "shape": [-1, 8], "dtype": "int64"},
        {"name": "attention_mask", "shape": [-1, 8], "dtype": "int64"},
    ],
    "vit": [{"name": "pixel_values", "shape": [-1, 3, 8, 8]}],
}


@pytest.mark.parametrize(
    ("kind", "output", "expected"),
    [
        ("bert", None, "last_hidden_state"),  # a bare encoder's default
        ("bert", "pooler_output", "pooler_output"),
        ("vit", None, "logits"),  # a task head's default
        ("vit", "logits", "logits"),
    ],
)
def test_huggingface_output_is_chosen_by_spec_or_architecture(
    tmp_path: Path, kind: str, output: str | None, expected: str
) -> None:
    original = _tiny_hf(tmp_path / kind, kind)
    src = ModelSource.model_validate(
        {"uri": f"file://{kind}", "format": "HuggingFace", "inputs": HF_INPUTS[kind]}
        | ({"output": output} if output else {})
    )
    loaded = loader.load_model(src, tmp_path / kind)
    assert isinstance(loaded, TorchModel)
    if kind == "bert":
        inputs: tuple[torch.Tensor, ...] = (torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.int64))
    else:
        inputs = (torch.randn(2, 3, 8, 8),)
    with torch.no_grad():
        assert torch.equal(loaded.module(*inputs), getattr(original(*inputs), expected))


def test_huggingface_output_the_model_lacks_names_the_ones_it_has(tmp_path: Path) -> None:
    _tiny_hf(tmp_path / "bert", "bert")
    src = ModelSource.model_validate(
        {"uri": "file://bert", "format": "HuggingFace", "inputs": HF_INPUTS["bert"], "output": "logits"}
    )
    with pytest.raises(ModelError, match=r"output 'logits' is not an output of this BertModel; it returns "
                       r"last_hidden_state, pooler_output"):  # fmt: skip
        loader.load_model(src, tmp_path / "bert")


def test_huggingface_pickled_weights_are_refused(tmp_path: Path) -> None:
    model = _tiny_bert(tmp_path / "bert")
    # A checkpoint in the legacy pickle format only, as older hub folders have.
    (tmp_path / "bert" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "bert" / "pytorch_model.bin")
    src = source("file://bert", "HuggingFace", [-1, 8])
    with pytest.raises(ModelError, match="safetensors weights only"):
        loader.load_model(src, tmp_path / "bert")


def _onnx_with_external(location: str, path: Path) -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 10], [0.0] * 640)
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value=location)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [weight],
    )
    onnx.save(helper.make_model(graph), str(path))


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../x.bin"])
def test_onnx_external_data_escaping_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    _onnx_with_external(location, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="outside the model's folder"):
        loader.load_model(source("file://m.onnx", "ONNX"), tmp_path / "m.onnx")


def test_onnx_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    _onnx_with_external("w.bin", tmp_path / "m.onnx")
    (tmp_path / "w.bin").write_bytes(b"\0" * 640 * 4)
    assert isinstance(loader.load_model(source("file://m.onnx", "ONNX"), tmp_path / "m.onnx"), OnnxModel)
    with pytest.raises(ModelError, match=r"'x'.*\[-1, 3, 8, 8\]"):
        loader.load_model(source("file://m.onnx", "ONNX", [-1, 3, 8, 8]), tmp_path / "m.onnx")


def test_saved_pt2_holds_every_parameter(tmp_path: Path) -> None:
    module = Tiny().eval()
    path = torch_export.save_torch_export(TorchModel(module, (torch.zeros(1, 1, 8, 8),)), tmp_path / "x.pt2")
    reloaded = torch.export.load(str(path))
    assert sum(t.numel() for t in reloaded.state_dict.values()) == size.parameter_count(module)


@pytest.mark.parametrize(
    ("ref", "allowed", "why"),
    [
        ("os:system", "", "is not under a module this cluster allows"),  # the default list
        ("os:system", "torchvision.models,timm", "is not under"),
        ("subprocess:getoutput", "sub", "is not under"),  # a prefix is a whole module path
        ("torch.nn.modules._utils:_ntuple", "torch.nn", "is not under"),  # private parts
        (
            "kompression.worker.formats.loader:Path",
            "kompression.worker.formats.loader",
            "is defined in pathlib",
        ),  # a re-export
    ],
)
def test_architecture_outside_the_allowed_modules_is_never_called(
    ref: str, allowed: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, allowed)
    marker = tmp_path / "ran"
    safetensors_weights.save_safetensors(torch.nn.Linear(4, 3), tmp_path / "w.safetensors")
    spec = source("file://w.safetensors", "SafeTensors", [-1, 4], architecture=ref)
    spec.architectureArguments = {"command": f"touch {marker}"} if ref.startswith("os:") else None
    with pytest.raises(SpecError, match=why) as info:
        loader.load_model(spec, tmp_path / "w.safetensors")
    assert info.value.exit_code == ExitCode.INVALID_SPEC
    assert not marker.exists()


@pytest.mark.parametrize(
    ("ref", "arguments", "why"),
    [
        ("torchvision.models.no_such_module:Net", None, "cannot import module .torchvision.models.no_such_module."),
        ("torchvision.models:no_such_net", None, "has no callable 'no_such_net'"),
        ("torchvision.models:resnet18", {"no_such_argument": 1}, "calling torchvision.models:resnet18 with"),
        ("collections:OrderedDict", None, "returned OrderedDict, not a torch.nn.Module"),
    ],
)
def test_a_bad_architecture_reference_is_a_spec_error_wherever_it_is_named(
    ref: str, arguments: dict[str, object] | None, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_ARCHITECTURE_MODULES, "torchvision.models,collections")
    for field in ("spec.model.architecture", "spec.steps[1].distill.student.architecture"):
        with pytest.raises(SpecError, match=why) as info:
            safetensors_weights.build_architecture(ref, arguments, field)
        assert info.value.message.startswith(f"{field}: ") and info.value.exit_code == ExitCode.INVALID_SPEC


def test_default_architecture_modules_build_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_ARCHITECTURE_MODULES, raising=False)
    module = safetensors_weights.build_architecture(
        "torchvision.models:resnet18", {"num_classes": 3}, "spec.model.architecture"
    )
    assert isinstance(module, torch.nn.Module)
