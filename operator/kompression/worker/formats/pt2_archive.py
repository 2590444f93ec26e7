"""What a TorchExport ``.pt2`` archive may hold before ``torch.export.load`` is allowed to see it.

``torch.export.load`` is not a safe loader: depending on what a crafted archive contains it
- falls back to the pre-2.7 root layout (``serialized_*.pt`` at the archive root) when the
  current loader raises a RuntimeError or finds no model, and unpickles those files with a silent
  full-pickle retry;
- returns the bytes of legacy ``data/weights/<model>.pt`` and ``data/constants/<model>.pt`` files,
  which the deserializer unpickles with the same retry;
- unpickles payloads whose config says ``use_pickle`` with ``weights_only=False``, torchbind
  ``custom_obj_*`` constants with TorchScript's unpickler and ``opaque_obj_*`` constants with
  ``pickle.loads``;
- unpickles ``data/sample_inputs/<model>.pt`` with the full-pickle retry;
- loads the compiled shared libraries under ``data/aotinductor/``;
- evaluates every ``expr_str`` of the program with ``sympy.sympify`` (Python ``eval``) and compiles
  ``guards_code`` with ``exec`` when the module is built.

So an archive is accepted only when every entry is on an allow-list of the format the installed
torch's ``torch.export.save`` writes (one model named ``model``, raw tensor payloads), the sample
inputs load with ``weights_only=True`` (so torch's retry never happens), and every expression
string parses to plain arithmetic on allow-listed names. The check reads the archive both with
Python's zipfile (the legacy path's reader) and with torch's own reader, so the two cannot
disagree about what the archive holds.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError, RuntimeMissing

PICKLE_ADVICE = (
    "pickled checkpoints can run arbitrary code when loaded, so the worker refuses them; "
    "save the model with torch.export.save (format TorchExport) or its state dict with "
    "safetensors (format SafeTensors plus `architecture`)"
)
RESAVE = "re-save the model with torch.export.save from torch 2.9 or newer"

# The archive constants this check was written against. A torch whose loader uses other names
# has other branches, so the check refuses to vouch for it rather than guess.
EXPECTED_ARCHIVE_CONSTANTS = {
    "ARCHIVE_FORMAT_PATH": "archive_format",
    "ARCHIVE_FORMAT_VALUE": "pt2",
    "ARCHIVE_VERSION_PATH": "archive_version",
    "ARCHIVE_VERSION_VALUE": "0",
    "AOTINDUCTOR_DIR": "data/aotinductor/",
    "CONSTANTS_DIR": "data/constants/",
    "CONSTANTS_CONFIG_FILENAME_FORMAT": "data/constants/{}_constants_config.json",
    "CUSTOM_OBJ_FILENAME_PREFIX": "custom_obj_",
    "EXTRA_DIR": "extra/",
    "MODELS_DIR": "models/",
    "MODELS_FILENAME_FORMAT": "models/{}.json",
    "OPAQUE_OBJ_FILENAME_PREFIX": "opaque_obj_",
    "SAMPLE_INPUTS_FILENAME_FORMAT": "data/sample_inputs/{}.pt",
    "TENSOR_CONSTANT_FILENAME_PREFIX": "tensor_",
    "WEIGHTS_CONFIG_FILENAME_FORMAT": "data/weights/{}_weights_config.json",
    "WEIGHTS_DIR": "data/weights/",
    "WEIGHT_FILENAME_PREFIX": "weight_",
}

MODEL_NAME = "model"  # torch.export.save's name for the one program it writes
_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{MODEL_NAME}.json",
        f"data/sample_inputs/{MODEL_NAME}.pt",
        f"data/weights/{MODEL_NAME}_weights_config.json",
        f"data/constants/{MODEL_NAME}_constants_config.json",
    }
)
_REQUIRED_ENTRIES = _FIXED_ENTRIES - {"byteorder", ".data/version", ".data/serialization_id"}
_PAYLOAD = {"data/weights/": re.compile(r"weight_[0-9]{1,9}"), "data/constants/": re.compile(r"tensor_[0-9]{1,9}")}
_ROOT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_MAX_EXPRESSION = 4096  # characters of one expr_str or guard; real ones are a few dozen

# Graph operators that read files: a model may compute, not read the pod's secrets.
_FILE_READING_OPS = re.compile(r"(^|\.)from_file(\.|$)")


def installed_torch_supported() -> None:
    """RuntimeMissing unless the installed torch's archive loader is the one this check knows."""
    try:
        from torch.export.pt2_archive import constants  # absent from other torch releases
    except ImportError:
        raise RuntimeMissing(
            f"format TorchExport needs torch 2.9 or newer in the worker image (it has {torch.__version__}); "
            "older loaders unpickle weights, so the worker refuses to use them"
        ) from None
    actual = {name: getattr(constants, name, None) for name in EXPECTED_ARCHIVE_CONSTANTS}
    if actual != EXPECTED_ARCHIVE_CONSTANTS:
        changed = sorted(n for n in actual if actual[n] != EXPECTED_ARCHIVE_CONSTANTS[n])
        raise RuntimeMissing(
            f"format TorchExport: this worker's torch {torch.__version__} writes .pt2 archives differently "
            f"({', '.join(changed)}) from the layout its archive check knows; use a worker image whose "
            "torch the check supports"
        )


