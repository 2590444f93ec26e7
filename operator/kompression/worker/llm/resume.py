"""Resume after preemption, layer by layer: llm-compressor's sequential calibration checkpoints
each decoder layer as it finishes, with the activations the next layer reads, and a later attempt
of the same job starts at the first unfinished layer.

llm-compressor's sequential pipeline cuts the model into subgraphs (one before the first decoder
layer, then one per layer) and runs them in order, each on the activations the previous one
wrote; oneshot's default `independent` pipeline gives every modifier that needs data its own
such pass (SmoothQuant, then GPTQ). At the start of subgraph s of pass p, everything an attempt
needs to go on from there is: the state of every earlier subgraph after this pass, of every
later one after the previous pass, and the activations now in the cache. So there:

- the subgraph just finished is saved (`<key>-p<pass>-s<subgraph>`: its parameters and buffers),
- then the boundary (`<key>-boundary`: pass, subgraph and the cached activations), which
  replaces the previous one; each write is atomic (the worker's storage layer), and the layer is
  written before the boundary that names it, so a kill at any moment leaves a usable boundary.

They go through the step's checkpoints (`StepContext.save_checkpoint`: the job's output prefix,
`checkpoints/<steps digest>/<step>/`, removed once the job publishes or fails for good), named
by a key over the model's files, the calibration token ids, the step's config, the libraries'
versions and the device kind, so that a different model, text or recipe never picks them up.
They are read back as untrusted files: torch's weights-only loader, then every tensor's name,
shape and dtype checked against the model, and the activations against the data; a checkpoint
that fails is discarded and calibration starts from the first layer.

On resume, before the first pass: the saved states are loaded into the model; passes before the
boundary's run with no subgraphs (their modifiers start and end on no data, which changes
nothing); the boundary's pass runs from its subgraph on, from the saved activations. The library
calls in between see the same tensors as an uninterrupted run, so on a CPU the published weights
are byte-identical (tests/llm/test_resume.py).

Not resumed: torchrun groups (each rank calibrates its own share of the samples, in lockstep
with the others) and llm-compressor's data-free pipeline (no calibration to resume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from compressed_tensors.offload import update_offload_parameter
from compressed_tensors.utils import patch_attr
from llmcompressor.pipelines.cache import IntermediatesCache
from llmcompressor.pipelines.sequential import pipeline as sequential
from torch.utils._pytree import tree_flatten, tree_map

from kompression.worker.model import CheckpointFolder
from kompression.worker.storage import objects

log = logging.getLogger(__name__)

# A saved activation may hold tensors and these plain values only: what torch's weights-only
# loader reads back (a dataclass, e.g. a KV cache object, makes the run go on without checkpoints).
PLAIN = (torch.Tensor, type(None), bool, int, float, str)


def content_key(model: CheckpointFolder, calibration: Sequence[Sequence[int]], config: Any, versions: Any) -> str:
    """What a layer's checkpoint depends on: the model's files, the calibration token ids, the
    step's config, the libraries' versions and the device kind (GPU kernels round differently)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model.path.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(model.path)}\0{objects.sha256_file(path)}\n".encode())
    digest.update(json.dumps([list(x) for x in calibration]).encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(versions, sort_keys=True).encode())
    digest.update(("cuda" if torch.cuda.is_available() else "cpu").encode())
    return digest.hexdigest()[:24]


class Unusable(Exception):
    """A checkpoint that does not fit this model and data: discarded, calibration starts over."""


