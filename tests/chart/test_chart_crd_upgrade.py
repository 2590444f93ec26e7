"""A CRD upgrade through `helm upgrade` with a real schema change, on the test bed.

The chart as it is installs the CRD; a CompressionJob is stored; then `helm upgrade` to a copy of
the chart whose CRD adds a field with a default and bounds. The object stored before the upgrade
reads back with the default, keeps everything else, and survives an update; new objects get the
default and the bounds are enforced. The repository's CRD is put back afterwards.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kompression.api import constants as c
from testbed.chart import CHART, install, release_name
from testbed.procs import TestbedError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]
NEW_FIELD, DEFAULT = "retentionDays", 30


def _job(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "s3://models/m.pt2", "format": "TorchExport", "inputs": [{"name": "x", "shape": [-1, 8]}]},
            "steps": [{"name": "int8", "quantize": {"method": "DynamicInt8"}}],
            "output": {"uri": "s3://out/m/"},
            **extra,
        },
    }


def _chart_with_new_field(tmp_path: Path) -> Path:
    chart = tmp_path / "kompression"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / f"{c.CRD_NAME}.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert NEW_FIELD not in spec["properties"]
    spec["properties"][NEW_FIELD] = {
        "type": "integer",
        "default": DEFAULT,
        "minimum": 1,
        "maximum": 3650,
        "description": "Days the published artifacts are kept (added by the upgrade).",
    }
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def _get(kube: Any, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kube.kubectl("-n", ns, "get", "compressionjob", name, "-o", "json").stdout)
    return result


def test_helm_upgrade_adds_a_defaulted_field_and_stored_objects_read_back(kube: Any, helm: Any, tmp_path: Path) -> None:
    release, ns = release_name("kcu"), kube.create_namespace("kompression")
    team = kube.create_namespace("team")
    try:
        install(kube, helm, release, ns, "replicaCount=0")
        kube.kubectl("apply", "-f", "-", input=json.dumps(_job("stored", team)))
        kube.kubectl(
            "-n", team, "patch", "compressionjob", "stored", "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Running", "jobName": "stored"}}),
        )  # fmt: skip
        before = _get(kube, team, "stored")
        assert NEW_FIELD not in before["spec"]

        install(kube, helm, release, ns, "replicaCount=0", chart=_chart_with_new_field(tmp_path), verb="upgrade")
        live = json.loads(kube.kubectl("get", "crd", c.CRD_NAME, "-o", "json").stdout)
        assert NEW_FIELD in live["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]

        # The object stored under the old schema: defaulted on read, nothing else changed.
        def defaulted() -> dict[str, Any] | None:
            obj = _get(kube, team, "stored")
            return obj if NEW_FIELD in obj["spec"] else None

        after = kube.wait(defaulted, "the stored object read back with the new field")
        assert after["spec"] == {**before["spec"], NEW_FIELD: DEFAULT}
        assert after["status"] == before["status"]
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        # An update writes it back under the new schema (the spec-immutability rule still holds).
        kube.kubectl("-n", team, "label", "compressionjob", "stored", "upgraded=yes")
        assert _get(kube, team, "stored")["spec"][NEW_FIELD] == DEFAULT

        # New objects: the default, an explicit value, and the new bounds enforced.
        kube.kubectl("apply", "-f", "-", input=json.dumps(_job("fresh", team)))
        kube.kubectl("apply", "-f", "-", input=json.dumps(_job("explicit", team, **{NEW_FIELD: 7})))
        assert _get(kube, team, "fresh")["spec"][NEW_FIELD] == DEFAULT
        assert _get(kube, team, "explicit")["spec"][NEW_FIELD] == 7
        with pytest.raises(TestbedError, match=NEW_FIELD):
            kube.kubectl("apply", "-f", "-", input=json.dumps(_job("zero", team, **{NEW_FIELD: 0})))
    finally:
        # The repository's CRD back for the other tests (crds.keep leaves it on uninstall).
        install(kube, helm, release, ns, "replicaCount=0", verb="upgrade")
        helm.run("uninstall", release, "-n", ns, "--wait", timeout=180, check=False)
        kube.kubectl("delete", "namespace", team, ns, "--wait=false", check=False)
