"""Hostile manifests: bounded work, exit 2 (unreadable) or 1 (invalid) with a message, never a
traceback; metadata checked as the API server checks it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from api_cases import ROOT

from kompression.api import validation
from kompression.api.validation import SpecInvalid, metadata_errors, parse_job
from kompression.cli import main
from kompression.controller.cli import RENDER_UID
from kompression.controller.naming import MAX_JOB_NAME, configmap_name, job_name

QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DNS_SUBDOMAIN = validation.DNS_SUBDOMAIN_PATTERN


def alias_bomb(levels: int, width: int = 9) -> str:
    """The billion-laughs document: `levels` lines of aliases, each `width` times the last."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def run(command: str, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main([command, str(path)])
    return code, capsys.readouterr().err


@pytest.mark.timeout(60)  # the bomb took 81 s and 3 GB before; a hang fails here instead
@pytest.mark.parametrize("command", ["validate", "render"])
def test_alias_bomb_is_refused(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(8))
    assert len(bomb.read_bytes()) < 1000
    code, err = run(command, bomb, capsys)
    assert code == 2
    assert "alias" in err and "Traceback" not in err


def test_shared_values_below_the_cap_still_load(tmp_path: Path) -> None:
    # Anchors are legitimate YAML: a manifest that reuses a block stays readable and valid.
    doc = yaml.safe_load(QUICKSTART.read_text())
    shared = {"team": "vision"}
    doc["metadata"]["labels"] = doc["metadata"]["annotations"] = shared
    path = tmp_path / "anchors.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert "*id001" in path.read_text()
    parse_job(validation.load_documents(path)[0])


@pytest.mark.timeout(60)
def test_error_messages_never_render_a_whole_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Below the node cap, but a repr() of the value would still be megabytes: the message stays short.
    value: Any = "lol"
    for _ in range(5):
        value = [value] * 8  # shared, so the file holds each level once (as an anchor and aliases)
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["labels"] = {"l": value}
    doc["spec"]["model"]["uri"] = value
    path = tmp_path / "wide.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert len(path.read_bytes()) < 5000
    code, err = run("validate", path, capsys)
    assert code == 1
    assert len(err) < 2000, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"apiVersion: \xff\xfe kompression\n", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        (b"a:\n" + b"".join(b"  " * i + b"- b:\n" for i in range(1, 200)), "nested more than"),
        (b"a: " + b"x" * (3 * 1024 * 1024), "larger than"),
        (b"a: [unclosed\n", "not valid YAML"),
    ],
    ids=["non-utf8", "deep-flow", "deep-block", "too-large", "bad-yaml"],
)
@pytest.mark.parametrize("command", ["validate", "render"])
def test_unreadable_input_exits_2_with_a_message(
    command: str, content: bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    code, err = run(command, path, capsys)
    assert (code, expected in err, "Traceback" in err) == (2, True, False), err


def _job(**metadata: Any) -> dict[str, Any]:
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"] = metadata
    return doc


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"name": ""}, "metadata.name"),
        ({}, "metadata.name"),
        ({"name": "Upper"}, "metadata.name"),
        ({"name": "a_b"}, "metadata.name"),
        ({"name": "a" * 254}, "metadata.name"),
        ({"name": "ok", "namespace": "Bad_NS"}, "metadata.namespace"),
        ({"name": "ok", "namespace": "n" * 64}, "metadata.namespace"),
        ({"generateName": "Bad-"}, "metadata.generateName"),
        ({"name": "ok", "labels": {"team": "x" * 64}}, "metadata.labels['team']"),
        ({"name": "ok", "labels": {"bad key!": "x"}}, "metadata.labels['bad key!']"),
        ({"name": "ok", "annotations": {"a": "x" * (256 * 1024)}}, "metadata.annotations"),
    ],
)
def test_metadata_is_checked_like_the_api_server(metadata: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        parse_job(_job(**metadata))
    assert field in [e.path for e in info.value.errors], info.value


@pytest.mark.parametrize(
    "metadata",
    [{"name": "a" * 253}, {"name": "a.b-c"}, {"generateName": "job-"}, {"name": "x", "labels": {"a.io/b": ""}}],
)
def test_valid_metadata_passes(metadata: dict[str, Any]) -> None:
    assert metadata_errors(metadata) == []
    parse_job(_job(**metadata))


def test_empty_name_is_invalid_for_validate_and_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(_job(name="")))
    for command in ("validate", "render"):
        code, err = run(command, path, capsys)
        assert (code, "metadata.name" in err, "Traceback" in err) == (1, True, False), err


def test_render_explains_that_generate_name_is_not_enough(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "generated.yaml"
    path.write_text(yaml.safe_dump(_job(generateName="job-")))
    code, err = run("render", path, capsys)
    assert code == 1 and "generateName" in err


def test_render_of_a_non_mapping_document_is_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert run("render", path, capsys)[0] == 1


def test_longest_valid_name_derives_valid_child_names() -> None:
    import re

    name = ("a" * 62 + ".") * 4
    name = name[:253].rstrip(".")
    assert metadata_errors({"name": name}) == []
    assert len(job_name(name)) <= MAX_JOB_NAME and re.match(DNS_SUBDOMAIN, job_name(name))
    assert len(configmap_name(name)) <= 253 and re.match(DNS_SUBDOMAIN, configmap_name(name))
    assert RENDER_UID  # the render stand-in uid is what the derived labels carry
