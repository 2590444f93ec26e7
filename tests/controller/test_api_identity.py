"""The controller names its resource and labels through the API package, never by literal."""

from __future__ import annotations

import ast
from pathlib import Path

from kompression.api import constants

CONTROLLER = Path(__file__).resolve().parents[2] / "operator" / "kompression" / "controller"


def test_no_controller_module_spells_out_the_api_group_version_or_plural() -> None:
    identity = (constants.GROUP, constants.VERSION, constants.PLURAL, constants.API_VERSION, f"{constants.GROUP}/")
    found = [
        f"{source.name}:{node.lineno} {node.value!r}"
        for source in CONTROLLER.glob("*.py")
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(identity)
    ]
    assert not found, found
