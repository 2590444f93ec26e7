"""docs/storage.md: every scheme the worker serves has an example, each example is a valid spec,
and the pvc:// example mounts what the page says. The round trips behind the page's other claims
run in tests/worker/test_worker_storage*.py against the emulators."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from factories import manifest
from kompression.api.uris import URI_SCHEMES
from kompression.api.validation import SpecInvalid, parse_job
from kompression.cli import main

REPO = Path(__file__).resolve().parents[2]
PAGE = (REPO / "docs" / "storage.md").read_text()
MODEL: dict[str, Any] = manifest()["spec"]["model"]


def _spec_blocks() -> list[dict[str, Any]]:
    return [doc["spec"] for block in re.findall(r"```yaml\n(.*?)```", PAGE, re.S) if (doc := yaml.safe_load(block))]


def _manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return manifest("storage-doc", "ml-team-a", **spec)


def test_the_table_lists_exactly_the_schemes_validation_accepts() -> None:
    rows = re.findall(r"^\| `(\w+)://[^`]*` \| (.+?) \|", PAGE, re.M)
    assert [scheme for scheme, _ in rows] == list(URI_SCHEMES)
    for scheme, examples in rows:
        for uri in re.findall(r"`([^`]+)`", examples):
            assert uri.startswith(f"{scheme}://")
            doc = _manifest({"model": {**MODEL, "uri": uri}})
            assert parse_job(doc).spec.model.uri == uri


@pytest.mark.parametrize("spec", _spec_blocks(), ids=lambda s: s["output"]["uri"].split(":")[0])
def test_every_yaml_example_is_a_valid_spec(spec: dict[str, Any]) -> None:
    parse_job(_manifest(spec))


def test_there_is_an_example_per_remote_scheme() -> None:
    schemes = {spec["output"]["uri"].split("://")[0] for spec in _spec_blocks()}
    assert schemes == {"s3", "gs", "az", "pvc"}


def test_hf_is_documented_as_not_served_and_refused() -> None:
    assert "`hf://` is not served yet" in PAGE
    with pytest.raises(SpecInvalid, match="hf:// is not served yet"):
        parse_job(_manifest({"model": {**MODEL, "uri": "hf://org/model@main"}}))


def test_the_pvc_example_mounts_what_the_page_says(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (spec,) = [s for s in _spec_blocks() if s["output"]["uri"].startswith("pvc://")]
    manifest = _manifest(spec)
    manifest["metadata"]["uid"] = "0b1c-uid"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert main(["render", str(path)]) == 0
    _, job = yaml.safe_load_all(capsys.readouterr().out)
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "`models` is mounted read-only at `/mnt/pvc/models` and `results` read-write at" in PAGE
    assert set(claims) == {"models", "results"}
    for claim, read_only in (("models", True), ("results", False)):
        mount = mounts[claims[claim]["name"]]
        assert (mount["mountPath"], mount["readOnly"]) == (f"/mnt/pvc/{claim}", read_only)
    assert claims["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert claims["results"]["persistentVolumeClaim"]["readOnly"] is False
