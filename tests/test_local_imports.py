"""Imports sit at the top of a module. A function-local import is allowed only for an optional or
slow dependency, and says why in a comment on it or on the comment lines just above its group;
none may hide an import cycle (import-linter's layers contracts forbid the upward imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "kompression"


def _explained(lines: list[str], lineno: int) -> bool:
    index = lineno - 1
    if "#" in lines[index]:
        return True
    index -= 1
    while index >= 0 and lines[index].strip().startswith(("from ", "import ", "#", "try:")):
        if lines[index].strip().startswith("#"):
            return True
        index -= 1
    return False


def unexplained_local_imports() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _explained(lines, node.lineno):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_every_function_local_import_says_why() -> None:
    assert unexplained_local_imports() == []
