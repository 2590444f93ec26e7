"""The one vetting of a HuggingFace model folder (worker/formats/hf_folder.py) on the main worker's path:
each hostile folder is built for real (save_pretrained, then the file an attacker would change) and
refused with a ModelError naming the file, before transformers reads it; what passes loads offline,
without remote code and with the worker's attention implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from encoder_helpers import SENTENCES, cosine_job, encoder_inputs
from factories import job, write_job
from hostile import GUARD, plant_tokenizer_code
from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import ModelSource
from kompression.worker.cli import OFFLINE_ENVIRONMENT
from kompression.worker.data import arrays
from kompression.worker.errors import ModelError
from kompression.worker.formats import hf_folder, loader
from kompression.worker.model import CheckpointFolder, TorchModel

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def bert(tiny_bert: Path, tmp_path: Path) -> Path:
    """A copy of the tiny BERT folder for the test to make hostile."""
    folder = tmp_path / "bert"
    folder.mkdir()
    for path in tiny_bert.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def source(folder: Path) -> ModelSource:
    return ModelSource.model_validate({"uri": f"file://{folder}", "format": "HuggingFace", "inputs": encoder_inputs()})


def edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def kompression_run(folder: Path, tmp_path: Path, *, guard: bool = False) -> subprocess.CompletedProcess[str]:
    """`kompression run` of a job on the folder with text data, as the worker pod runs it, with stdin
    open and answering yes to any prompt (transformers asks before running a folder's code)."""
    manifest = cosine_job(folder, tmp_path)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "NETWORK_LOG": str(tmp_path / "network.log"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),  # where transformers would copy a folder's code
    }
    for name in OFFLINE_ENVIRONMENT:
        env.pop(name, None)  # `kompression run` sets them itself
    program = ["-c", GUARD] if guard else ["-m", "kompression"]
    return subprocess.run(
        [sys.executable, *program, "run", str(manifest), "--progress", "json"],
        input="y\n" * 10,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )


# --- config.json ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'["BertModel"]', r"config\.json must be a JSON object, not a list"),
        (b'"text"', r"config\.json must be a JSON object, not a string"),
        (b"\xff\xfe{}", r"config\.json is not UTF-8 text"),
        (b'{"model_type": "bert",', r"config\.json is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, r"config\.json nests deeper than 32 levels"),
        (json.dumps({"model_type": "bert", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode(),
         r"config\.json nests deeper than 32 levels"),
        (b'{"model_type": "bert", "pad": "' + b"x" * (5 << 20) + b'"}', r"config\.json is \d+ bytes; .* at most 4194304"),
        (b'{"architectures": ["BertModel"]}', r"config\.json has no model_type string"),
        (b'{"model_type": "bert", "architectures": "BertModel"}', r"config\.json's architectures must be a list"),
    ],
)  # fmt: skip
def test_a_config_that_is_not_a_bounded_json_object_is_a_model_error_naming_it(
    bert: Path, content: bytes, message: str
) -> None:
    (bert / "config.json").write_bytes(content)
    with pytest.raises(ModelError, match=message):
        loader.load_model(source(bert), bert)


@pytest.mark.parametrize(
    "name",
    [
        "AutoConfig",  # a config class: transformers built it and then failed with exit 1
        "AutoModel",  # a loader, not a model class
        "PreTrainedModel",  # abstract
        "dynamic_module_utils",  # a module
        "transformers.dynamic_module_utils:get_class_from_dynamic_module",
        "NoSuchModel",
        "__class__",
    ],
)
def test_architectures_must_name_a_model_class_transformers_ships(bert: Path, name: str) -> None:
    edit_config(bert, architectures=[name])
    with pytest.raises(ModelError, match=r"config\.json's architectures names .* which is not a model class"):
        loader.load_model(source(bert), bert)


def test_auto_map_in_any_settings_file_is_refused(bert: Path) -> None:
    edit_config(bert, auto_map={"AutoModel": "modeling.Evil"})
    with pytest.raises(ModelError, match=r"config\.json names remote code \(auto_map\)"):
        loader.load_model(source(bert), bert)
    config = json.loads((bert / "config.json").read_text())
    del config["auto_map"]
    (bert / "config.json").write_text(json.dumps(config))
    (bert / "generation_config.json").write_text(json.dumps({"nested": [{"auto_map": {"x": "y"}}]}))
    with pytest.raises(ModelError, match=r"generation_config\.json names remote code"):
        loader.load_model(source(bert), bert)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("attn_implementation", "kernels-community/flash-attn2"),
        ("_attn_implementation", "attacker/kernel@main:flash"),
        ("attn_implementation", "my_attention"),  # not transformers' own either
        ("attn_implementation", {"": "kernels-community/flash-attn2"}),  # the per-sub-config form
    ],
)
def test_an_attention_implementation_from_the_hub_is_refused(bert: Path, key: str, value: object) -> None:
    edit_config(bert, **{key: value})
    with pytest.raises(ModelError, match=rf"config\.json sets {key} to .*not one of transformers' own attention"):
        loader.load_model(source(bert), bert)


