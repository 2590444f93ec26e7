"""The one vetting of a HuggingFace model folder, and the options of every transformers call on it.

The loader (formats.load_model) calls `vet` once, before anything from transformers opens a file in
the job's folder, whether the folder becomes a graph (format HuggingFace) or stays a checkpoint
folder for the LLM techniques; every load goes through `load_options`, `loading` and
`check_complete`. What the folder's files say is untrusted:

- config.json (and every settings file transformers reads beside it) must be a JSON object of
  bounded size and depth; none may name remote code (`auto_map`) or an attention implementation
  transformers would fetch from the hub (`kernels-community/flash-attn2`): the worker loads with
  the attention it chooses itself, `local_files_only=True` and `trust_remote_code=False`.
- `architectures` must name a model class transformers ships (never `AutoConfig`, never a loader).
- weights are safetensors only: no pickle file anywhere in the folder, every .safetensors header
  readable, and a shard index may only name plain .safetensors files of the folder itself.
- the loaded model must find every weight it expects in those files, and no other: transformers
  initialises a missing weight at random and only logs it.

Links and entries outside the folder are storage's to refuse (storage.source), before this runs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from kompression.worker.errors import ModelError, brief
from kompression.worker.model import CheckpointFolder

# Where a checkpoint folder's problems are reported (the LLM techniques read it as the manifest names it).
MODEL_URI = "spec.model.uri"
CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# The JSON files transformers reads as settings (not vocabularies): each may carry auto_map.
SETTINGS = (
    CONFIG,
    TOKENIZER_CONFIG,
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "image_processor_config.json",
    "special_tokens_map.json",
)
INDEX_SUFFIX = ".safetensors.index.json"
# Weights that are pickles run code when loaded.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Real settings files are a few kilobytes and a few levels deep (a shard index of a very large
# model a few megabytes); anything past these bounds is not a checkpoint and would only cost memory.
SETTINGS_LIMIT = 4 << 20
INDEX_LIMIT = 64 << 20
MAX_DEPTH = 32
# Keys under which transformers reads the attention implementation from a config.
ATTENTION_KEYS = ("attn_implementation", "_attn_implementation")
# transformers' own implementations; any other value (a hub repository such as
# kernels-community/flash-attn2) makes transformers fetch and import a kernel.
BUILTIN_ATTENTION = frozenset(
    {"eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4"}
    | {f"paged|{name}" for name in ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flash_attention_4")}
)
# The keyword arguments of every tokenizer load (and, with load_options, of every model load).
OFFLINE = {"local_files_only": True, "trust_remote_code": False}
CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]{0,127}$")


def vet(folder: Path, where: str, *, any_architecture: bool = False) -> CheckpointFolder:
    """Every check of the folder's contents that can run before transformers reads it; a ModelError
    naming `where`, the file and what is wrong otherwise. any_architecture: the job only reads the
    weights (llmQuantize method ModelFree), so `architectures` may name a class transformers does not
    have (the folder's architecture is then None); every other check still holds."""
    if not folder.is_dir() or not (folder / CONFIG).is_file():
        raise ModelError(f"{where}: a HuggingFace model is a folder with config.json; none found")
    pickled = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in PICKLED_WEIGHTS)
    if pickled:
        raise ModelError(
            f"{where}: the folder holds pickled weights ({', '.join(pickled[:3])}), which run code when loaded; "
            "the worker reads safetensors weights only: convert them (save_pretrained(safe_serialization=True))"
        )
    settings = {name: _settings(folder / name, where) for name in SETTINGS if (folder / name).exists()}
    config = settings[CONFIG]
    for name, content in settings.items():
        _refuse_code(content, name, where)
    _check_types(config, where)
    architecture = _architecture(config, where, required=not any_architecture)
    for shard in sorted(_weights(folder, where)):
        _read_header(folder / shard, where)
    return CheckpointFolder(folder, config, architecture)


def written(folder: Path, source: CheckpointFolder, where: str) -> CheckpointFolder:
    """A folder a step wrote from the vetted `source` (the worker's own output, not vetted again):
    its own config.json, the source's model class and the zeros it keeps."""
    return replace(source, path=folder, config=read_json(folder / CONFIG, where, SETTINGS_LIMIT))


