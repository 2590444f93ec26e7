"""`kompression sweep` on the quickstart's model: examples/sweep-digits.yaml runs as written, its trials
share their first steps through the step cache, and the report's Pareto front is the front of the
trials' own published results; trials in worker processes end where trials in sequence do;
maxFailedTrials stops the sweep; a user's mistake is a message and an exit code, not a traceback."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kompression.api.constants import ExitCode
from kompression.api.validation import parse_job
from kompression.cli import main
from kompression.worker.storage import publish

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sweep-digits.yaml"
MODEL = "file://.kompression/quickstart/digits-cnn.pt2"
OUT = "file://.kompression/sweep-digits/out/"

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def example_model(workdir: Path) -> Path:
    """The model the example names, made as its header says (two epochs: the test needs no accuracy)."""
    assert main(["example-model", "--output", MODEL, "--epochs", "2"]) == ExitCode.OK
    return workdir


def manifest(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for key, value in changes.items():
        body["spec"][key] = value
    return body


def write(folder: Path, body: dict[str, Any], name: str = "sweep.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(body))
    return str(path)


def sweep_report(folder: Path, prefix: str = OUT) -> dict[str, Any]:
    fetched = publish.fetch_published(prefix, folder / "fetched")
    report: dict[str, Any] = json.loads(fetched["report.json"].read_text())
    report["files"] = fetched
    return report


def dominated(point: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    return any(o[0] >= point[0] and o[1] >= point[1] and o != point for o in others)


@pytest.mark.slow
def test_the_example_sweep_shares_prefixes_and_reports_the_front_of_its_trials(
    example_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sweep", str(EXAMPLE)]) == ExitCode.OK
    printed = capsys.readouterr().out
    assert printed.count("sweep-digits-t") >= 8 and "sweep Succeeded: 8 of 8 trials done" in printed

    report = sweep_report(example_model)
    status = report["status"]
    assert status["phase"] == "Succeeded" and status["trialsDone"] == status["trialsTotal"] == 8
    # Per sparsity: [prune, distill, Dynamic] runs all three; [prune, Dynamic] reuses prune; [prune,
    # distill, Static] reuses prune and distill; [prune, Static] reuses prune: 4 of 10 executions reused.
    # The original is measured by the first trial only.
    assert report["stepCache"]["reusedSteps"] == 8 and report["stepCache"]["executedSteps"] == 12
    assert [t["stepCache"]["baselineReused"] for t in report["trials"]] == [False] + [True] * 7
    assert [t["stepCache"]["reusedSteps"] for t in report["trials"]] == [0, 1, 2, 1] * 2

    # Every trial's figures are those its own published report holds, and the front is theirs.
    points: dict[str, tuple[float, float]] = {}
    for trial, recorded in zip(status["trials"], report["trials"], strict=True):
        own = publish.fetch_published(recorded["output"], example_model / "trials" / trial["name"])
        result = json.loads(own["report.json"].read_text())["result"]
        assert trial["metrics"]["accuracy"] == result["final"]["accuracy"]
        assert trial["metrics"]["compressionRatio"] == result["compressionRatio"]
        if trial["phase"] == "Succeeded":
            points[trial["name"]] = (trial["metrics"]["accuracy"], trial["metrics"]["compressionRatio"])
    front = sorted(n for n, p in points.items() if not dominated(p, list(points.values())))
    assert front and status["paretoFront"] == front
    assert status["best"]["name"] == max(points, key=lambda n: (points[n], -int(n.rsplit("t", 1)[1])))

    markdown = report["files"]["report.md"].read_text()
    assert (
        "| trial | sparsity | method | distill | phase | accuracy | compressionRatio | steps reused | front |"
        in markdown
    )
    rows = [line for line in markdown.splitlines() if line.startswith("| sweep-digits-t")]
    assert len(rows) == 8 and "![Pareto front](pareto.png)" in markdown
    assert "| step cache | 8 of 20 step executions reused" in markdown
    assert report["files"]["pareto.png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow
def test_trials_in_worker_processes_end_where_trials_in_sequence_do(example_model: Path) -> None:
    small = manifest()
    small["spec"]["parameters"] = [
        {"name": "method", "step": "int8", "field": "method", "values": ["DynamicInt8", "StaticInt8"]}
    ]
    small["spec"]["template"]["steps"] = [s for s in small["spec"]["template"]["steps"] if s["name"] != "distill"]
    parallel = copy.deepcopy(small)
    parallel["spec"]["template"]["output"]["uri"] = "file://parallel/"
    assert main(["sweep", write(example_model, small)]) == ExitCode.OK
    assert main(["sweep", write(example_model, parallel, "parallel.yaml"), "--workers", "2"]) == ExitCode.OK
    in_sequence = sweep_report(example_model / "a")["status"]["trials"]
    in_processes = sweep_report(example_model / "b", "file://parallel/")["status"]["trials"]
    # The same trials, the same models: sizes and phases agree. Accuracy is not compared: about one
    # run in two, one trial of the pair classifies one digits sample otherwise in a worker process
    # than in this one (0.975 against 0.972), at any thread count; the cause is not found yet.
    assert [t["metrics"]["compressionRatio"] for t in in_processes] == [
        t["metrics"]["compressionRatio"] for t in in_sequence
    ]
    assert [t["parameters"] for t in in_processes] == [t["parameters"] for t in in_sequence]
    assert all(t["phase"] == "Succeeded" for t in in_processes)


def test_max_failed_trials_stops_the_sweep_and_says_why(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = manifest(maxFailedTrials=0)  # no model at the template's URI: every trial fails
    assert main(["sweep", write(workdir, body)]) == ExitCode.UNEXPECTED
    err = capsys.readouterr().err
    assert "1 trials failed, more than maxFailedTrials 0; no further trial was started" in err
    status = sweep_report(workdir)["status"]
    assert status["phase"] == "Failed" and status["counts"]["failed"] == 1 and status["counts"]["pending"] == 7
    assert "ModelError: spec.model.uri" in status["trials"][0]["message"]


def test_explain_lists_the_trials_and_runs_nothing(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(EXAMPLE), "--explain"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "Grid, 8 trials of 8 combinations" in out
    assert all(f"t{i}" in out for i in range(8))
    assert not (workdir / ".kompression").exists()


@pytest.mark.parametrize(
    ("body", "args", "message"),
    [
        (None, [], "No such file"),
        (manifest(parameters=[{"name": "rank", "step": "prune", "field": "rank", "values": [1]}]), [], "parameters[0]"),
        (manifest(), ["--workers", "0"], "--workers 0"),
        ({"apiVersion": "kompression.dev/v1alpha1", "kind": "CompressionJob"}, [], "CompressionSweep"),
    ],
    ids=["missing-file", "field-no-step-has", "no-workers", "a-job-not-a-sweep"],
)
def test_a_users_mistake_is_a_message_and_exit_code_2(
    workdir: Path, capsys: pytest.CaptureFixture[str], body: dict[str, Any] | None, args: list[str], message: str
) -> None:
    path = write(workdir, body) if body is not None else str(workdir / "absent.yaml")
    assert main(["sweep", path, *args]) == ExitCode.INVALID_SPEC
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


SWEEPS_PAGE = REPO / "docs" / "sweeps.md"


def test_the_sweeps_page_shows_the_example_and_the_commands_these_tests_run() -> None:
    page = SWEEPS_PAGE.read_text()
    blocks = re.findall(r"```(\w+)\n(.*?)```", page, re.S)
    yamls = [body for kind, body in blocks if kind == "yaml"]
    assert yamls[0] == EXAMPLE.read_text()  # the example the tests above run
    commands = [line.split("#")[0].split() for kind, body in blocks if kind == "sh" for line in body.splitlines()]
    assert ["kompression", "example-model", "--output", MODEL] in commands
    # The ones the tests above run: --explain, in sequence, and in worker processes.
    assert ["kompression", "sweep", "examples/sweep-digits.yaml", "--explain"] in commands
    assert ["kompression", "sweep", "examples/sweep-digits.yaml"] in commands
    assert ["kompression", "sweep", "examples/sweep-digits.yaml", "--workers", "2"] in commands
    # The step cache fragment is a field of a valid job.
    fragment = yaml.safe_load(yamls[1])["spec"]
    job = yaml.safe_load(EXAMPLE.read_text())["spec"]["template"]
    meta = {"name": "cached"}
    parse_job(
        {
            "apiVersion": "kompression.dev/v1alpha1",
            "kind": "CompressionJob",
            "metadata": meta,
            "spec": {**job, **fragment},
        }
    )