def test_the_worker_chooses_the_attention_whatever_the_folder_names(bert: Path) -> None:
    edit_config(bert, attn_implementation="eager")  # one of transformers' own: allowed, and overridden
    loaded = loader.load_model(source(bert), bert)
    assert isinstance(loaded, TorchModel)
    assert loaded.module.inner.config._attn_implementation == "sdpa"  # type: ignore[union-attr]
    folder = hf_folder.vet(bert, "bert")
    assert hf_folder.load_options(folder, object) == {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_safetensors": True,
        "attn_implementation": "sdpa",
    }
    # A model class without scaled_dot_product_attention gets eager.
    no_sdpa = type("NoSdpa", (), {"_supports_sdpa": False})
    assert hf_folder.attention(CheckpointFolder(folder.path, folder.config, no_sdpa), object) == "eager"


def test_a_hub_kernel_is_refused_with_no_network_access(bert: Path, tmp_path: Path) -> None:
    edit_config(bert, attn_implementation="kernels-community/flash-attn2")
    proc = kompression_run(bert, tmp_path, guard=True)
    assert proc.returncode == ExitCode.MODEL_ERROR, proc.stderr[-3000:]
    assert "config.json sets attn_implementation to 'kernels-community/flash-attn2'" in proc.stderr
    log = tmp_path / "network.log"
    assert not log.exists(), log.read_text()
    assert not (tmp_path / "out").exists()


# --- weights ------------------------------------------------------------------------------------


