"""The example and invalid manifests shared by the CLI tests and the API-server tests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_field(path: Path) -> str:
    """The field path an invalid manifest's error must name (its `# expect-field:` header)."""
    match = re.search(r"^# expect-field: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} lacks an expect-field header"
    return match.group(1)
