"""Atomic publication of a run's files under the output prefix.

Layout under ``<prefix>``::

    runs/<run-id>/<artifacts...>   every file of one run (models, report.json, report.md, plots)
    manifest.json                  written LAST: the run id and every artifact's URI, sha256, size
    rejected/...                   the same layout, for a model that failed a gate
    checkpoints/<digest>/<step>/   training checkpoints while a run is in flight (removed at the end)

A reader starts from ``manifest.json``. It is a single object written in one PUT (or a local
rename), so it either names a complete earlier run or a complete new one, never a mix: the run
folder it points to was fully written before the manifest. A rerun writes a fresh ``runs/<id>/``
and then replaces the manifest, so repeating a run leaves the same shape. After the manifest is
replaced, run folders other than the new one and the one the previous manifest named are removed
(keeping the previous one lets a reader that fetched the old manifest finish its download).
Nothing is written under the prefix before the run has a result, so bad input leaves it untouched.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kompression.api.v1alpha1 import Artifact, ArtifactKind
from kompression.worker import storage
from kompression.worker.errors import StorageError

MANIFEST = "manifest.json"
RUNS = "runs"
REJECTED = "rejected"
MANIFEST_VERSION = 1


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


@dataclass
class Publisher:
    """Uploads one run's artifacts under <prefix>/runs/<run-id>/, then commits the manifest."""

    prefix: str
    run_id: str = field(default_factory=new_run_id)
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def run_prefix(self) -> str:
        return storage.join(self.prefix, RUNS, self.run_id)

    def add(self, local: Path, name: str, kind: ArtifactKind, relpath: str | None = None) -> Artifact:
        uri = storage.join(self.run_prefix, relpath or local.name)
        digest = storage.upload(local, uri)
        artifact = Artifact(name=name, kind=kind, uri=uri, sha256=digest, sizeBytes=local.stat().st_size)
        self.artifacts.append(artifact)
        return artifact

    def commit(self, metadata: dict[str, Any]) -> Artifact:
        """Write the manifest (the commit point), then prune stale run folders."""
        previous = read_manifest(self.prefix)
        manifest = {
            "version": MANIFEST_VERSION,
            "runId": self.run_id,
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **metadata,
            "artifacts": [a.to_wire() for a in self.artifacts],
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        uri = storage.join(self.prefix, MANIFEST)
        digest = storage.write_bytes(body, uri)
        keep = {self.run_id, previous.get("runId") if previous else None}
        self._prune_runs(keep)
        return Artifact(name="manifest", kind="Manifest", uri=uri, sha256=digest, sizeBytes=len(body))

    def _prune_runs(self, keep: set[str | None]) -> None:
        runs = storage.join(self.prefix, RUNS)
        stale = {rel.split("/", 1)[0] for rel in storage.list_files(runs)} - keep
        for run_id in sorted(stale):
            storage.remove(storage.join(runs, run_id))


def read_manifest(prefix: str) -> dict[str, Any] | None:
    """The committed manifest under prefix, or None when nothing was ever published there."""
    uri = storage.join(prefix, MANIFEST)
    try:
        data = storage.read_bytes(uri)
    except storage.ObjectNotFound:
        return None
    try:
        manifest: dict[str, Any] = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{uri}: not a valid manifest ({exc})") from None
    return manifest


def fetch_published(prefix: str, dest: Path) -> dict[str, Path]:
    """Download the committed run's artifacts, verifying each sha256; file name -> local path."""
    manifest = read_manifest(prefix)
    if manifest is None:
        raise storage.ObjectNotFound(f"{prefix}: nothing published (no {MANIFEST})")
    out = {}
    for entry in manifest["artifacts"]:
        artifact = Artifact.model_validate(entry)
        local = dest / artifact.uri.rsplit("/", 1)[1]
        storage.download(artifact.uri, local, artifact.sha256)
        out[local.name] = local
    return out