def _shard(bert: Path) -> None:
    """Re-save the folder's weights as two shards and an index, as save_pretrained does for big models."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(bert / "model.safetensors"))
    (bert / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, str(bert / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (bert / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_sharded_folder_loads(bert: Path, tiny_bert: Path) -> None:
    _shard(bert)
    loaded = loader.load_model(source(bert), bert)
    reference = loader.load_model(source(tiny_bert), tiny_bert)
    ids = torch.randint(0, 20, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    assert isinstance(loaded, TorchModel) and isinstance(reference, TorchModel)
    with torch.no_grad():
        assert torch.equal(loaded.module(ids, mask), reference.module(ids, mask))


@pytest.mark.parametrize("where", ["absolute", "parent", "subfolder", "not-safetensors", "missing", "link"])
def test_a_shard_outside_the_folder_is_refused(bert: Path, tmp_path: Path, where: str) -> None:
    _shard(bert)
    index = json.loads((bert / "model.safetensors.index.json").read_text())
    first = bert / "model-00001-of-00002.safetensors"
    outside = tmp_path / "outside.safetensors"  # real weights, outside the folder: transformers 5.17 loads them
    outside.write_bytes(first.read_bytes())
    (bert / "sub").mkdir()
    (bert / "sub" / "x.safetensors").write_bytes(first.read_bytes())
    (bert / "weights.bin.txt").write_bytes(first.read_bytes())
    if where == "link":
        (bert / "link.safetensors").symlink_to(outside)
    name = {
        "absolute": str(outside),
        "parent": "../outside.safetensors",
        "subfolder": "sub/x.safetensors",
        "not-safetensors": "weights.bin.txt",
        "missing": "model-00003-of-00002.safetensors",
        "link": "link.safetensors",
    }[where]
    index["weight_map"] = {k: (name if v == first.name else v) for k, v in index["weight_map"].items()}
    (bert / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"model\.safetensors\.index\.json names shard .* plain name of a"):
        loader.load_model(source(bert), bert)


@pytest.mark.parametrize(
    "index",
    [["x"], {"weight_map": ["model.safetensors"]}, {"weight_map": {"a": 1}}, {"metadata": {}}, "text"],
)
def test_a_malformed_shard_index_is_refused(bert: Path, index: object) -> None:
    _shard(bert)
    (bert / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"model\.safetensors\.index\.json must be a JSON object whose weight_map"):
        loader.load_model(source(bert), bert)


def test_weights_that_are_not_there_are_refused_not_initialised_at_random(bert: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(bert / "model.safetensors"))
    save_file({"junk": torch.zeros(2)}, str(bert / "model.safetensors"))
    with pytest.raises(ModelError, match=r"do not fit BertModel: missing \[embeddings\..*unexpected \[junk\] \(1\)"):
        loader.load_model(source(bert), bert)
    partial = dict(state)
    partial.pop("encoder.layer.1.output.dense.weight")
    save_file(partial, str(bert / "model.safetensors"))
    with pytest.raises(
        ModelError, match=r"missing \[encoder\.layer\.1\.output\.dense\.weight\] \(1\), unexpected none"
    ):
        loader.load_model(source(bert), bert)


def test_tied_weights_are_not_missing(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = transformers.BertForMaskedLM(config).eval()
    assert config.tie_word_embeddings  # the decoder shares the word embeddings: saved once
    model.save_pretrained(str(tmp_path / "mlm"))
    src = ModelSource.model_validate(
        {
            "uri": "file://mlm",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, 8], "dtype": "int64"}],
        }
    )
    loaded = loader.load_model(src, tmp_path / "mlm")
    ids = torch.randint(0, 32, (2, 8))
    assert isinstance(loaded, TorchModel)
    with torch.no_grad():
        assert torch.allclose(loaded.module(ids), model(ids).logits, atol=1e-6)


@pytest.mark.parametrize(
    "content",
    [b"", b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}', b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00[]"],
)
def test_an_unreadable_safetensors_header_is_refused_naming_the_file(bert: Path, content: bytes) -> None:
    (bert / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelError, match=r"model\.safetensors is not a readable safetensors file"):
        loader.load_model(source(bert), bert)


# --- the tokenizer's code ---------------------------------------------------------------------


def test_a_tokenizer_with_code_never_runs_even_with_a_yes_on_stdin(bert: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    plant_tokenizer_code(bert, marker)
    proc = kompression_run(bert, tmp_path)
    assert proc.returncode == ExitCode.MODEL_ERROR, proc.stderr[-3000:]
    assert "tokenizer_config.json names remote code (auto_map)" in proc.stderr
    assert not marker.exists()
    with pytest.raises(ModelError, match=r"spec\.data\.evaluation: tokenizer_config\.json names remote code"):
        arrays.tokenizer_for(bert, "spec.data.evaluation")
    assert not marker.exists()


def test_the_offline_options_alone_keep_a_tokenizer_s_code_from_running(bert: Path, tmp_path: Path) -> None:
    """Without the vetting, `trust_remote_code=False` still holds where transformers would ask on
    stdin (a folder whose model type has no tokenizer of its own); the same load without it runs the code."""
    marker = tmp_path / "marker"
    plant_tokenizer_code(bert, marker)
    (bert / "config.json").unlink()
    script = (
        "import sys; from transformers import AutoTokenizer; from kompression.worker.formats import hf_folder\n"
        "kwargs = hf_folder.OFFLINE if sys.argv[2] == 'offline' else {'local_files_only': True}\n"
        "AutoTokenizer.from_pretrained(sys.argv[1], **kwargs)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}

    def load(kwargs: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, str(bert), kwargs],
            input="y\n" * 10, capture_output=True, text=True, env=env, check=False, timeout=300,
        )  # fmt: skip

    refused = load("offline")
    assert refused.returncode != 0 and "trust_remote_code" in refused.stderr
    assert not marker.exists()
    assert load("unset").returncode == 0 and marker.read_text() == "ran"  # the folder is a working attack


def test_run_sets_the_hub_offline_before_anything_imports_it(bert: Path, tmp_path: Path) -> None:
    edit_config(bert, architectures=["AutoConfig"])
    # A job that fails at once in its model: the environment it ran with is what a load would see.
    script = (
        "import os, sys\n"
        "from kompression.cli import main\n"
        "code = main(['run', sys.argv[1], '--progress', 'json'])\n"
        "print({k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'TRANSFORMERS_OFFLINE')},"
        " 'huggingface_hub.constants' in sys.modules and __import__('huggingface_hub').constants.HF_HUB_OFFLINE,"
        " code, file=sys.stderr)\n"
    )
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"text": SENTENCES[0]}) + "\n")
    body = job(f"file://{bert}", f"file://{tmp_path}/out/")
    body["spec"]["model"] = {"uri": f"file://{bert}", "format": "HuggingFace", "inputs": encoder_inputs(16)}
    manifest = write_job(tmp_path / "job.yaml", body)
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENVIRONMENT} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(manifest)], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "{'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'} True "
        f"{int(ExitCode.MODEL_ERROR)}"
    ), proc.stderr[-3000:]
    assert "config.json's architectures names 'AutoConfig', which is not a model class" in proc.stderr


def test_a_folder_without_architectures_loads_as_its_model_type_s_auto_class(bert: Path) -> None:
    config = json.loads((bert / "config.json").read_text())
    del config["architectures"]
    (bert / "config.json").write_text(json.dumps(config))
    loaded = loader.load_model(source(bert), bert)
    assert isinstance(loaded, TorchModel)
    assert type(loaded.module.inner).__name__ == "BertModel"  # type: ignore[union-attr]
    folder = hf_folder.vet(bert, "bert")
    assert folder.architecture is None
    assert hf_folder.attention(folder, transformers.AutoModel) == "sdpa"  # BertModel's, through the mapping
    assert hf_folder.attention(folder, transformers.AutoModelForImageClassification) == "eager"  # none for bert
