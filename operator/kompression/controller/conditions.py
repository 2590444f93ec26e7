"""Conditions in the Kubernetes API conventions, with kstatus semantics.

Ready is False (never absent) while work is in flight, Reconciling and Stalled are abnormal-true,
and Succeeded/Failed appear once the job ends, so `kubectl wait --for=condition=Succeeded` and
Argo CD / Flux health checks read the same truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kompression.api.constants import COND_FAILED, COND_READY, COND_RECONCILING, COND_STALLED, COND_SUCCEEDED
from kompression.api.v1alpha1 import Condition

TERMINAL_PHASES = ("Succeeded", "Failed")
# Reasons of an LLM job's memory plan, made by a planning Job before the worker Job exists.
PLANNING = "Planning"  # the planning Job runs
MEMORY_PLANNED = "MemoryPlanned"  # the plan is recorded in status.memoryPlan
RESOURCES_TOO_SMALL = "ResourcesTooSmall"  # spec.resources cannot hold the plan: refused
OWNED_CONDITIONS = frozenset({COND_READY, COND_RECONCILING, COND_STALLED, COND_SUCCEEDED, COND_FAILED})


@dataclass(frozen=True)
class Observation:
    """What the operator concluded about one CompressionJob: the input to its conditions."""

    phase: str
    reason: str  # one CamelCase word
    message: str
    stalled: bool = False  # needs a human: a conflict, an invalid spec, a failure


def desired_conditions(obs: Observation, generation: int) -> list[Condition]:
    def cond(type_: str, status: bool, reason: str, message: str) -> Condition:
        return Condition(
            type=type_,
            status="True" if status else "False",
            reason=reason,
            message=message,
            observedGeneration=generation,
        )

    done = obs.phase in TERMINAL_PHASES
    succeeded = obs.phase == "Succeeded"
    conds = [
        cond(COND_READY, succeeded, obs.reason, obs.message),
        cond(COND_RECONCILING, not done and not obs.stalled, obs.reason if not done else "Finished", obs.message),
        cond(
            COND_STALLED, obs.stalled, obs.reason if obs.stalled else "AsExpected", obs.message if obs.stalled else ""
        ),
    ]
    if done:
        conds.append(cond(COND_SUCCEEDED, succeeded, obs.reason, obs.message))
        conds.append(cond(COND_FAILED, not succeeded, obs.reason, obs.message))
    return conds


def merge_conditions(old: list[dict[str, Any]], new: list[Condition], now: str) -> list[dict[str, Any]]:
    """The new conditions, keeping lastTransitionTime where a condition's status did not change.

    Condition types the operator does not own (another controller's, a policy engine's) are kept
    as they are: the list is written whole, so dropping them would erase someone else's write.
    """
    previous = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    for c in new:
        before = previous.get(c.type)
        changed = before is None or before.get("status") != c.status
        stamp = now if changed or not before else before.get("lastTransitionTime") or now
        merged.append(c.model_copy(update={"lastTransitionTime": stamp}).to_wire())
    merged += [dict(c) for c in old if c.get("type") not in OWNED_CONDITIONS]
    return merged


def same_conditions(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal but for lastTransitionTime (which merge_conditions keeps stable anyway)."""

    def key(conds: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted(
            (c.get("type"), c.get("status"), c.get("reason"), c.get("message"), c.get("observedGeneration"))
            for c in conds
        )

    return key(a) == key(b)


def ready_reason(status: dict[str, Any]) -> str | None:
    """The reason of a status's Ready condition."""
    for c in status.get("conditions") or ():
        if c.get("type") == COND_READY:
            reason = c.get("reason")
            return str(reason) if reason is not None else None
    return None
