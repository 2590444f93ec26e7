"""Atomic publication of a run's files under the output prefix, safe with concurrent publishers.

Layout under ``<prefix>``::

    runs/<run-id>/<artifacts...>   every file of one run (models, report.json, report.md, plots)
    manifest.json                  written LAST: the run id and every artifact's URI, sha256, size
    rejected/...                   the same layout, for a model that failed a gate
    checkpoints/<digest>/<step>/   training checkpoints while a run is in flight (removed at the end)

A reader starts from ``manifest.json``. It is a single object written in one PUT (or a local
rename), so it either names a complete earlier run or a complete new one, never a mix: the run
folder it points to was fully written before the manifest. Nothing is written under the prefix
before the run has a result, so bad input leaves it untouched.

Two publishers may share a prefix (a rerun racing its predecessor, two jobs pointed at one
place). The manifest is therefore replaced by compare-and-swap: read with its version (an S3
ETag; a digest under a file lock locally), write with ``If-Match`` (``If-None-Match: *`` for the
first), and on a lost race read the winner's manifest and go on top of it. Each manifest records
the run it replaced (``previousRunId``), and cleanup deletes only

- the run that the replaced manifest had itself replaced: superseded twice, so no manifest that
  is current or was current a moment ago names it; and
- runs that no manifest names, once they are older than ``ABANDONED_AFTER`` (a crashed run).

A run another publisher is still uploading is named by no manifest yet and is young, so it is
never deleted under it; that holds even on a store that ignores conditional writes. On file://
prefixes every path is confined to the prefix: a symbolic link leading out is refused.

Whatever sits at ``manifest.json`` is validated on every read (``api.manifest.Manifest``): one that
is not a manifest fails with DataError, naming the key and what is wrong. ``check_prefix`` does
that read when a run starts, so such a prefix fails before any compute and before any upload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kompression.api.manifest import MANIFEST_VERSION, Manifest
from kompression.api.v1alpha1 import Artifact, ArtifactKind
from kompression.worker.errors import DataError, StorageError, StorageRefused
from kompression.worker.storage import objects
from kompression.worker.storage.retry import UNSUPPORTED_CODES

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUNS = "runs"
REJECTED = "rejected"
RUN_ID_TIME = "%Y%m%dT%H%M%SZ"
# A run no manifest names is deleted only after this long: until then it may be another
# publisher's upload in progress (uploads start when the run has its result, so they are short).
ABANDONED_AFTER = timedelta(hours=24)
COMMIT_ATTEMPTS = 8


def new_run_id() -> str:
    return datetime.now(UTC).strftime(RUN_ID_TIME) + "-" + secrets.token_hex(4)


def run_started(run_id: str) -> datetime | None:
    """When a run began, from its id; None for a folder this code did not name."""
    try:
        return datetime.strptime(run_id.split("-", 1)[0], RUN_ID_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass
class Publisher:
    """Uploads one run's artifacts under <prefix>/runs/<run-id>/, then commits the manifest."""

    prefix: str
    run_id: str = field(default_factory=new_run_id)
    artifacts: list[Artifact] = field(default_factory=list)

    @property
    def run_prefix(self) -> str:
        return objects.join(self.prefix, RUNS, self.run_id)

    def add(self, local: Path, name: str, kind: ArtifactKind, relpath: str | None = None) -> Artifact:
        uri = objects.join(self.run_prefix, relpath or local.name)
        objects.confine(self.prefix, uri)
        digest = objects.upload(local, uri)
        artifact = Artifact(name=name, kind=kind, uri=uri, sha256=digest, sizeBytes=local.stat().st_size)
        self.artifacts.append(artifact)
        return artifact

    def commit(self, metadata: dict[str, Any]) -> Artifact:
        """Swap in the manifest (the commit point), then delete runs nobody can still need."""
        uri = objects.join(self.prefix, MANIFEST)
        objects.confine(self.prefix, uri)
        with objects.publish_lock(self.prefix):
            previous, body, digest = self._swap(uri, metadata)
            self._prune(previous)
        return Artifact(name="manifest", kind="Manifest", uri=uri, sha256=digest, sizeBytes=len(body))

    def _swap(self, uri: str, metadata: dict[str, Any]) -> tuple[dict[str, Any] | None, bytes, str]:
        """Write the manifest on top of the one read just before, re-reading after a lost race."""
        for _ in range(COMMIT_ATTEMPTS):
            previous, version = _read_versioned(uri)
            manifest = {
                "version": MANIFEST_VERSION,
                "runId": self.run_id,
                "previousRunId": previous.get("runId") if previous else None,
                "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                **metadata,
                "artifacts": [a.to_wire() for a in self.artifacts],
            }
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            try:
                digest = objects.write_if(body, uri, version, exists=previous is not None)
            except objects.WriteConflict:
                # Someone committed between our read and write, or our own earlier attempt landed
                # and only its answer was lost: read again and look.
                landed, _ = _read_versioned(uri)
                if landed is not None and landed.get("runId") == self.run_id:
                    return None, json.dumps(landed, indent=2, sort_keys=True).encode(), _digest(landed)
                continue
            except StorageRefused as exc:
                if exc.code not in UNSUPPORTED_CODES:
                    raise
                log.warning("%s: the store refuses conditional writes (%s); writing unconditionally", uri, exc.code)
                digest = objects.write_bytes(body, uri)
            return previous, body, digest
        raise StorageError(
            f"{uri}: the manifest changed {COMMIT_ATTEMPTS} times while this run tried to commit; "
            "several publishers write to this output prefix at once. Give each job its own spec.output.uri"
        )

    def _prune(self, previous: dict[str, Any] | None) -> None:
        runs = objects.join(self.prefix, RUNS)
        objects.confine(self.prefix, runs)
        keep = {self.run_id, previous.get("runId") if previous else None}
        retired = previous.get("previousRunId") if previous else None
        cutoff = datetime.now(UTC) - ABANDONED_AFTER
        for run_id in sorted({rel.split("/", 1)[0] for rel in objects.list_files(runs)} - keep):
            started = run_started(run_id)
            if run_id != retired and (started is None or started > cutoff):
                continue  # maybe another publisher's upload in progress, or not ours at all
            target = objects.join(runs, run_id)
            try:
                objects.confine(self.prefix, target)
            except StorageRefused as exc:
                log.warning("not deleting %s: %s", target, exc)
                continue
            objects.remove(target)


