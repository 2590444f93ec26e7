"""The hand-written docs stay in step with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kompression.api.constants import ExitCode

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
REASONS = (
    "Unschedulable",
    "ImagePullBackOff",
    "OOMKilled",
    "DeadlineExceeded",
    "BackoffLimitExceeded",
    "GateFailed",
    "JobConflict",
    "InvalidSpec",
    "ModelError",
    "DataError",
    "StorageError",
    "RuntimeMissing",
)


def test_troubleshooting_covers_every_reason_and_exit_code() -> None:
    page = (DOCS / "troubleshooting.md").read_text()
    for reason in REASONS:
        assert f"| `{reason}` |" in page, reason
    codes = {name: value for name, value in vars(ExitCode).items() if name.isupper() and isinstance(value, int)}
    for name, value in codes.items():
        retried = "no" if value in ExitCode.PERMANENT else ("-" if value == 0 else "yes")
        assert re.search(rf"\| {value} \| {name}\b[^|]*\| {retried} \|", page), f"exit code {value} {name}"


def test_troubleshooting_covers_every_exit_reason_of_the_operator() -> None:
    failure = __import__("kompression.controller.failure_policy", fromlist=["EXIT_REASONS"])
    page = (DOCS / "troubleshooting.md").read_text()
    for reason in failure.EXIT_REASONS.values():
        assert f"| `{reason}` |" in page, reason


def test_yaml_examples_in_docs_parse() -> None:
    for page in DOCS.glob("*.md"):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            list(yaml.safe_load_all(block))


def test_relative_links_resolve() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([\w./-]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_storage_doc_names_the_credential_variables() -> None:
    page = (DOCS / "storage.md").read_text()
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "AZURE_STORAGE_CONNECTION_STRING",
    ):
        assert var in page


def test_readme_links_every_doc_and_they_exist() -> None:
    readme = (REPO / "README.md").read_text()
    for name in ("install", "crd-reference", "steps", "storage", "metrics", "gitops", "troubleshooting"):
        assert f"(docs/{name}.md)" in readme, f"README does not link docs/{name}.md"
        assert (DOCS / f"{name}.md").exists(), f"docs/{name}.md is missing"


def test_install_doc_matches_the_operator_flags_and_progress_channel() -> None:
    from kompression.api.constants import ENV_PROGRESS_URL, PROGRESS_PATH_PREFIX, progress_audience
    from kompression.controller import cli

    page = (DOCS / "install.md").read_text()
    flags = {flag for flag, *_ in cli._FLAGS}
    envs = {cli._env_name(field) for _, field, *_ in cli._FLAGS}
    for flag in re.findall(r"`(--[a-z-]+)", page):
        assert flag in flags or flag == "--skip-crds", f"install.md names {flag}, which `kompression operator` lacks"
    for env in re.findall(r"`(KOMPRESSION_[A-Z_]+)`", page):
        assert env in envs or env in (ENV_PROGRESS_URL, "KOMPRESSION_NAMESPACES"), env
    assert f"`{progress_audience('<namespace>', '<name>', '<uid>')}`" in page
    assert f"`{PROGRESS_PATH_PREFIX}/<namespace>/<name>`" in page