def vet_tokenizer(folder: Path, where: str) -> None:
    """The tokenizer's settings files alone (a job that only reads the tokenizer, such as text data
    for a model vetted elsewhere): objects of bounded size that name no code."""
    for name in (TOKENIZER_CONFIG, "special_tokens_map.json"):
        if (folder / name).exists():
            _refuse_code(_settings(folder / name, where), name, where)


def read_json(path: Path, where: str, limit: int) -> Any:
    """A JSON document of at most `limit` bytes and MAX_DEPTH levels, or a ModelError naming it."""
    name = path.name
    if not path.is_file():
        raise ModelError(f"{where}: {name} is not a regular file")
    size = path.stat().st_size
    if size > limit:
        raise ModelError(f"{where}: {name} is {size} bytes; a HuggingFace folder's {name} is at most {limit} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{where}: {name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise ModelError(f"{where}: {name} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError
        raise ModelError(f"{where}: {name} is not valid JSON ({exc})") from None
    if _depth(value) > MAX_DEPTH:
        raise ModelError(f"{where}: {name} nests deeper than {MAX_DEPTH} levels")
    return value


def _settings(path: Path, where: str) -> dict[str, Any]:
    value = read_json(path, where, SETTINGS_LIMIT)
    if not isinstance(value, dict):
        raise ModelError(f"{where}: {path.name} must be a JSON object, not {_kind(value)}")
    return value


def _refuse_code(settings: dict[str, Any], name: str, where: str) -> None:
    """No auto_map (remote code) and no attention implementation but transformers' own, at any depth
    (a composite model's text_config holds a config of its own)."""
    for key, value in _items(settings):
        if key == "auto_map":
            raise ModelError(
                f"{where}: {name} names remote code (auto_map); the worker never runs a model's own Python code, "
                "so use an architecture transformers ships"
            )
        if key in ATTENTION_KEYS and value is not None:
            values = value.values() if isinstance(value, dict) else [value]
            bad = [v for v in values if v is not None and v not in BUILTIN_ATTENTION]
            if bad:
                raise ModelError(
                    f"{where}: {name} sets {key} to {str(bad[0])[:100]!r}, which is not one of transformers' own "
                    f"attention implementations ({', '.join(sorted(BUILTIN_ATTENTION))}); a hub kernel is code "
                    "the worker will not fetch or run. Remove the key: the worker chooses the attention itself"
                )


def _check_types(config: dict[str, Any], where: str) -> None:
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelError(
            f"{where}: config.json has no model_type string (found {_kind(model_type)}); "
            "save the model with save_pretrained, which writes it"
        )
    names = config.get("architectures")
    if names is not None and (not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names)):
        raise ModelError(f"{where}: config.json's architectures must be a list of class names, not {_kind(names)}")


def _architecture(config: dict[str, Any], where: str, *, required: bool = True) -> type | None:
    """The model class `architectures` names, which must be one of transformers' model classes
    (unless not `required`: then a plain class name transformers lacks gives None)."""
    names = config.get("architectures")
    if names is None:
        return None
    name = names[0]
    transformers = importlib.import_module("transformers")
    found: Any = None
    if CLASS_NAME.match(name):
        try:
            found = getattr(transformers, name, None)
        except Exception:  # a lazy module whose backend is missing raises its own errors
            found = None
    # A model of transformers' own zoo (transformers.models.*), with a config class of its own: never
    # a loader (AutoModel), a config (AutoConfig), a base class or a utility.
    model = (
        isinstance(found, type)
        and issubclass(found, transformers.PreTrainedModel)
        and found.__module__.startswith("transformers.models.")
        and isinstance(getattr(found, "config_class", None), type)
    )
    if not model and not required and found is None and CLASS_NAME.match(name):
        return None
    if not model:
        raise ModelError(
            f"{where}: config.json's architectures names {name[:100]!r}, which is not a model class of transformers "
            f"{transformers.__version__} (such as LlamaForCausalLM or BertModel)"
        )
    return cast(type, found)


def _weights(folder: Path, where: str) -> set[str]:
    """The .safetensors files of the folder, shards named by an index included; refuses a folder
    without any and an index that names anything but a plain .safetensors file of the folder."""
    names = {p.name for p in folder.glob("*.safetensors")}
    for index in sorted(folder.glob("*" + INDEX_SUFFIX)):
        names |= _shards(index, where)
    if not names:
        raise ModelError(
            f"{where}: the folder has no .safetensors weights; the worker reads safetensors weights only "
            "(save_pretrained(safe_serialization=True))"
        )
    return names