def vet_pt2_archive(path: Path, uri: str) -> None:
    """Refuse .pt2 archives that torch's loader would route to a pickle, compiled code or eval."""
    installed_torch_supported()
    try:
        _vet(path, uri)
    except (ModelError, RuntimeMissing):
        raise
    except Exception as exc:  # a malformed archive may fail anywhere: still a model problem
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(f"{uri}: unreadable TorchExport archive ({type(exc).__name__}: {text})") from None


def _vet(path: Path, uri: str) -> None:
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{uri}: not a TorchExport .pt2 archive (not a zip file); is spec.model.format right?")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if len(names) != len(set(names)):
        raise ModelError(f"{uri}: the .pt2 archive has duplicate entries; refusing an ambiguous archive")
    if not names:
        raise ModelError(f"{uri}: the .pt2 archive is empty")
    root = names[0].partition("/")[0]
    inner = _inner_names(names, root, uri)
    if "data.pkl" in inner:
        raise ModelError(f"{uri} is a torch.save() pickle, not a TorchExport archive: {PICKLE_ADVICE}")
    reader = torch._C.PyTorchFileReader(str(path))
    if set(reader.get_all_records()) != inner:
        raise ModelError(f"{uri}: torch and Python's zipfile read different entries from the archive; refusing it")
    for name in sorted(inner):
        _check_entry(name, uri)
    missing = sorted(_REQUIRED_ENTRIES - inner)
    if missing:
        raise ModelError(f"{uri}: the .pt2 archive lacks {', '.join(missing)}; was it made by torch.export.save?")

    def read(name: str) -> bytes:
        return bytes(reader.get_record(name))

    if (
        read("archive_format") != b"pt2"
        or read("archive_version") != EXPECTED_ARCHIVE_CONSTANTS["ARCHIVE_VERSION_VALUE"].encode()
    ):
        raise ModelError(f"{uri}: the .pt2 archive has an unknown format or version; {RESAVE}")
    for folder, config in (
        ("data/weights/", f"data/weights/{MODEL_NAME}_weights_config.json"),
        ("data/constants/", f"data/constants/{MODEL_NAME}_constants_config.json"),
    ):
        _check_payload_config(json.loads(read(config)), config, folder, inner, uri)
    _check_sample_inputs(read(f"data/sample_inputs/{MODEL_NAME}.pt"), uri)
    _check_program(json.loads(read(f"models/{MODEL_NAME}.json")), uri)


