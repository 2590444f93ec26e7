"""The CompressionJob YAML in the README and in docs/steps.md is valid as written, and the steps
page lists every option and method the API has, spelled as the API spells them."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from kompression.api.v1alpha1 import ApiModel, Step
from kompression.api.validation import parse_job

REPO = Path(__file__).resolve().parents[2]
STEPS_PAGE = REPO / "docs" / "steps.md"


def _yaml_blocks(path: Path) -> list[Any]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)]


def test_the_readme_job_is_valid() -> None:
    jobs = [b for b in _yaml_blocks(REPO / "README.md") if isinstance(b, dict) and b.get("kind") == "CompressionJob"]
    assert jobs
    for job in jobs:
        parse_job(job)


def test_the_whole_jobs_of_the_steps_page_are_valid() -> None:
    jobs = [b for b in _yaml_blocks(STEPS_PAGE) if isinstance(b, dict) and b.get("kind") == "CompressionJob"]
    assert jobs  # the llmQuantize section's: that step runs alone, so it is not among the snippets below
    for job in jobs:
        parse_job(job)


def test_the_step_snippets_of_the_steps_page_make_one_valid_job() -> None:
    blocks = _yaml_blocks(STEPS_PAGE)
    steps = [step for b in blocks if isinstance(b, list) for step in b]
    acceptance = next(b["acceptance"] for b in blocks if isinstance(b, dict) and "acceptance" in b)
    assert {s["name"] for s in steps} >= {"prune", "distill", "int8", "export", "engine"}
    parse_job(
        {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": {"name": "steps-page"},
            "spec": {
                "model": {
                    "uri": "s3://m/model.pt2",
                    "format": "TorchExport",
                    "inputs": [{"name": "x", "shape": [-1, 3, 224, 224]}],
                },
                "data": {k: {"uri": f"s3://d/{k}.npz"} for k in ("calibration", "evaluation", "training")},
                "steps": steps,
                "acceptance": acceptance,
                "output": {"uri": "s3://out/"},
                "resources": {"gpus": 1},
            },
        }
    )


def _technique(annotation: Any) -> type[ApiModel]:
    return next(a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, ApiModel))


def test_the_steps_page_lists_every_option_and_method_as_the_api_spells_them() -> None:
    page = STEPS_PAGE.read_text()
    for name, field in Step.model_fields.items():
        if name == "name":
            continue
        technique = _technique(field.annotation)
        for option, info in technique.model_fields.items():
            assert re.search(rf"^\| [^|]*`{option}`", page, re.M), f"docs/steps.md: {name}.{option} has no row"
            if typing.get_origin(info.annotation) is typing.Literal:
                for value in typing.get_args(info.annotation):
                    assert f"`{value}`" in page, f"docs/steps.md does not name {name}.{option} {value}"
