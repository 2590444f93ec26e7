"""Labels and owner references shared by every child of a CompressionJob."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kompression.api.constants import (
    API_VERSION,
    GROUP,
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


# The component of the Job that plans an LLM job's memory before its worker Job is made: kept
# apart from the worker Job everywhere (the GPU queue, Kueue, the progress channel, the status).
COMPONENT_WORKER = "worker"
COMPONENT_PLANNER = "memory-planner"


def child_labels(cr_name: str, uid: str, component: str = COMPONENT_WORKER) -> dict[str, str]:
    # job-name carries the (possibly hashed) Job name because label values stop at 63 characters;
    # the owner lookup goes through the ownerReference, not this label.
    return {
        LABEL_JOB_NAME: job_name(cr_name),
        LABEL_JOB_UID: uid,
        LABEL_COMPONENT: component,
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


@dataclass(frozen=True)
class OwnerRef:
    """An object's controller ownerReference: what the operator reads of it."""

    api_version: str
    kind: str
    name: str | None
    uid: str | None

    @property
    def is_compressionjob(self) -> bool:
        return self.kind == KIND and self.api_version.partition("/")[0] == GROUP


def controller_ref(obj: Mapping[str, Any], kind: str) -> OwnerRef | None:
    """The ownerReference of the `kind` that controls `obj` (Kubernetes allows one controller)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == kind:
            name, uid = ref.get("name"), ref.get("uid")
            return OwnerRef(
                str(ref.get("apiVersion") or ""), kind, str(name) if name else None, str(uid) if uid else None
            )
    return None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the CompressionJob that controls `obj`, if one does."""
    ref = controller_ref(obj, KIND)
    return ref.uid if ref is not None and ref.is_compressionjob else None


def owner_name(obj: Mapping[str, Any]) -> str | None:
    """The name of the CompressionJob that controls `obj`."""
    ref = controller_ref(obj, KIND)
    return ref.name if ref is not None else None


def is_planner(obj: Mapping[str, Any]) -> bool:
    """Whether `obj` is a memory-planning Job (not the worker Job)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT) == COMPONENT_PLANNER
