"""Queueing policy: how many GPU Jobs may be in flight, and who goes next. Pure.

Limits are global and per namespace (operator settings; 0 = none). Waiting jobs are ordered by
priority (their PriorityClass's value, 0 without one), then by creation time, then by name so
that the order is total and the same on every replica. A waiting job blocked only by its own
namespace's limit does not hold back jobs from other namespaces. CPU-only jobs never wait.
"""

from __future__ import annotations

from dataclasses import dataclass

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Candidate:
    namespace: str
    name: str
    created: str  # RFC 3339: sorts chronologically as text
    priority: int = 0
    gpus: int = 1

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Limits:
    total: int = 0
    per_namespace: int = 0

    def allows(self, total: int, in_namespace: int) -> bool:
        return (self.total <= 0 or total < self.total) and (
            self.per_namespace <= 0 or in_namespace < self.per_namespace
        )


@dataclass(frozen=True)
class Decision:
    admitted: frozenset[Key]
    positions: dict[Key, int]  # 1 = next in line


def order(waiting: list[Candidate]) -> list[Candidate]:
    return sorted(waiting, key=lambda c: (-c.priority, c.created, c.namespace, c.name))


def decide(waiting: list[Candidate], in_flight: dict[str, int], limits: Limits) -> Decision:
    """Admit whoever fits, in order; number the rest."""
    per_ns = dict(in_flight)
    total = sum(per_ns.values())
    admitted: set[Key] = set()
    positions: dict[Key, int] = {}
    for cand in order(waiting):
        if cand.gpus <= 0:
            admitted.add(cand.key)
        elif limits.allows(total, per_ns.get(cand.namespace, 0)):
            admitted.add(cand.key)
            total += 1
            per_ns[cand.namespace] = per_ns.get(cand.namespace, 0) + 1
        else:
            positions[cand.key] = len(positions) + 1
    return Decision(frozenset(admitted), positions)
