"""Where an LLM step's time goes: seconds per phase (loading, calibrating, saving, scoring), which
report.json records in the step's notes, so that a slow run says which part was slow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """Wall-clock seconds per named phase, summed when a phase runs more than once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 3)