@dataclass
class Layers:
    """One step's layer checkpoints: what to resume from, what was resumed, and the live progress.
    `save` and `load` are the step's checkpoint callables; `progress` its report_progress."""

    key: str
    samples: int  # calibration samples: oneshot's batches (its batch size is 1, compress.py sets none)
    save: Callable[[str, dict[str, Any]], None]
    load: Callable[[str], dict[str, Any] | None]
    progress: Callable[[float, str], None]
    layers: int = 0  # decoder layers (subgraphs after the first)
    passes: int = 0  # sequential passes the recipe makes
    resumed: int = 0  # layer passes loaded from checkpoints
    calibrated: int = 0  # layer passes calibrated by this attempt
    note: str | None = None  # why no checkpoint was used or written
    model: torch.nn.Module | None = None
    activations: IntermediatesCache | None = None
    _pass: int = -1
    _resume: tuple[int, int] | None = None
    _boundary: dict[str, Any] | None = None
    _saved_activations: list[dict[str, Any]] | None = None
    _names: list[list[str]] = field(default_factory=list)  # each subgraph's module names
    _started: tuple[float, int] | None = None  # when this attempt's first layer began, and how many were done

    # ----------------------------------------------------------------------------------- hooks

    @contextmanager
    def around(self, recipe: Sequence[Any]) -> Iterator[None]:
        """Around oneshot: the sequential pipeline's tracing and its activations cache go
        through this object, which saves at every subgraph's start and resumes from a boundary."""
        self.passes = sum(1 for m in recipe if getattr(m, "requires_calibration_data", False))
        self._boundary = self._read(self._boundary_name)
        trace = sequential.trace_subgraphs
        build = IntermediatesCache.from_dataloader

        def traced(model: torch.nn.Module, *args: Any, **kwargs: Any) -> list[Any]:
            return self._traced(model, trace(model, *args, **kwargs))

        def cache(dataloader: Any, onload: torch.device, offload: torch.device | None) -> IntermediatesCache:
            return self._cache(build(dataloader, onload, offload), len(dataloader), onload)

        # llm-compressor has no hook at a subgraph's start nor for the cache it builds: the
        # pipeline module's own names are replaced for this one oneshot call.
        with (
            patch_attr(sequential, "trace_subgraphs", traced),
            patch_attr(IntermediatesCache, "from_dataloader", cache),
        ):
            yield

    def notes(self) -> dict[str, Any]:
        """report.json's record: how many layer passes came from checkpoints and how many ran."""
        return {
            "layers": self.layers,
            "calibrationPasses": self.passes,
            "resumedLayers": self.resumed,
            "calibratedLayers": self.calibrated,
            **({"checkpointNote": self.note} if self.note else {}),
        }

    def _traced(self, model: torch.nn.Module, subgraphs: list[Any]) -> list[Any]:
        self._pass += 1
        self.model = model
        self._names = [_module_names(s) for s in subgraphs]
        self.layers = len(subgraphs) - 1
        if self._pass == 0 and self._boundary is not None:
            self._resume = self._restore(self._boundary, subgraphs)
            self._boundary = None
        if self._resume is not None and self._pass < self._resume[0]:
            return []  # this pass's work is already in the loaded states
        first = self._resume[1] if self._resume is not None and self._pass == self._resume[0] else 0
        return [_Started(s, self._starter(i)) for i, s in enumerate(subgraphs)][first:]

    def _cache(self, built: IntermediatesCache, batches: int, onload: torch.device) -> IntermediatesCache:
        self.activations = built
        if self._resume is None or self._pass != self._resume[0]:
            return built
        saved, self._saved_activations = self._saved_activations or [], None
        restored = IntermediatesCache.empty(batches, built.offload_device)
        for index, values in enumerate(saved):
            restored.update(index, tree_map(lambda x: x.to(onload) if isinstance(x, torch.Tensor) else x, values))
        self.activations = restored
        return restored

    def _starter(self, index: int) -> Callable[[], None]:
        return lambda: self._start(self._pass, index)

    # ------------------------------------------------------------------------------ checkpoints

    def _start(self, pass_: int, index: int) -> None:
        """Subgraph `index` of `pass_` is about to calibrate: checkpoint what finished before it,
        then report the layer and the time left."""
        if (pass_, index) != (0, 0) and self._resume != (pass_, index):
            done = (pass_, index - 1) if index else (pass_ - 1, len(self._names) - 1)
            self._checkpoint(done, (pass_, index))
        if not index:
            return  # the embeddings' subgraph: no layer to report
        self.calibrated += 1
        now, total = time.monotonic(), max(self.passes, 1) * self.layers
        finished = pass_ * self.layers + index - 1  # layer passes done before this one
        if self._started is None:
            self._started = (now, finished)
        ran = finished - self._started[1]
        eta = f", ETA {round((now - self._started[0]) / ran * (total - finished))}s" if ran else ""
        where = f"pass {pass_ + 1} of {self.passes}, " if self.passes > 1 else ""
        self.progress(finished / total, f"{where}layer {index} of {self.layers}{eta}")

    def _checkpoint(self, done: tuple[int, int], boundary: tuple[int, int]) -> None:
        cache = self.activations
        if cache is None:  # a pipeline that builds no cache has nothing to resume from
            return
        values: list[dict[str, Any]] = []
        for index in range(len(cache.batch_intermediates)):
            batch = tree_map(lambda x: x.detach().to("cpu") if isinstance(x, torch.Tensor) else x, cache.fetch(index))
            leaves, _ = tree_flatten(batch)
            if not all(isinstance(x, PLAIN) for x in leaves):
                if self.note is None:
                    self.note = "the activations hold values other than tensors: no checkpoints"
                    log.warning("layer checkpoints off: %s", self.note)
                return
            values.append(batch)
        self.save(self._layer_name(*done), {"tensors": self._state(done[1])})
        self.save(self._boundary_name, {"pass": boundary[0], "subgraph": boundary[1], "activations": values})

    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("layer checkpoints before llm-compressor traced the model")
        return self.model

    @property
    def _boundary_name(self) -> str:
        return f"{self.key}-boundary"

    def _layer_name(self, pass_: int, index: int) -> str:
        return f"{self.key}-p{pass_}-s{index}"

    def _state(self, index: int) -> dict[str, torch.Tensor]:
        """A subgraph's parameters and buffers by full name, on the CPU, without the observers the
        quantization modifiers attach while calibrating (they are gone once it ends)."""
        return {
            name: tensor.detach().to("cpu").clone()
            for name, tensor in _tensors(self._model(), self._names[index])
            if "_observer." not in name
        }

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return self.load(name)
        except Exception as exc:  # an untrusted file torch refuses (any of its errors): not resumed
            self.note = f"{name}: {exc}"
            return None

    def _restore(self, boundary: dict[str, Any], subgraphs: list[Any]) -> tuple[int, int] | None:
        """Vet the boundary and the layer states it needs, then load them into the model; None
        (and the reason in `discarded`) when any of them does not fit."""
        try:
            pass_, index = boundary.get("pass"), boundary.get("subgraph")
            if not (isinstance(pass_, int) and isinstance(index, int)):
                raise Unusable("the boundary names no pass and subgraph")
            if not (0 <= pass_ < max(self.passes, 1) and 0 <= index < len(self._names)):
                raise Unusable(f"pass {pass_}, subgraph {index} is outside this recipe's passes and model's layers")
            activations = boundary.get("activations")
            if not isinstance(activations, list) or len(activations) != self.samples:
                raise Unusable(f"the activations are not one entry per calibration sample ({self.samples})")
            needed = subgraphs[index].input_names
            if not all(isinstance(b, dict) and needed <= b.keys() for b in activations):
                raise Unusable(f"the activations lack the inputs of subgraph {index} ({', '.join(sorted(needed))})")
            states: list[dict[str, torch.Tensor]] = []
            for sub in range(len(self._names)):
                done = (pass_, sub) if sub < index else (pass_ - 1, sub)
                if done[0] < 0:
                    continue
                state = self._read(self._layer_name(*done))
                if state is None:
                    raise Unusable(self.note or f"the state of subgraph {sub} after pass {done[0]} is missing")
                states.append(self._vetted(sub, state.get("tensors")))
        except Unusable as exc:
            self.note = str(exc)
            log.warning("layer checkpoint discarded, calibrating from the first layer: %s", exc)
            return None
        for state in states:
            for name, tensor in state.items():
                owner, _, leaf = name.rpartition(".")
                update_offload_parameter(self._model().get_submodule(owner), leaf, tensor)
        self._saved_activations = activations
        self.resumed = pass_ * self.layers + max(index - 1, 0)
        return pass_, index

    def _vetted(self, index: int, state: Any) -> dict[str, torch.Tensor]:
        if not isinstance(state, dict):
            raise Unusable(f"subgraph {index}: the state is not a mapping of tensors")
        expected = dict(self._state_shapes(index))
        got = {k: (tuple(v.shape), v.dtype) for k, v in state.items() if isinstance(v, torch.Tensor)}
        if got != expected or len(state) != len(expected):
            raise Unusable(f"subgraph {index}: the saved tensors differ from the model's in name, shape or dtype")
        return state

    def _state_shapes(self, index: int) -> Iterator[tuple[str, tuple[tuple[int, ...], torch.dtype]]]:
        for name, tensor in _tensors(self._model(), self._names[index]):
            if "_observer." not in name:
                yield name, (tuple(tensor.shape), tensor.dtype)


