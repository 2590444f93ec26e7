"""Output prefixes: at most one live CompressionJob publishes to a prefix in a namespace. Pure.

The worker's publication survives two publishers on one prefix (the manifest is swapped by
compare-and-swap and no run a live manifest could name is deleted), but the two would still
replace each other's result. So a job whose spec.output.uri equals, contains or lies inside the
prefix of another live job waits, Stalled with reason ``OutputPrefixInUse`` and an Event, until
that job finishes or is deleted. The holder is the job that already has a worker Job, else the
oldest (then the first by name), so every replica and every reconcile picks the same one.

Only jobs of the same namespace are compared: naming another namespace's job and bucket in a
condition would leak one tenant's work to another. Tenants are kept apart by their credentials.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

REASON = "OutputPrefixInUse"


def prefix_key(uri: str) -> str:
    """A comparable form of an output prefix: lower-case scheme, no empty or `.` segments, each `..`
    resolved against the segment before it (never above the bucket or claim), one final slash.

    Validation refuses `.`, `..` and empty segments; a job stored before that rule still compares
    as the folder it names. A symbolic link inside a claim is invisible here: the worker refuses to
    publish through one."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    root, *path = [s for s in rest.split("/") if s not in ("", ".")] or [""]
    segments: list[str] = []
    for segment in path:
        if segment != "..":
            segments.append(segment)
        elif segments:
            segments.pop()
    return f"{scheme.lower()}://{'/'.join([root, *segments])}/"


def overlaps(a: str, b: str) -> bool:
    """Whether one prefix is the other or lies inside it (then one job's cleanup sees the other's files)."""
    ka, kb = prefix_key(a), prefix_key(b)
    return ka.startswith(kb) or kb.startswith(ka)


@dataclass(frozen=True)
class Claim:
    """A live job of the namespace and the prefix it publishes to."""

    name: str
    uri: str
    created: str  # RFC 3339: sorts chronologically as text
    started: bool  # it has a worker Job (or a reserved slot): it holds its prefix whatever its age

    @property
    def order(self) -> tuple[str, str]:
        return (self.created, self.name)


def holder(me: Claim, others: Iterable[Claim]) -> Claim | None:
    """The live job that keeps `me` from starting, or None when `me` may publish."""
    rivals = [o for o in others if o.name != me.name and overlaps(o.uri, me.uri)]
    started = [o for o in rivals if o.started]
    if started:
        return min(started, key=lambda c: c.order)
    earlier = [o for o in rivals if o.order < me.order]
    return min(earlier, key=lambda c: c.order) if earlier else None


def message(me: str, uri: str, held_by: Claim) -> str:
    return (
        f"CompressionJob {held_by.name} is still publishing to {held_by.uri}, which overlaps "
        f"spec.output.uri {uri}; {me} starts when {held_by.name} finishes or is deleted. "
        "Give each job its own output prefix to run them side by side"
    )