def _shards(index: Path, where: str) -> set[str]:
    content = read_json(index, where, INDEX_LIMIT)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise ModelError(
            f"{where}: {index.name} must be a JSON object whose weight_map maps each tensor name to a shard "
            "file name (strings)"
        )
    shards = set(weight_map.values())
    for shard in sorted(shards):
        plain = shard not in ("", ".", "..") and "/" not in shard and "\\" not in shard
        target = index.parent / shard
        if not plain or not shard.endswith(".safetensors") or target.is_symlink() or not target.is_file():
            raise ModelError(
                f"{where}: {index.name} names shard {shard[:200]!r}; a shard must be the plain name of a "
                ".safetensors file in the model's folder (no path, no link)"
            )
    return shards


def _read_header(path: Path, where: str) -> None:
    """The header alone (safe_open maps the file and reads no tensor): malformed ones end here."""
    from safetensors import safe_open  # safetensors is in both environments; only folders need it

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError, OSError: whatever safetensors says about the bytes
        raise ModelError(f"{where}: {path.name} is not a readable safetensors file: {brief(exc)}") from None


def attention(folder: CheckpointFolder, auto: type) -> str:
    """The attention implementation the worker loads with: sdpa where the model class supports it,
    else eager; never what the folder asks for."""
    model_class = folder.architecture or _auto_class(folder, auto)
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) is True else "eager"


def _auto_class(folder: CheckpointFolder, auto: type) -> type | None:
    """The class `auto` (AutoModel, AutoModelForCausalLM) would build for the folder's model_type."""
    transformers = importlib.import_module("transformers")
    try:
        config_class = transformers.CONFIG_MAPPING[folder.config["model_type"]]
        return auto._model_mapping[config_class]  # type: ignore[attr-defined, no-any-return]
    except (KeyError, ValueError, AttributeError):
        return None  # from_pretrained names the unknown model_type itself


def runnable(folder: CheckpointFolder, auto: type) -> bool:
    """Whether transformers has a model class for the folder (the one `architectures` names, or the
    one `auto` maps its model_type to): a folder vetted with any_architecture may have none."""
    return (folder.architecture or _auto_class(folder, auto)) is not None


def load_options(folder: CheckpointFolder, auto: type) -> dict[str, Any]:
    """The keyword arguments of every from_pretrained of a model: offline, no repository code,
    safetensors only, the worker's attention."""
    return {
        **OFFLINE,
        "use_safetensors": True,
        "attn_implementation": attention(folder, auto),
    }


@contextlib.contextmanager
def loading(where: str, what: str = "the HuggingFace model") -> Iterator[None]:
    """Whatever transformers raises on a vetted folder is the folder's fault (a config value of the
    wrong type, a tensor of the wrong shape): a ModelError. Running out of memory is not."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError, ModelError):  # memory is the node's, not the author's
        raise
    except Exception as exc:
        raise ModelError(f"{where}: transformers cannot load {what} from the folder: {brief(exc)}") from None


def check_complete(info: Mapping[str, Any], model: Any, where: str) -> None:
    """from_pretrained's loading info: every weight the model expects came from the folder's files,
    and no file holds a tensor it does not expect (tied weights count as present)."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ())
    if missing or unexpected or mismatched:
        raise ModelError(
            f"{where}: the safetensors weights do not fit {type(model).__name__}: missing {_few(missing)}, "
            f"unexpected {_few(unexpected)}, mismatched {_few(mismatched)}; transformers would initialise what is "
            "missing at random, so the folder must hold every weight of the model its config.json describes"
        )


def tokenizer(folder: Path, where: str) -> Any:
    """The folder's tokenizer, offline and without its code, or a ModelError naming the folder."""
    vet_tokenizer(folder, where)
    from transformers import AutoTokenizer  # only the worker's HuggingFace paths have transformers

    with loading(where, "a tokenizer"):
        return AutoTokenizer.from_pretrained(folder, **OFFLINE)


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every object in a JSON document."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                yield key, item
                stack.append(item)
        elif isinstance(node, list):
            stack.extend(node)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((item, depth + 1) for item in (node.values() if isinstance(node, dict) else node))
    return deepest


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _few(keys: list[str]) -> str:
    return f"[{', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}] ({len(keys)})" if keys else "none"
