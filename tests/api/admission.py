"""A job through a real API server's admission without storing it: the one dry-run create the API tests
compare their verdicts with."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiException


@dataclass(frozen=True)
class Refusal:
    """The API server's answer to a job it refused as invalid: the HTTP status and the Status body."""

    status: int
    body: str

    @property
    def causes(self) -> list[dict[str, Any]]:
        """A 422's details.causes: one entry per field the CRD's schema or CEL rules refused."""
        causes: list[dict[str, Any]] = json.loads(self.body)["details"]["causes"]
        return causes


# dry_run(manifest, namespace="default"): None when the server admits the job.
DryRun = Callable[..., Refusal | None]


def dry_run_create(kube: Any, manifest: dict[str, Any], namespace: str = "default") -> Refusal | None:
    """A server-side dry-run create with strict field validation, as `kubectl create` sends it: the
    whole admission chain (defaulting, then the CEL rules), nothing stored. None when the server admits
    the job, its Refusal when it refuses it as invalid (400 or 422); any other answer raises."""
    path = f"/apis/kompression.dev/v1alpha1/namespaces/{namespace}/compressionjobs?dryRun=All&fieldValidation=Strict"
    try:
        kube.request("POST", path, manifest)
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return Refusal(exc.status, str(exc.reason))
    return None
