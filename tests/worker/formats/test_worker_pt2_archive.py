"""Crafted .pt2 archives: one per branch of torch.export.load that runs, loads or evaluates what a
file says, each refused before torch sees it.

The branches are those of the installed torch's loader (torch/export/__init__.py load,
torch/export/pt2_archive/_package.py load_pt2, torch/_export/serde/serialize.py,
torch/export/_unlift.py). Where the payload can run, a first test shows that torch itself runs
it (so the test would notice a torch whose loader changed), and a second that the worker refuses
the archive without running it.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kompression.api.constants import ExitCode
from kompression.api.v1alpha1 import ModelSource
from kompression.worker.errors import ModelError
from kompression.worker.formats import loader, pt2_archive

Entries = dict[str, bytes]


class Linear4(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("offset", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x) + self.offset
        return out


@pytest.fixture(scope="module")
def good_entries(tmp_path_factory: pytest.TempPathFactory) -> Entries:
    """The entries of a genuine archive (dynamic batch, so it holds shape expressions)."""
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(Linear4(), (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    path = tmp_path_factory.mktemp("good") / "model.pt2"
    torch.export.save(program, str(path))
    with zipfile.ZipFile(path) as zf:
        return {n.partition("/")[2]: zf.read(n) for n in zf.namelist()}


def source(uri: str = "file://crafted.pt2") -> ModelSource:
    return ModelSource.model_validate(
        {"uri": uri, "format": "TorchExport", "inputs": [{"name": "x", "shape": [-1, 4]}]}
    )


def write(path: Path, entries: Entries, root: str = "model", at_root: Entries | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(f"{root}/{name}", data)
        for name, data in (at_root or {}).items():
            zf.writestr(name, data)
    return path


class Payload:
    """Unpickling it writes the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.code = f"open({str(marker)!r}, 'w').write('ran')"

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (builtins.exec, (self.code,))


def torch_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def edit_json(entries: Entries, name: str, change: Callable[[dict], None]) -> Entries:  # type: ignore[type-arg]
    out = dict(entries)
    doc = json.loads(out[name])
    change(doc)
    out[name] = json.dumps(doc).encode()
    return out


def set_all(doc: object, key: str, make: Callable[[str], str]) -> None:
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k == key and isinstance(v, str):
                    node[k] = make(v)
                else:
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)


WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"


