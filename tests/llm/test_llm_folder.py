"""The LLM path vets the model folder with the main worker's one vetting (worker/formats/hf_folder.py): each
hostile folder, a copy of the fixture model with the file an attacker controls changed, ends in
ModelError (exit 3, never retried) with a message naming the file, with no name lookup and no
socket connection, and with the folder's code never run, though stdin answers yes to every prompt."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from llm_jobs import FIXTURE, Texts, job_yaml, kompression_run, write_job

from hostile import GUARD, plant_tokenizer_code
from kompression.api.constants import ExitCode
from kompression.api.validation import parse_job
from kompression.worker.errors import ModelError
from kompression.worker.report.live import Reporter

pytest.importorskip("llmcompressor", reason="the LLM path runs in .venv-llm: `make test-llm`")

from safetensors.torch import load_file, save_file

MARKER = "marker"


def _config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


def _list_config(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps([json.loads((folder / "config.json").read_text())]))


def _shard_outside(folder: Path) -> None:
    """The weights moved out of the folder, and an index that names them by their absolute path
    (transformers 5.17 loads such a shard)."""
    outside = folder.parent / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    weight_map = dict.fromkeys(load_file(str(outside)), str(outside))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _no_weights(folder: Path) -> None:
    import torch  # .venv-llm's torch, only for this folder's one tensor

    save_file({"junk": torch.zeros(2)}, str(folder / "model.safetensors"))


def _evil_tokenizer(folder: Path) -> None:
    plant_tokenizer_code(folder, folder.parent / MARKER)


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    # Each of these ended in exit 1 (retried by the Job) before.
    "config-list": (_list_config, "config.json must be a JSON object, not a list"),
    "autoconfig": (
        lambda f: _config(f, architectures=["AutoConfig"]),
        "config.json's architectures names 'AutoConfig', which is not a model class",
    ),
    "kernel-missing": (
        lambda f: _config(f, attn_implementation="kernels-community/flash-attn2"),
        "config.json sets attn_implementation to 'kernels-community/flash-attn2'",
    ),
    # This environment has the `kernels` package, which would fetch the kernel from the hub.
    "hub-kernel": (
        lambda f: _config(f, _attn_implementation="kernels-community/flash-attn2"),
        "config.json sets _attn_implementation to 'kernels-community/flash-attn2'",
    ),
    "shard-outside": (_shard_outside, "model.safetensors.index.json names shard '/"),
    "no-weights": (_no_weights, "the safetensors weights do not fit LlamaForCausalLM: missing [lm_head.weight"),
    "tokenizer-code": (_evil_tokenizer, "tokenizer_config.json names remote code (auto_map)"),
    # The tokenizer round trip would publish what the link points to: the job's environment.
    "linked-template": (
        lambda f: (f / "chat_template.jinja").symlink_to("/proc/self/environ"),
        "chat_template.jinja is a symbolic link (to /proc/self/environ)",
    ),
}


def _hostile(name: str, texts: Texts, tmp_path: Path) -> Path:
    """The job's folder: a copy of the fixture model made hostile, and job.yaml beside it."""
    root = tmp_path / name
    model = root / "model"
    shutil.copytree(FIXTURE, model)
    CASES[name][0](model)
    write_job(root, job_yaml(texts, "{scheme: W4A16, algorithm: RTN}"), model=model)
    return root


@pytest.mark.parametrize(
    "name", ["config-list", "autoconfig", "kernel-missing", "shard-outside", "no-weights", "linked-template"]
)
def test_hostile_folders_are_model_errors_naming_the_file(
    texts: Texts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from kompression.worker import pipeline  # through llm-compressor's techniques: after the skip above

    if name == "kernel-missing":
        monkeypatch.setitem(sys.modules, "kernels", None)  # as in an image built without the package
    root = _hostile(name, texts, tmp_path)
    job = parse_job(yaml.safe_load((root / "job.yaml").read_text()))
    with pytest.raises(ModelError) as refused:
        pipeline.run(job, pipeline.RunOptions(workdir=tmp_path), Reporter(job, stream=io.StringIO()))
    assert CASES[name][1] in refused.value.message
    assert refused.value.message.startswith("spec.model.uri: ")
    assert not (root / "out").exists()


def test_kompression_run_refuses_a_hub_kernel_and_a_tokenizer_s_code_offline_with_stdin_open(
    texts: Texts, tmp_path: Path
) -> None:
    roots = {name: _hostile(name, texts, tmp_path) for name in ("hub-kernel", "tokenizer-code")}

    def run(root: Path) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "NETWORK_LOG": str(root / "network.log"),
            "HF_MODULES_CACHE": str(root / "modules"),  # where transformers would copy a folder's code
        }
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            env.pop(variable, None)  # `kompression run` sets them itself
        return kompression_run(root / "job.yaml", env=env, guard=GUARD, answers="y\n" * 10)

    with ThreadPoolExecutor(max_workers=2) as pool:  # CI has two cores
        results = dict(zip(roots, pool.map(run, roots.values()), strict=True))
    for name, proc in results.items():
        root = roots[name]
        assert proc.returncode == ExitCode.MODEL_ERROR, (name, proc.stderr[-3000:])
        assert CASES[name][1] in proc.stderr, (name, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
        assert not (root / "network.log").exists(), (name, (root / "network.log").read_text())
        assert not (root / MARKER).exists(), name
        assert not (root / "out").exists(), name