def _digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, indent=2, sort_keys=True).encode()).hexdigest()


def _read_versioned(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data, version = objects.read_versioned(uri)
    except objects.ObjectNotFound:
        return None, None
    return _parse(uri, data), version


def _parse(uri: str, data: bytes) -> dict[str, Any]:
    """The manifest's fields, once they have the types of Manifest; DataError naming what is wrong."""
    try:
        Manifest.model_validate_json(data, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'the document'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise DataError(
            f"{uri}: not a Kompression manifest ({problems}). The publisher builds on the manifest at the "
            "output prefix and would fail after all the compute; remove this object (or the folder it is in), "
            "or choose another spec.output.uri"
        ) from None
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def read_manifest(prefix: str) -> dict[str, Any] | None:
    """The committed manifest under prefix, or None when nothing was ever published there."""
    manifest, _ = _read_versioned(objects.join(prefix, MANIFEST))
    return manifest


def check_prefix(prefix: str) -> None:
    """Refuse a pvc:// prefix reached through a link (StorageRefused), and read and validate the
    manifests a run would build on (the prefix's and rejected/'s), so that one the publisher could
    not use fails now, before any compute (DataError)."""
    objects.refuse_aliased_claim_path(prefix)
    for target in (prefix, objects.join(prefix, REJECTED)):
        read_manifest(target)


def fetch_published(prefix: str, dest: Path) -> dict[str, Path]:
    """Download the committed run's artifacts, verifying each one's sha256 and size; path relative
    to the run's folder (``report.json``, ``model/config.json``) -> local path under dest.

    Every artifact must be one file inside the run's folder: a URI elsewhere, or one that names a
    folder (whose files no digest covers), is refused."""
    manifest = read_manifest(prefix)
    if manifest is None:
        raise objects.ObjectNotFound(f"{prefix}: nothing published (no {MANIFEST})")
    run = objects.parse_uri(objects.join(prefix, RUNS, manifest["runId"]))
    out = {}
    for entry in manifest["artifacts"]:
        artifact = Artifact.model_validate(entry)
        where = objects.parse_uri(artifact.uri)
        if where.protocol != run.protocol or not where.path.startswith(run.path.rstrip("/") + "/"):
            raise StorageError(f"{artifact.uri}: the manifest names a file outside its run's folder {run.uri}/")
        relative = where.path[len(run.path.rstrip("/")) + 1 :]
        local = dest.joinpath(*objects.check_key(artifact.uri, relative))
        objects.download(artifact.uri, local, artifact.sha256)
        if local.stat().st_size != artifact.sizeBytes:
            raise StorageError(f"{artifact.uri}: {local.stat().st_size} bytes, the manifest says {artifact.sizeBytes}")
        out[relative] = local
    return out
