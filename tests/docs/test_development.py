"""docs/development.md and .pre-commit-config.yaml: the commands they give exist, the pre-commit
hooks are the checks of `make lint`, and each runs as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PAGE = (REPO / "docs" / "development.md").read_text()
PRE_COMMIT = REPO / ".pre-commit-config.yaml"
MAKEFILES = "\n".join((REPO / name).read_text() for name in ("Makefile", "Makefile.testbed"))


def _hooks() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PRE_COMMIT.read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"], "hooks must need no network"
    return {hook["id"]: hook for hook in config["repos"][0]["hooks"]}


def _commands(entry: str) -> list[list[str]]:
    """The commands an entry runs: itself, or each command of a `bash -c` script."""
    argv = shlex.split(entry)
    if argv[:2] != ["bash", "-c"]:
        return [argv]
    return [shlex.split(part) for part in re.split(r"\|\||\||\{|\}|;", argv[2]) if part.strip()]


def test_the_readme_links_the_page() -> None:
    assert "(docs/development.md)" in (REPO / "README.md").read_text()


def test_the_page_covers_layers_techniques_failures_tests_and_lint() -> None:
    headings = re.findall(r"^##+ (.+)$", PAGE, re.M)
    for heading in ("The layers", "Adding a technique", "Adding a failure", "Tests", "The test bed", "Lint"):
        assert heading in headings, heading
    # The worker's layers, top to bottom, in the order the page lists them.
    rows = re.findall(r"^\| `([a-z_/*]+)`", PAGE, re.M)
    worker = [
        "cli",
        "pipeline",
        "tuning",
        "trial",
        "steps/*",
        "techniques",
        "measure/*",
        "formats/*",
        "model",
        "errors",
    ]
    assert [r for r in rows if r in worker][: len(worker)] == worker


def test_the_worker_table_names_every_worker_module() -> None:
    table = PAGE.split("### The worker", 1)[1].split("###", 1)[0]
    worker = REPO / "operator" / "kompression" / "worker"
    for module in worker.rglob("*.py"):
        if module.name == "__init__.py":
            continue
        assert f"`{module.stem}`" in table or f"/{module.stem}`" in table, f"{module.relative_to(worker)} is not listed"


def test_the_worked_technique_is_quoted_from_the_code() -> None:
    section = PAGE.split("## Adding a technique", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        lines = [line[3:] if line.startswith("   ") else line for line in block.splitlines()]
        source = (REPO / lines[0].removeprefix("# ").strip()).read_text()
        for line in lines[1:]:
            assert line.strip() == "" or line in source, f"{lines[0]}: {line!r} is not in the code"


def test_every_make_target_the_page_names_exists() -> None:
    targets = set(re.findall(r"^([a-zA-Z_-]+):", MAKEFILES, re.M))
    named = set(re.findall(r"`make ([a-z-]+)", PAGE)) | set(re.findall(r"^make ([a-z-]+)", PAGE, re.M))
    assert named, "the page names no make target"
    assert named <= targets, f"not in the Makefiles: {sorted(named - targets)}"


def test_every_tool_and_test_path_the_page_names_exists() -> None:
    tools = set(re.findall(r"\.venv/bin/([a-z-]+)", PAGE))
    assert {"pytest", "pre-commit"} <= tools
    for tool in tools:
        assert (REPO / ".venv" / "bin" / tool).exists(), f".venv/bin/{tool} is missing"
    for path in re.findall(r"`((?:tests|operator|docs|crds)/[\w./-]+\.(?:py|md|yaml))`", PAGE):
        if "foo" not in path:  # the technique the page walks through is a placeholder
            assert (REPO / path).exists(), path


def test_the_markers_the_page_names_are_declared() -> None:
    declared = {
        m.split(":")[0]
        for m in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    }
    named = set(re.findall(r"`(\w+)` \(", PAGE.split("Markers", 1)[1].split("\n\n", 1)[0]))
    assert named == declared


def test_the_hooks_are_make_lints_checks() -> None:
    hooks = _hooks()
    assert {"ruff-check", "ruff-format", "mypy", "crd-drift"} <= set(hooks)
    entries = {hook_id: _commands(hook["entry"]) for hook_id, hook in hooks.items()}
    assert entries["ruff-check"][0][:2] == [".venv/bin/ruff", "check"]
    assert entries["ruff-format"][0][:2] == [".venv/bin/ruff", "format"]
    assert entries["mypy"][0][0] == ".venv/bin/mypy"
    assert [".venv/bin/kompression", "crd"] in entries["crd-drift"]
    assert ["diff", "-u", "crds/compressionjobs.kompression.dev.yaml", "-"] in entries["crd-drift"]
    # The same drift check as `make lint`.
    assert "kompression crd | diff -u crds/compressionjobs.kompression.dev.yaml -" in MAKEFILES


@pytest.mark.parametrize("hook_id", sorted(_hooks()))
def test_each_hook_runs_a_command_that_exists(hook_id: str) -> None:
    hook = _hooks()[hook_id]
    assert hook["language"] == "system"  # no environment to download
    for argv in _commands(hook["entry"]):
        program = argv[0]
        if program.startswith(".venv/"):
            assert (REPO / program).exists(), f"{hook_id}: {program} is missing"
        else:
            found = subprocess.run(["bash", "-c", f"command -v {program}"], capture_output=True, check=False)
            assert found.returncode == 0, f"{hook_id}: {program} is not a command"


def test_pre_commit_accepts_the_config() -> None:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "pre-commit"), "validate-config", str(PRE_COMMIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_crd_drift_hook_passes_on_this_tree() -> None:
    """The hook's entry, run as pre-commit runs it (from the repository root)."""
    proc = subprocess.run(
        shlex.split(_hooks()["crd-drift"]["entry"]), cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
