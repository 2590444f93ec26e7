"""Kubernetes Events on a CompressionJob, in words, posted through the operator's API client."""

from __future__ import annotations

import logging
import socket
from typing import Any

from kompression.api.constants import API_VERSION, KIND
from kompression.api.timestamps import now
from kompression.controller.kubeapi import Api, ApiError, path

log = logging.getLogger(__name__)
COMPONENT = "kompression-operator"


def build_event(cr: dict[str, Any], type_: str, reason: str, message: str, stamp: str) -> dict[str, Any]:
    meta = cr["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_event(api: Api, cr: dict[str, Any], type_: str, reason: str, message: str) -> None:
    # An Event is advice, not state: losing one must not fail or repeat a reconcile.
    try:
        await api.create(
            path("", "v1", "events", namespace=cr["metadata"]["namespace"]),
            build_event(cr, type_, reason, message, now()),
        )
    except (ApiError, OSError) as exc:
        log.warning("could not post event %s on %s: %s", reason, cr["metadata"].get("name"), exc)
