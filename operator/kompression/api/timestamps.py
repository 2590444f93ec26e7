"""Timestamps as the Kubernetes API writes them (RFC 3339, UTC, whole seconds): the worker's status and the
controller's conditions and Events use the same clock format."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