# Each builder: (genuine entries, marker) -> (entries in the folder, entries at the archive root)
def legacy_root_layout(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    # No folder at all: torch's current reader raises, torch.export.load retries the legacy loader.
    from torch._export.serde.schema import SCHEMA_VERSION

    legacy = {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        "serialized_exported_program.json": good["models/model.json"],
        "serialized_state_dict.pt": torch_pickle(Payload(marker)),
        "serialized_constants.pt": torch_pickle({}),
        "serialized_example_inputs.pt": torch_pickle(((torch.zeros(2, 4),), {})),
    }
    return {}, legacy


def legacy_files_beside_current(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    # A genuine archive plus root files: the current reader refuses the stray entry, torch falls back.
    return dict(good), legacy_root_layout(good, marker)[1]


def legacy_weights(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "data/weights/model.pt": torch_pickle(Payload(marker))}, {}


def legacy_constants(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "data/constants/model.pt": torch_pickle(Payload(marker))}, {}


def pickled_sample_inputs(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "data/sample_inputs/model.pt": torch_pickle(Payload(marker))}, {}


def pickled_weight(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    def change(doc: dict) -> None:  # type: ignore[type-arg]
        doc["config"]["fc.weight"]["use_pickle"] = True

    entries = edit_json(good, WEIGHTS_CONFIG, change)
    path_name = json.loads(entries[WEIGHTS_CONFIG])["config"]["fc.weight"]["path_name"]
    entries[f"data/weights/{path_name}"] = torch_pickle(Payload(marker))
    return entries, {}


def _constant(path_name: str, payload: bytes, good: Entries) -> Entries:
    def change(doc: dict) -> None:  # type: ignore[type-arg]
        doc["config"]["extra"] = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}

    return {**edit_json(good, CONSTANTS_CONFIG, change), f"data/constants/{path_name}": payload}


def pickled_tensor_constant(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return _constant("tensor_9", torch_pickle(Payload(marker)), good), {}


def opaque_object(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return _constant("opaque_obj_0", pickle.dumps(Payload(marker)), good), {}


def custom_object(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return _constant("custom_obj_0", pickle.dumps(Payload(marker)), good), {}


def aotinductor_library(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "data/aotinductor/model/model.so": b"\x7fELF"}, {}


def sympy_expression(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    return edit_json(good, "models/model.json", lambda d: set_all(d, "expr_str", lambda v: f"({code} and {v})")), {}


def guard_code(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    guard = f"open({str(marker)!r}, 'w').write('ran') == 3"
    return edit_json(good, "models/model.json", lambda d: d.update(guards_code=[guard])), {}


def file_reading_op(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    entries = edit_json(
        good,
        "models/model.json",
        lambda d: set_all(d, "target", lambda v: "torch.ops.aten.from_file.default" if "aten.linear" in v else v),
    )
    return entries, {}


def extra_file(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "extra/notes.txt": b"hello"}, {}


def second_program(good: Entries, marker: Path) -> tuple[Entries, Entries]:
    return {**good, "models/other.json": good["models/model.json"]}, {}


# Branches where torch itself runs the payload: the threat each refusal answers.
RUNS_IN_TORCH = {
    "legacy_root_layout": legacy_root_layout,
    "legacy_files_beside_current": legacy_files_beside_current,
    "legacy_weights": legacy_weights,
    "legacy_constants": legacy_constants,
    "pickled_sample_inputs": pickled_sample_inputs,
    "pickled_weight": pickled_weight,
    "pickled_tensor_constant": pickled_tensor_constant,
    "opaque_object": opaque_object,
    "sympy_expression": sympy_expression,
    "guard_code": guard_code,
}
# Branches that load or read something the worker has no use for; refused outright.
OTHER_BRANCHES = {
    "custom_object": custom_object,
    "aotinductor_library": aotinductor_library,
    "file_reading_op": file_reading_op,
    "extra_file": extra_file,
    "second_program": second_program,
}


def build(tmp_path: Path, good: Entries, builder: Callable[[Entries, Path], tuple[Entries, Entries]]) -> Path:
    marker = tmp_path / "marker"
    inside, at_root = builder(good, marker)
    return write(tmp_path / "crafted.pt2", inside, at_root=at_root)


@pytest.mark.parametrize("branch", sorted(RUNS_IN_TORCH))
def test_torch_runs_the_payload(branch: str, tmp_path: Path, good_entries: Entries) -> None:
    path = build(tmp_path, good_entries, RUNS_IN_TORCH[branch])
    try:
        program = torch.export.load(str(path))
        program.module()(torch.zeros(2, 4))  # guards run when the module is called
    except Exception:  # torch fails after running the payload on most branches
        pass
    assert (tmp_path / "marker").exists(), f"torch {torch.__version__} no longer runs the {branch} payload"


@pytest.mark.parametrize("branch", sorted(RUNS_IN_TORCH | OTHER_BRANCHES))
def test_worker_refuses_without_running_it(branch: str, tmp_path: Path, good_entries: Entries) -> None:
    path = build(tmp_path, good_entries, (RUNS_IN_TORCH | OTHER_BRANCHES)[branch])
    with pytest.raises(ModelError) as info:
        loader.load_model(source(), path)
    assert not (tmp_path / "marker").exists()
    assert info.value.exit_code == ExitCode.MODEL_ERROR
    assert "file://crafted.pt2" in info.value.message


def test_genuine_archive_loads(tmp_path: Path, good_entries: Entries) -> None:
    model = loader.load_model(source(), write(tmp_path / "good.pt2", good_entries))
    assert model.module(torch.zeros(5, 4)).shape == (5, 3)


def test_refusals_name_the_cause(tmp_path: Path, good_entries: Entries) -> None:
    cases = {
        legacy_root_layout: "legacy torch.export layout",
        legacy_constants: r"data/constants/model.pt: a legacy pickled constants file",
        aotinductor_library: "AOTInductor compiled code",
        sympy_expression: "would evaluate as Python",
        opaque_object: "custom object",
    }
    for builder, expected in cases.items():
        with pytest.raises(ModelError, match=expected):
            loader.load_model(source(), build(tmp_path, good_entries, builder))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        (WEIGHTS_CONFIG, b"{not json"),
        (WEIGHTS_CONFIG, b"[1, 2]"),
        ("models/model.json", b"\xff\xfe"),
        ("models/model.json", b"[" * 100_000 + b"]" * 100_000),
        ("archive_version", b"7"),
    ],
)
def test_malformed_archive_is_a_model_error(name: str, data: bytes, tmp_path: Path, good_entries: Entries) -> None:
    """A loader failure of any kind is the file's fault (exit 3, not retried), never Unexpected."""
    with pytest.raises(ModelError):
        loader.load_model(source(), write(tmp_path / "bad.pt2", {**good_entries, name: data}))


def test_loader_failure_after_the_check_is_a_model_error(tmp_path: Path, good_entries: Entries) -> None:
    # Passes the allow-list (valid JSON, no expressions) but is no ExportedProgram torch can build.
    entries = {**good_entries, "models/model.json": b'{"graph_module": {}}'}
    with pytest.raises(ModelError, match="cannot load the TorchExport archive"):
        loader.load_model(source(), write(tmp_path / "bad.pt2", entries))


def test_the_check_is_keyed_to_the_installed_loader() -> None:
    """The allow-list matches this torch's archive layout; a torch that moved it is refused (RuntimeMissing)."""
    pt2_archive.installed_torch_supported()
    from torch.export.pt2_archive import constants

    known = set(pt2_archive.EXPECTED_ARCHIVE_CONSTANTS) | {
        "ARCHIVE_ROOT_NAME",  # the writer's folder name; the reader takes whatever folder it finds
        "EXECUTORCH_DIR",  # not read by torch.export.load; refused by the allow-list
        "MODULE_INFO_PATH",  # under extra/, refused
        "MTIA_DIR",
        "SAMPLE_INPUTS_DIR",
        "XL_MODEL_WEIGHTS_DIR",
        "XL_MODEL_WEIGHTS_PARAM_CONFIG_PATH",
    }
    assert {n for n in dir(constants) if n.isupper()} == known, "torch's .pt2 layout changed: review pt2_archive.py"
