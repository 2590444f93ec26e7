"""Labels and owner references shared by every child of a CompressionJob."""

from __future__ import annotations

from typing import Any

from kompression.api.constants import (
    API_VERSION,
    KIND,
    LABEL_COMPONENT,
    LABEL_JOB_NAME,
    LABEL_JOB_UID,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
)
from kompression.controller.naming import job_name

MANAGED_BY = "kompression-operator"
# The selector the operator watches children with: nothing it did not make.
MANAGED_SELECTOR = {LABEL_MANAGED_BY: MANAGED_BY}


def child_labels(cr_name: str, uid: str) -> dict[str, str]:
    # job-name carries the (possibly hashed) Job name because label values stop at 63 characters;
    # the owner lookup goes through the ownerReference, not this label.
    return {
        LABEL_JOB_NAME: job_name(cr_name),
        LABEL_JOB_UID: uid,
        LABEL_COMPONENT: "worker",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "kompression",
    }


def owner_reference(cr_name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": cr_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The uid of the CompressionJob that controls `obj`, if one does."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion", "").startswith("kompression.dev/")
        ):
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def owner_name(obj: dict[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == KIND:
            name = ref.get("name")
            return str(name) if name else None
    return None
