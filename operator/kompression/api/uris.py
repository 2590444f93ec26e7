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
# No `.` or `..` segment and no empty one (`//`) after the scheme: `pvc://claim/x/../out/`,
# `pvc://claim/./out/` and `pvc://claim//out/` are one folder spelled four ways, which would let two
# jobs publish to one folder past the operator's one-job-per-prefix check, and a `..` could walk out
# of a claim. An unanchored regular expression (CEL's matches() and Python's re.search alike);
# `[.]` spares the escaping of a dot through Python, CEL and YAML.
URI_DOT_SEGMENT_PATTERN: Final = r"^[a-z0-9]+://(.*/)?[.][.]?(/|$)|^[a-z0-9]+://.+//"
URI_DOT_SEGMENT_HINT: Final = (
    "a storage URI may not hold `.` or `..` path segments or an empty one (`//`): write the folder's "
    "plain path, e.g. pvc://CLAIM/out/ instead of pvc://CLAIM/x/../out/"
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