def report(layers: Layers | None) -> dict[str, Any]:
    """layers.notes(), or nothing for a calibration without checkpoints."""
    return layers.notes() if layers is not None else {}


def around(layers: Layers | None, recipe: Sequence[Any]) -> AbstractContextManager[None]:
    """layers.around(recipe), or nothing for a calibration without checkpoints."""
    return layers.around(recipe) if layers is not None else nullcontext()


class _Started:
    """A subgraph that calls `start` before its first batch: the moment its inputs are all in the
    cache and every earlier subgraph is done."""

    def __init__(self, subgraph: Any, start: Callable[[], None]) -> None:
        self._subgraph = subgraph
        self._start: Callable[[], None] | None = start
        self.input_names = subgraph.input_names
        self.consumed_names = subgraph.consumed_names

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._start is not None:
            start, self._start = self._start, None
            start()
        result: dict[str, Any] = self._subgraph.forward(*args, **kwargs)
        return result

    def submodules(self, model: torch.nn.Module, recurse: bool = True) -> list[torch.nn.Module]:
        modules: list[torch.nn.Module] = self._subgraph.submodules(model, recurse)
        return modules


def _module_names(subgraph: Any) -> list[str]:
    """The modules a subgraph calls, by name (its decoder layer, or the embeddings, the final
    norm and the head)."""
    return sorted({str(node.target) for node in subgraph.graph.find_nodes(op="call_module")})


def _tensors(model: torch.nn.Module, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for name in names:
        module = model.get_submodule(name)
        for leaf, tensor in [*module.named_parameters(), *module.named_buffers()]:
            yield f"{name}.{leaf}", tensor
