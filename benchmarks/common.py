"""Timing and reporting helpers shared by the benchmarks: medians of repeated runs, one markdown file each."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))
RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
REPEATS = 7
K = TypeVar("K")  # a candidate's key: its name, or (name, setting)


@dataclasses.dataclass(frozen=True)
class Medians:
    """One candidate's median ms per call: of the wall clock, and of the calling thread's CPU time.
    The second is this work's own cycles only where all of it runs on the calling thread (torch at
    1 thread, onnxruntime with 1 intra-op thread, both of which then compute inline): time another
    process held the core is then not counted, while cache and frequency effects still are."""

    wall_ms: float
    thread_cpu_ms: float


def interleaved_ms(candidates: Mapping[K, Callable[[], Any]], repeats: int = REPEATS, **timing: Any) -> dict[K, float]:
    """Median wall ms of one call per candidate: interleaved_medians' wall_ms (timing: its keywords)."""
    return {name: m.wall_ms for name, m in interleaved_medians(candidates, repeats, **timing).items()}


def interleaved_medians(
    candidates: Mapping[K, Callable[[], Any]],
    repeats: int = REPEATS,
    *,
    inner: int = 5,
    warmup: int = 3,
    settle_s: float = 0.0,
    rewarm_s: float = 0.0,
) -> dict[K, Medians]:
    """Median ms of one call per candidate, over `repeats` blocks of `inner` timed calls each, the
    blocks run A,B,C,B,C,A,C,A,B,... so that load from other processes on a shared machine falls
    on every candidate alike instead of on whichever ran during a busy spell. The median is taken
    over single calls, not block means: one call stalled by another process (or the cold first call
    of a block) then counts as one outlier instead of inflating its whole block.

    Candidates from different runtimes (torch's OpenMP pool next to onnxruntime's threads) should
    pass `settle_s` and `rewarm_s`: each block then starts after that much idleness and at least
    that long of untimed calls, since one runtime's worker threads keep spinning for a while after
    its last call, and on 2 cores the next candidate would be charged for them.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[K, list[float]] = {name: [] for name in candidates}
    cpu: dict[K, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for rep in range(repeats):
        # Rotate the starting candidate each repetition, so that none always runs right after the
        # same neighbour.
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            fn = candidates[name]
            if settle_s:
                time.sleep(settle_s)
            warm_until = time.perf_counter() + rewarm_s
            while time.perf_counter() < warm_until:
                fn()
            for _ in range(inner):
                start, start_cpu = time.perf_counter(), time.thread_time()
                fn()
                samples[name].append((time.perf_counter() - start) * 1000)
                cpu[name].append((time.thread_time() - start_cpu) * 1000)
    return {name: Medians(statistics.median(samples[name]), statistics.median(cpu[name])) for name in names}


def cpu_flags() -> str:
    """The SIMD and matrix extensions that decide which kernels run: recorded with every figure."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16")
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    flags = set(line.split(":", 1)[1].split())
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)


def isolated_ms(fn: Callable[[], Any], calls: int = 60, warmup_s: float = 1.0) -> float:
    """Median of `calls` back-to-back calls after `warmup_s` of untimed ones: the candidate alone
    on the machine, as a direct benchmark of one library would time it."""
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def ort_session(path: Path, *, spinning: bool = True) -> Any:
    """An onnxruntime CPU session as Kompression's worker measures and a deployment runs one:
    THREADS intra-op threads, every graph optimization, and by default onnxruntime's default thread
    spinning (turning it off cost a 2 ms int8 ResNet-18 about a quarter of its speed here).
    Benchmarks that interleave sessions pass settle_s/rewarm_s, so one session's spinning threads
    are not charged to the next candidate."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = THREADS
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def direct_static_int8(fp32: Path, out: Path, calibration: np.ndarray, *, recipe: bool = True) -> Path:
    """onnxruntime's quantizer called by hand: with `recipe`, Kompression's StaticInt8 recipe (the
    pre-process, then QDQ, U8S8, per-channel, MinMax, reduce_range only without VNNI); without it,
    quantize_static's defaults on the graph as exported."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kompression.worker.steps.quantize import has_vnni

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
        def __init__(self) -> None:
            self._it = iter([{"x": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    if not recipe:
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return out
    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=not has_vnni(),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


def load_average() -> str:
    """The 1/5/15-minute load averages, recorded with every timing (the machine is shared)."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    import onnxruntime

    return (
        f"{cpu}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {platform.python_version()}, "
        f"{THREADS} threads, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table's lines: the header, its rule, then one line per row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes: str) -> str:
    """The usual results section: its title, the machine, one table, and the notes that say how it was measured."""
    return "\n".join(
        [f"# {title}", "", f"Machine: {machine()}", "", *markdown_table(header, rows), "", notes.strip(), ""]
    )


def write_report(name: str, text: str) -> Path:
    """results/<name>.md, the section `run_all.py --collect` puts into RESULTS.md, and the same text on
    stdout, so that a run's figures are seen as they are kept."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    return path


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="kompression-bench-"))


def job_context(
    step: dict[str, Any],
    work: Path,
    input_shape: Sequence[int],
    data: Any,
    *,
    teacher: Any = None,
    device: str = "cpu",
    seed: int = 0,
    inputs: Sequence[dict[str, Any]] | None = None,
) -> Any:
    """A StepContext for one step, as the worker would build it (`inputs` as in spec.model.inputs)."""
    from kompression.worker.techniques import standalone_context

    return standalone_context(step, work, data, input_shape, teacher=teacher, device=device, seed=seed, inputs=inputs)
