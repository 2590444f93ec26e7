"""Which references `architecture` (spec.model and a distill student) may name, with which arguments.

`architecture: module.path:Name` is imported and called with `architectureArguments` in the worker,
next to the job's credentials: `os:system` would run a command. So the reference must lie under a
module prefix the cluster operator allowed (Helm value worker.architectureModules, handed to the
worker as KOMPRESSION_ARCHITECTURE_MODULES). Inside the model zoos of the default list, only model
builders pass: those libraries also hold loaders that import a folder's Python
(`transformers.dynamic_module_utils:get_class_from_dynamic_module`), read checkpoints or download.
And no argument may ask a factory for weights: they come from spec.model.uri, never from a hub.

`kompression validate` and the worker (before it downloads anything, and again when it imports the
reference) apply the same functions, so the two refuse the same manifests.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kompression.api.constants import ENV_ARCHITECTURE_MODULES

# Model zoos, not whole libraries: torchvision.datasets and torchvision.io download and read files,
# so only torchvision's models package is listed. kompression.worker.example_model is the
# quickstart's CNN.
DEFAULT_ARCHITECTURE_MODULES = ("torchvision.models", "timm", "transformers", "kompression.worker.example_model")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Within the known zoos, the modules that hold model builders. transformers keeps each model in
# transformers.models.<model>.modeling_<model> (the Auto*Model* classes in models.auto.modeling_auto);
# its top level re-exports them next to tokenizers, configs, pipelines, hub functions and
# dynamic_module_utils, which imports a folder's Python. torchvision's loaders live in the private
# models._api and models._utils; timm's in the private timm.models._hub, _builder and _helpers and
# in timm.layers, timm.data and timm.utils, which build no model.
_ZOO_MODULES = {
    "transformers": re.compile(r"^transformers(\.models\.[a-z0-9_]+(\.modeling_[a-z0-9_]+)?)?$"),
    "torchvision": re.compile(r"^torchvision\.models(\.[a-z0-9_]+)*$"),
    "timm": re.compile(r"^timm(\.models(\.[a-z0-9_]+)?)?$"),
}
# transformers names a model class FooModel, FooForTask or FooLMHeadModel (the Auto*Model* classes
# included). The few other top-level names that match live outside any modeling module
# (tests/api/test_architecture_policy.py checks this list against the installed transformers).
_TRANSFORMERS_MODEL = re.compile(r"^[A-Z][A-Za-z0-9]*(Model|For[A-Z][A-Za-z0-9]*)[A-Za-z0-9]*$")
_TRANSFORMERS_NOT_MODELS = re.compile(
    r"^(DataCollator\w*|BayesianDetectorModel|PreTrainedModel|\w*ForRope|TF\w*|Flax\w*)$"
)
# torchvision and timm build models with lower-case factories (resnet18, vit_base_patch16_224) and
# classes (ResNet); these names are their registries, weight enums, loaders and hub helpers.
_LOADER_NAME = re.compile(
    r"(^|_)(get|list|load|download|push|resume|register|set|is)(_|$)|hub|checkpoint|pretrained|url"
    r"|Weights(Enum)?$",
    re.IGNORECASE,
)

# Arguments with which a zoo's factory fetches weights (a hub download, or a checkpoint file that
# torch.load would unpickle) or code (trust_remote_code). The weights a job compresses come from
# spec.model.uri; null and false, the factories' defaults, are accepted.
DOWNLOAD_ARGUMENTS = frozenset(
    {
        "pretrained",
        "pretrained_backbone",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "pretrained_model_name_or_path",
        "weights",
        "weights_backbone",
        "checkpoint_path",
        "cache_dir",
        "trust_remote_code",
    }
)


def parse_modules(text: str) -> tuple[str, ...]:
    """A comma-separated list of module prefixes; ValueError names a malformed one."""
    modules = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modules if not _MODULE.match(m)]
    if bad:
        raise ValueError(f"not a module path: {', '.join(bad)} (expected e.g. torchvision.models)")
    return modules


def module_list_argument(text: str) -> tuple[str, ...]:
    """argparse type of the --architecture-modules flags: empty means the default list."""
    try:
        return parse_modules(text) or DEFAULT_ARCHITECTURE_MODULES
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def allowed_modules(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The operator's list from the environment, or the default when unset or empty."""
    return parse_modules(environ.get(ENV_ARCHITECTURE_MODULES, "")) or DEFAULT_ARCHITECTURE_MODULES


