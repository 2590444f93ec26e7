"""Which modules `architecture` (spec.model and a distill student) may name.

`architecture: module.path:Name` is imported and called with `architectureArguments` in the worker,
next to the job's credentials: `os:system` would run a command. So the reference must lie under a
module prefix the cluster operator allowed (Helm value worker.architectureModules, handed to the
worker as KOMPRESSION_ARCHITECTURE_MODULES). `kompression validate` and the worker both check it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping

from kompression.api.constants import ENV_ARCHITECTURE_MODULES

# Model zoos, not whole libraries: torchvision.datasets and torchvision.io download and read files,
# so only torchvision's models package is listed. kompression.worker.example_model is the
# quickstart's CNN.
DEFAULT_ARCHITECTURE_MODULES = ("torchvision.models", "timm", "transformers", "kompression.worker.example_model")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    """Whether `module` is one of the prefixes or inside one (torchvision.models.resnet, not torchvisionx)."""
    if any(part.startswith("_") for part in module.split(".")):
        return False  # private modules are implementation details, not model factories
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def reference_allowed(ref: str, allowed: Iterable[str]) -> bool:
    module, _, name = ref.partition(":")
    return not name.startswith("_") and module_allowed(module, allowed)


def refusal(ref: str, allowed: Iterable[str]) -> str:
    return (
        f"{ref} is not under a module this cluster allows ({', '.join(allowed)}); an architecture is "
        f"imported and called in the worker, so the operator lists the model zoos it trusts "
        f"(Helm value worker.architectureModules, env {ENV_ARCHITECTURE_MODULES})"
    )