def _inner_names(names: list[str], root: str, uri: str) -> set[str]:
    if "/" not in names[0] or not _ROOT.fullmatch(root) or root in (".", ".."):
        legacy = any(n.startswith("serialized_") or n == "version" for n in names)
        raise ModelError(
            f"{uri}: "
            + (
                f"the legacy torch.export layout (files at the archive root), which torch unpickles; {RESAVE}"
                if legacy
                else "not a TorchExport .pt2 archive (its entries are not in one folder); was it made by "
                "torch.export.save?"
            )
        )
    inner = set()
    for name in names:
        head, sep, rest = name.partition("/")
        if head != root or not sep or not rest:
            raise ModelError(f"{uri}: entry {name!r} lies outside the archive's folder {root}/; refusing the archive")
        inner.add(rest)
    return inner


def _check_entry(name: str, uri: str) -> None:
    """Every entry must be on the allow-list; the others are refused with what torch would do."""
    if name in _FIXED_ENTRIES:
        return
    folder, _, file = name.rpartition("/")
    pattern = _PAYLOAD.get(folder + "/")
    if pattern is not None and pattern.fullmatch(file):
        return
    if name in (f"data/weights/{MODEL_NAME}.pt", f"data/constants/{MODEL_NAME}.pt") or (
        name.startswith(("data/weights/", "data/constants/")) and name.endswith(".pt")
    ):
        why = f"a legacy pickled {folder.rpartition('/')[2]} file, which torch unpickles; {RESAVE}"
    elif name.startswith("data/aotinductor/"):
        why = "AOTInductor compiled code, which torch loads as a shared library; compiled models are not accepted"
    elif file.startswith(("custom_obj_", "opaque_obj_")):
        why = f"a pickled custom object, which torch unpickles; {PICKLE_ADVICE}"
    elif name.startswith("models/"):
        why = f"a second program (torch.export.save writes only models/{MODEL_NAME}.json)"
    else:
        why = "not part of the archive format torch.export.save writes"
    raise ModelError(f"{uri}: entry {name}: {why}")


def _check_payload_config(config: Any, name: str, folder: str, inner: set[str], uri: str) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelError(f"{uri}: {name} is malformed (no `config` mapping)")
    pattern = _PAYLOAD[folder]
    for fqn, meta in entries.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise ModelError(
                f"{uri}: {name} stores {str(fqn)[:100]!r} as {str(path_name)[:100]!r}, not as a raw tensor "
                f"({pattern.pattern}); custom and pickled objects are refused: {PICKLE_ADVICE}"
            )
        if meta.get("use_pickle") is not False or not isinstance(meta.get("tensor_meta"), dict):
            raise ModelError(f"{uri}: {name} stores {str(fqn)[:100]!r} pickled, which torch unpickles; {PICKLE_ADVICE}")
        if folder + path_name not in inner:
            raise ModelError(f"{uri}: {name} names {path_name}, which the archive lacks")


def _check_sample_inputs(data: bytes, uri: str) -> None:
    """torch retries a failed weights_only load of these with full pickle: it must not fail."""
    try:
        loaded = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{uri}: the archive's sample inputs are a pickle that needs more than weights_only loading "
            f"({type(exc).__name__}); {PICKLE_ADVICE}"
        ) from None
    if not isinstance(loaded, (tuple, dict)):
        raise ModelError(f"{uri}: the archive's sample inputs are a {type(loaded).__name__}, not a tuple")


def _check_program(program: Any, uri: str) -> None:
    if not isinstance(program, dict):
        raise ModelError(f"{uri}: models/{MODEL_NAME}.json is not a serialized ExportedProgram")
    for key, value in _strings(program):
        if key == "expr_str":
            _check_expression(value, _sympy_name_ok, uri, "a shape expression")
        elif key == "target" and _FILE_READING_OPS.search(value):
            raise ModelError(f"{uri}: the graph calls {value[:100]}, which reads files; models may not read files")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) for g in guards):
        raise ModelError(f"{uri}: models/{MODEL_NAME}.json has malformed guards_code")
    for guard in guards:
        _check_expression(guard, _guard_name_ok, uri, "a guard")