def _zoo(module: str) -> str | None:
    top = module.split(".", 1)[0]
    return top if top in _ZOO_MODULES else None


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether `module` is one of the prefixes or inside one (torchvision.models.resnet, not
    torchvisionx), and, inside a known zoo, one of its model modules (not transformers.pipelines).

    The worker also applies it to the module an imported object was defined in."""
    if any(part.startswith("_") for part in module.split(".")):
        return False  # private modules are implementation details, not model factories
    zoo = _zoo(module)
    if zoo is not None and not _ZOO_MODULES[zoo].match(module):
        return False
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def _name_refusal(module: str, name: str) -> str | None:
    """Why a known zoo's `name` is not a model builder, or None."""
    zoo = _zoo(module)
    if zoo == "transformers":
        if not _TRANSFORMERS_MODEL.match(name) or _TRANSFORMERS_NOT_MODELS.match(name):
            return (
                f"{name} is not a transformers model class: only model classes (FooModel, FooForTask, "
                f"the Auto*Model* classes) are admitted, not configs, tokenizers, pipelines or loaders"
            )
    elif zoo is not None and _LOADER_NAME.search(name):
        return f"{name} is a {zoo} registry, weights or loading helper, not a model builder"
    return None


def _refusal_reason(ref: str, allowed: tuple[str, ...]) -> str | None:
    """Why an allowed module's reference is refused, or None (also when the module is not allowed)."""
    module, _, name = ref.partition(":")
    if not module_allowed(module, allowed):
        zoo = _zoo(module)
        if zoo is not None and any(module == p or module.startswith(p + ".") for p in allowed):
            return f"{module} is not one of the {zoo} modules that hold models"
        return None  # refusal() says the module is not under the list
    if not _NAME.match(name):
        return f"{name} is not a public name of {module}"
    return _name_refusal(module, name)


def reference_allowed(ref: str, allowed: Iterable[str]) -> bool:
    """Whether `module.path:Name` may be imported and called in the worker."""
    allowed = tuple(allowed)
    return module_allowed(ref.partition(":")[0], allowed) and _refusal_reason(ref, allowed) is None


def refusal(ref: str, allowed: Iterable[str]) -> str:
    """Why reference_allowed refused `ref`, and what the cluster admits instead."""
    allowed = tuple(allowed)
    reason = _refusal_reason(ref, allowed)
    admitted = (
        f"this cluster admits model builders under {', '.join(allowed)} (Helm value worker.architectureModules, "
        f"env {ENV_ARCHITECTURE_MODULES})"
    )
    if reason is None:
        return (
            f"{ref} is not under a module this cluster allows; an architecture is imported and called in the "
            f"worker, so {admitted}"
        )
    return f"{reason}; an architecture is imported and called in the worker, so {admitted}"


def argument_refusal(arguments: Mapping[str, Any] | None) -> str | None:
    """Why `architectureArguments` would make the factory fetch weights or code, or None."""
    asked = sorted(k for k, v in (arguments or {}).items() if k in DOWNLOAD_ARGUMENTS and v not in (None, False))
    if not asked:
        return None
    return (
        f"{', '.join(asked)} would make the factory download weights, read a checkpoint or trust remote code; "
        f"the weights come from spec.model.uri (for a student, from training): remove "
        f"{'it' if len(asked) == 1 else 'them'} or set null"
    )
