"""The requirements of one of pyproject.toml's extras, with the project's own, one per line: what
an image's dependency stage installs before (and apart from) Kompression itself, so that stage is
rebuilt only when pyproject.toml changes.

Usage: python extra-requirements.py PYPROJECT.toml EXTRA > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib


def main(pyproject: str, extra: str) -> int:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        print(f"no extra {extra!r} in {pyproject}; it has: {', '.join(sorted(extras))}", file=sys.stderr)
        return 2
    for requirement in [*project.get("dependencies", []), *extras[extra]]:
        print(requirement)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
