"""Storage URIs: the schemes a job may name, and where a pvc:// claim is mounted.

Shared by the API (validation), the operator (it mounts the claims a job names) and the worker
(it reads and writes through those mounts), so the three can never disagree.
"""

from __future__ import annotations

from typing import Final

# Only schemes the worker can read and write: validation refuses the rest.
URI_SCHEMES: Final = ("s3", "gs", "az", "pvc", "file")
# A claim name is a Kubernetes object name (DNS subdomain).
_CLAIM = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
URI_PATTERN: Final = r"^((s3|gs|az)://[^/]+(/.*)?|pvc://" + _CLAIM + r"(/.*)?|file://.+)$"
URI_HINT: Final = (
    "expected a storage URI: s3://BUCKET/PATH, gs://BUCKET/PATH, az://CONTAINER/PATH, pvc://CLAIM/PATH "
    "(a PersistentVolumeClaim in the job's namespace) or file://PATH (local runs); hf:// is not served yet, "
    "copy the model folder to one of these"
)

# The operator mounts claim C at PVC_MOUNT_ROOT/C; a local `kompression run` maps pvc://C/... to
# $KOMPRESSION_PVC_ROOT/C/... instead.
PVC_MOUNT_ROOT: Final = "/mnt/pvc"
ENV_PVC_ROOT: Final = "KOMPRESSION_PVC_ROOT"


def pvc_claim(uri: str) -> str | None:
    """The claim a pvc:// URI names, or None for any other scheme."""
    if not uri.startswith("pvc://"):
        return None
    return uri[len("pvc://") :].split("/", 1)[0]
