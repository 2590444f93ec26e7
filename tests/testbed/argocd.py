"""Run deploy/argocd/health.lua the way Argo CD does: `obj` is the live object, the chunk returns hs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HEALTH_LUA = REPO / "deploy" / "argocd" / "health.lua"
LUA = "lua5.4"  # Debian package lua5.4


def lua_literal(value: Any) -> str:
    """A Lua table constructor for a JSON-like value."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(f"\\{ord(ch):03d}" if ch in '"\\\n' or ord(ch) < 32 else ch for ch in value) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua form for {type(value).__name__}")


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) that the health check gives `obj`."""
    interpreter = shutil.which(LUA)
    if interpreter is None:
        raise RuntimeError(f"{LUA} not found: apt-get install -y lua5.4")
    script = (
        f"obj = {lua_literal(obj)}\n"
        f"local hs = assert(loadfile({lua_literal(str(HEALTH_LUA))}))()\n"
        'io.write(hs.status, "\\n", hs.message or "")\n'
    )
    proc = subprocess.run([interpreter, "-"], input=script, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{LUA} failed on the health check: {proc.stderr.strip()}")
    status, _, message = proc.stdout.partition("\n")
    return status, message
