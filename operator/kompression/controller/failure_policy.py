"""Failure policy: which worker exits end the Job at once, and how a failure is named. Both are
read off the failure table (api/failures.py).

The podFailurePolicy lets the Job controller, not the operator, fail on a permanent exit code, so
the decision holds while the operator is down. Disruptions (eviction, preemption, node drain) are
ignored so that they do not burn the retry budget.
"""

from __future__ import annotations

from typing import Any

from kompression.api import failures

WORKER_CONTAINER = "worker"

# Worker exit code -> condition reason, for the codes that name a failure (all but exit 1).
EXIT_REASONS: dict[int, str] = {
    f.exit_code: f.reason for f in failures.FAILURES if failures.by_exit_code(f.exit_code) is not None
}


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": WORKER_CONTAINER,
                    "operator": "In",
                    "values": list(failures.PERMANENT_EXIT_CODES),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }
