"""Deterministic names for the children of a CompressionJob.

kopf.adopt's default is generateName, which would make a second Job after a crash between create
and record. A name derived from the CR alone lets AlreadyExists prove the Job was already made.
"""

from __future__ import annotations

import hashlib

# A Job's name becomes its pods' `job-name` label value and the prefix of their names (plus a
# 5-character suffix and a dash), so it must stay a valid label value: at most 63 characters.
MAX_JOB_NAME = 63
CONFIGMAP_SUFFIX = "-job"
PLANNING_SUFFIX = "-plan"
MAX_OBJECT_NAME = 253
_HASH_LEN = 8


def _fit(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]
    head = name[: limit - _HASH_LEN - 1].rstrip("-.")
    return f"{head}-{digest}"


def job_name(cr_name: str) -> str:
    """The batch/v1 Job's name: the CR's name, truncated and hashed when too long."""
    return _fit(cr_name, MAX_JOB_NAME)


def planning_job_name(cr_name: str) -> str:
    """The Job that plans an LLM job's memory before its worker Job is made."""
    return _fit(cr_name + PLANNING_SUFFIX, MAX_JOB_NAME)


def configmap_name(cr_name: str) -> str:
    """The ConfigMap holding the worker's copy of the manifest."""
    return _fit(cr_name + CONFIGMAP_SUFFIX, MAX_OBJECT_NAME)


def label_value(name: str) -> str:
    """An object name as a label value (at most 63 characters), hashed when longer."""
    return _fit(name, MAX_JOB_NAME)


def trial_name(sweep_name: str, suffix: str) -> str:
    """The CompressionJob of one trial of a sweep: the sweep's name and the trial's suffix."""
    return _fit(f"{sweep_name}-{suffix}", MAX_OBJECT_NAME)
