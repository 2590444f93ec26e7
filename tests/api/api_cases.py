"""The example and invalid manifests shared by the CLI tests and the API-server tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The CompressionJob examples (examples/ also holds CompressionSweeps, which tests/worker/test_sweep.py runs).
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if "\nkind: CompressionJob\n" in p.read_text())
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_field(path: Path) -> str:
    """The field path an invalid manifest's error must name (its `# expect-field:` header)."""
    match = re.search(r"^# expect-field: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} lacks an expect-field header"
    return match.group(1)
