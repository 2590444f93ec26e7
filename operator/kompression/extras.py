"""The package's extras, and a one-line error naming the extra to install when one is missing.

`pip install kompression` brings the API alone (validate, crd, render). The operator, the worker
and TensorRT are extras. A command that needs one checks for its modules before importing any of
them, so a missing extra reads "pip install 'kompression[worker]'", never a ModuleNotFoundError
traceback. Only importlib is used here: this module must load in the base install.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

# The top-level modules each extra of pyproject.toml brings (a test keeps the two in step).
EXTRAS: dict[str, tuple[str, ...]] = {
    "operator": ("kopf", "aiohttp", "prometheus_client", "optuna"),
    "worker": (
        "torch",
        "torchvision",
        "torch_pruning",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "safetensors",
        "numpy",
        "sklearn",
        "fsspec",
        "s3fs",
        "gcsfs",
        "adlfs",
        "prometheus_client",
        "matplotlib",
        "transformers",
        "tensorly",
    ),
    "tensorrt": ("tensorrt",),
    # llmQuantize: llm-compressor pins its own torch and transformers, so this extra goes into an
    # environment of its own (images/worker-llm, `make setup-llm`), never next to the worker extra.
    "llm": (
        "llmcompressor",
        "compressed_tensors",
        "torch",
        "transformers",
        "tokenizers",
        "datasets",
        "lm_eval",
        "modelopt",
        "safetensors",
        "fsspec",
        "s3fs",
        "gcsfs",
        "adlfs",
        "prometheus_client",
    ),
}
# Where an extra cannot simply join the others in one environment, what to do instead.
INSTALL_HINTS = {
    "llm": "install it in an environment of its own, since it needs torch <= 2.14 (`make setup-llm` makes one "
    "and runs `.venv-llm/bin/kompression run`), or run the job in the worker-llm image (images/worker-llm)",
}
# The usage-error code: a rerun cannot fix it, and it is what an unreadable manifest exits with.
EXIT_EXTRA_MISSING = 2


@dataclass(frozen=True)
class Need:
    """Modules that `what` imports, and the extra that brings them."""

    what: str
    extra: str
    modules: tuple[str, ...]

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def install(self) -> str:
        command = f"pip install 'kompression[{self.extra}]'"
        hint = INSTALL_HINTS.get(self.extra)
        return f"{command}; {hint}" if hint else command


def need(what: str, extra: str) -> Need:
    """Every module of `extra`."""
    return Need(what, extra, EXTRAS[extra])


class ExtraMissing(RuntimeError):
    """One or more needs are not installed; the message says what to install for each."""

    exit_code = EXIT_EXTRA_MISSING

    def __init__(self, unmet: list[tuple[Need, list[str]]]) -> None:
        self.unmet = unmet
        lines = [
            f"{n.what} needs the {n.extra} extra, which is not installed (no module {', '.join(gone)}): {n.install()}"
            for n, gone in unmet
        ]
        super().__init__(lines[0] if len(lines) == 1 else "missing extras:\n" + "\n".join(f"  - {x}" for x in lines))


def require(*needs: Need) -> None:
    """Raise ExtraMissing listing every need that is not installed."""
    unmet = [(n, gone) for n in needs if (gone := n.missing())]
    if unmet:
        raise ExtraMissing(unmet)