def _strings(node: Any) -> Iterator[tuple[str, str]]:
    """(key, value) of every string value under a mapping key, iteratively (no recursion limit)."""
    stack: list[tuple[str, Any]] = [("", node)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((str(k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v) for v in value)
        elif isinstance(value, str):
            yield key, value


# --------------------------------------------------------------------------------------------
# expression strings: torch evaluates them, so they must be arithmetic on known names

_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]{1,9}")  # shape symbols: s0, s77, u3, ps1, zuf0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SAFE_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_SAFE_BUILTINS = frozenset({"abs", "min", "max", "int", "float", "bool", "round", "inf"})
_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.keyword,
    ast.Name,
    ast.Constant,
    ast.Subscript,
    ast.Tuple,
    ast.Attribute,
    ast.Load,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


@functools.cache
def _sympy_classes() -> frozenset[str]:
    """Names of sympy's and torch's sympy classes: constructing them is arithmetic, not code."""
    # slow to import: only when an archive is vetted
    import sympy
    from torch.utils._sympy import functions, numbers

    names = set()
    for module in (sympy, functions, numbers):
        for name in dir(module):
            obj = getattr(module, name)
            is_class = isinstance(obj, type) and issubclass(obj, sympy.Basic)
            if not name.startswith("_") and (is_class or isinstance(obj, sympy.Basic)):
                names.add(name)
    return frozenset(names)


def _sympy_name_ok(name: str) -> bool:
    return name in _sympy_classes() or bool(_SYMBOL.fullmatch(name))


def _guard_name_ok(name: str) -> bool:
    # The guard namespace is sympy's printer helpers plus math and torch; attribute access is
    # checked separately, so torch itself is never reachable from a name.
    return (
        name in ("L", "math")
        or name in _SAFE_BUILTINS
        or name
        in (
            "IsNonOverlappingAndDenseIndicator",
            "cast_symbool_to_symint_guardless",
        )
    )


def _check_expression(text: str, name_ok: Callable[[str], bool], uri: str, what: str) -> None:
    def refuse(detail: str) -> ModelError:
        return ModelError(
            f"{uri}: the program holds {what} that torch would evaluate as Python and that is not plain "
            f"arithmetic ({detail}); refusing the archive"
        )

    if len(text) > _MAX_EXPRESSION:
        raise refuse(f"{len(text)} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise refuse("not a Python expression") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise refuse(type(node).__name__)
        if isinstance(node, ast.Name) and not name_ok(node.id):
            raise refuse(f"name {node.id[:64]!r}")
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _IDENTIFIER.fullmatch(value):
                raise refuse("a string constant")
            if not isinstance(value, (int, float, str, type(None))):
                raise refuse(f"a {type(value).__name__} constant")
        if isinstance(node, ast.Attribute) and not _attribute_ok(node, name_ok):
            raise refuse(f"attribute {node.attr[:64]!r}")
        if isinstance(node, ast.Call) and not isinstance(node.func, (ast.Name, ast.Attribute)):
            raise refuse("a computed call")
        if isinstance(node, ast.keyword) and (node.arg is None or not _IDENTIFIER.fullmatch(node.arg)):
            raise refuse("keyword unpacking")


def _attribute_ok(node: ast.Attribute, name_ok: Callable[[str], bool]) -> bool:
    if node.attr.startswith("_"):
        return False
    if isinstance(node.value, ast.Name) and node.value.id == "math":
        return name_ok("math")  # math.floor, math.inf ...: the math module has no escape hatches
    return node.attr in _SAFE_METHODS and name_ok("L")  # L['x'].size() in guards only


def reject_pickle_checkpoint(source: ModelSource, path: Path) -> None:
    """A torch.save() file offered as some other format gets a precise explanation."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any(n.endswith("/data.pkl") or n == "data.pkl" for n in zf.namelist()):
                raise ModelError(f"{source.uri} is a torch.save() pickle, not {source.format}: {PICKLE_ADVICE}")
