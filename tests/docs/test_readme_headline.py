"""The README's headline manifest runs as written, on the model and data its own script makes.

The script and the manifest are taken from README.md as they stand; only the sizes shrink (fewer
samples, fewer latency runs) and the s3:// locations become local folders, so the test runs on a CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from kompression.api.constants import ExitCode
from kompression.cli import main

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 16

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_headline_manifest_runs_on_the_model_the_readme_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torchvision")
    manifest = _blocks("yaml")[0]
    script = next(b for b in _blocks("python") if "torch.export.save" in b)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KOMPRESSION_TERMINATION_LOG", str(tmp_path / "termination-log"))
    torch.set_num_threads(1)
    small = re.sub(r'\("(\w+)", \d+\)', rf'("\1", {SAMPLES})', script)
    assert small != script, "the README script no longer names its sample counts as (name, count)"
    exec(compile(small, "README.md", "exec"), {})  # the README's own script

    job = yaml.safe_load(manifest)
    spec = job["spec"]
    model_uri = spec["model"]["uri"]
    assert model_uri.startswith("s3://") and model_uri.endswith("/model.pt2")
    spec["model"]["uri"] = f"file://{tmp_path}/model.pt2"
    for purpose, source in spec["data"].items():
        source["uri"] = f"file://{tmp_path}/{source['uri'].rsplit('/', 1)[-1]}"
        assert Path(source["uri"].removeprefix("file://")).is_file(), f"the README script does not write {purpose}"
        if "samples" in source:
            source["samples"] = min(source["samples"], SAMPLES)
    spec["output"]["uri"] = f"file://{tmp_path}/out/"
    spec["measurement"] = {"iterations": 2, "warmupIterations": 1}  # latency figures are not the point here
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    code = main(["run", str(path), "--progress", "json"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    finished = [e["step"] for e in events if e["event"] == "StepFinished"]
    assert finished == [s["name"] for s in spec["steps"]]
    # The script's random weights have no accuracy to keep, so the accuracy gate may fail (the
    # README says so); everything else must pass, the 3x compression gate included.
    final = events[-1]
    if code != ExitCode.OK:
        assert code == ExitCode.GATE_FAILED and final["reason"] == "GateFailed", final
        assert "maxAccuracyDrop" in final["message"] and "minCompressionRatio" not in final["message"]
