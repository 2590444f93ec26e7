"""`pip install kompression` without extras: the API commands work, and every other command names
the extra to install and exits 2, with no traceback. Run in a fresh virtual environment that
holds the base package only (uv, which `make setup` installs, builds it from a copy of this tree)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kompression.extras import EXIT_EXTRA_MISSING, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SWEEP = ROOT / "examples" / "sweep-digits.yaml"
pytestmark = pytest.mark.slow


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is missing; `make setup` installs it")
    return found


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with `pip install kompression` and nothing else; returns its bin folder."""
    where = tmp_path_factory.mktemp("base-install")
    source = where / "src"
    # A copy, so that setuptools' build/ folder is not left in the working tree.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "operator", source / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = where / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, env=env)
    install = [_uv(), "pip", "install", "--quiet", str(source)]
    # uv's cache holds pydantic and PyYAML after `make setup`; the index is only asked without it.
    if subprocess.run([*install, "--offline"], env=env, capture_output=True, check=False).returncode:
        subprocess.run(install, env=env, check=True)
    return venv / "bin"


def _kompression(bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / "kompression"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, **env},
    )


def test_the_base_install_has_no_extra(base_install: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('torch', 'kopf', 'onnx', 'numpy') if u.find_spec(m)])"
    out = subprocess.run([str(base_install / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "args",
    [
        ("validate", str(QUICKSTART)),
        ("crd",),
        ("render", str(QUICKSTART)),
        ("version",),
        ("sweep", str(SWEEP), "--explain"),
    ],
    ids=lambda a: a[0],
)
def test_the_api_commands_need_no_extra(base_install: Path, args: tuple[str, ...]) -> None:
    proc = _kompression(base_install, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("operator",), "operator"),
        (("run", str(QUICKSTART)), "worker"),
        (("run", str(QUICKSTART), "--nproc-per-node", "2"), "worker"),
        (("example-model", "--output", "file:///nowhere/model.pt2"), "worker"),
        (("sweep", str(SWEEP)), "worker"),
    ],
    ids=["operator", "run", "run-nproc", "example-model", "sweep"],
)
def test_a_command_without_its_extra_names_it_and_exits_2(
    base_install: Path, args: tuple[str, ...], extra: str
) -> None:
    proc = _kompression(base_install, *args)
    assert proc.returncode == EXIT_EXTRA_MISSING, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"`kompression {args[0]}` needs the {extra} extra" in proc.stderr
    assert f"pip install 'kompression[{extra}]'" in proc.stderr
    assert re.search(r"no module [a-z_]+", proc.stderr)


def test_run_lists_every_extra_the_job_needs_and_says_why_in_the_termination_message(
    base_install: Path, tmp_path: Path
) -> None:
    job = yaml.safe_load(QUICKSTART.read_text())
    job["spec"]["model"] = {
        "uri": "file:///models/bert",
        "format": "HuggingFace",
        "inputs": [{"name": "x", "shape": [1, 8]}],
    }
    job["spec"]["steps"] = [{"name": "engine", "tensorrt": {"precision": "FP16"}}]
    job["spec"].pop("acceptance", None)
    job["spec"]["resources"] = {"gpus": 1}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    termination = tmp_path / "termination-log"
    proc = _kompression(base_install, "run", str(path), KOMPRESSION_TERMINATION_LOG=str(termination))
    assert proc.returncode == EXIT_EXTRA_MISSING, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pip install 'kompression[worker]'" in proc.stderr
    assert "model format HuggingFace needs the worker extra, which is not installed (no module transformers)" in (
        proc.stderr
    )
    assert "a tensorrt step needs the tensorrt extra" in proc.stderr
    assert "pip install 'kompression[tensorrt]'" in proc.stderr
    report = json.loads(termination.read_text())
    assert report["phase"] == "Failed" and report["reason"] == "RuntimeMissing"
    assert "pip install 'kompression[tensorrt]'" in report["message"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_with_the_worker_but_without_tensorrt_a_tensorrt_job_names_that_extra(tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "examples" / "tensorrt.yaml").read_text())
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == EXIT_EXTRA_MISSING
    assert proc.stderr.strip() == (
        "error: a tensorrt step needs the tensorrt extra, which is not installed (no module tensorrt): "
        "pip install 'kompression[tensorrt]'"
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The distributions of modules named otherwise, for when they are not installed here (the llm extra
# lives in .venv-llm).
ELSEWHERE = {"modelopt": "nvidia-modelopt"}


def test_the_extras_table_matches_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) == set(declared) - {"dev"}
    distributions = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        wanted = {_canonical(re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]) for req in declared[extra]}
        # A module that is not installed here (tensorrt) is named like its distribution, or as listed.
        provided = {_canonical(d) for m in modules for d in distributions.get(m, [ELSEWHERE.get(m, m)])}
        assert provided == wanted, extra


@pytest.mark.skipif(importlib.util.find_spec("llmcompressor") is not None, reason="llm-compressor is installed here")
@pytest.mark.parametrize("example", ["llm-w4a16.yaml", "llm-sparse24.yaml"])
def test_in_the_worker_environment_an_llm_job_names_the_llm_extra_and_its_own_environment(
    example: str, tmp_path: Path
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text((ROOT / "examples" / example).read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "kompression", "run", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == EXIT_EXTRA_MISSING
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(
        "error: an llmQuantize step needs the llm extra, which is not installed (no module llmcompressor, "
        "compressed_tensors"
    )
    assert "pip install 'kompression[llm]'; install it in an environment of its own" in proc.stderr
    assert "`make setup-llm`" in proc.stderr and "images/worker-llm" in proc.stderr
