"""Commands of the worker, registered on the kompression CLI."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Add this package's subcommands."""
    del sub


def _unused(_: argparse.Namespace) -> int:
    return 0
