"""Acceptance gates: compare the final model with the original against spec.acceptance."""

from __future__ import annotations

from operator import ge

from kompression.api.v1alpha1 import Acceptance, GateResult, Metrics, Result


def compute_result(baseline: Metrics, final: Metrics, speed_baseline: Metrics | None = None) -> Result:
    """The pipeline's outcome figures (gates are added by evaluate).

    The speedup compares like with like: the original and the final model measured on one device.
    speed_baseline is the original re-measured on the final model's device, for when the final model
    did not run on the job's device (an ONNX model on the CPU of a GPU job whose onnxruntime has no
    CUDAExecutionProvider). Without a measurement on one device there is no speedup, and a minSpeedup
    gate fails saying so.
    """
    reference = speed_baseline or baseline
    ratio = baseline.sizeBytes / final.sizeBytes if baseline.sizeBytes and final.sizeBytes else None
    delta = final.accuracy - baseline.accuracy if baseline.accuracy is not None and final.accuracy is not None else None
    comparable = reference.device == final.device
    speedup = reference.latencyMs / final.latencyMs if comparable and reference.latencyMs and final.latencyMs else None
    return Result(
        baseline=baseline,
        final=final,
        compressionRatio=None if ratio is None else round(ratio, 4),
        accuracyDelta=None if delta is None else round(delta, 6),
        speedup=None if speedup is None else round(speedup, 4),
        speedupBaseline=speed_baseline,
    )


def evaluate(acceptance: Acceptance | None, result: Result) -> list[GateResult]:
    """One verdict per configured gate. A gate whose figure could not be measured fails."""
    if acceptance is None:
        return []
    drop = -result.accuracyDelta if result.accuracyDelta is not None else float("inf")
    checks = (  # name, limit, measured, whether measured is within the limit
        ("maxAccuracyDrop", acceptance.maxAccuracyDrop, round(drop, 6), _within),
        ("maxPerplexityIncrease", acceptance.maxPerplexityIncrease, _perplexity_increase(result), _within),
        ("minCompressionRatio", acceptance.minCompressionRatio, result.compressionRatio or 0.0, ge),
        ("minSpeedup", acceptance.minSpeedup, result.speedup or 0.0, ge),
    )
    return [
        GateResult(name=name, passed=within(measured, limit), measured=measured, limit=limit)
        for name, limit, measured, within in checks
        if limit is not None
    ]


def _within(measured: float, limit: float) -> bool:
    return measured <= limit + 1e-9


def _perplexity_increase(result: Result) -> float:
    """Relative: final / original perplexity - 1; unmeasured counts as infinitely worse."""
    before = result.baseline.perplexity if result.baseline else None
    after = result.final.perplexity if result.final else None
    return round(after / before - 1, 6) if before and after is not None else float("inf")


def describe_failures(result: Result) -> str:
    """One sentence per failed gate: which, measured value, limit."""
    words = {
        "maxAccuracyDrop": "accuracy dropped by {m:.4f} (limit {l:.4f})",
        "maxPerplexityIncrease": "perplexity rose by {m:.2%} (limit {l:.2%})",
        "minCompressionRatio": "compression ratio {m:.2f}x is below the minimum {l:.2f}x",
        "minSpeedup": "speedup {m:.2f}x is below the minimum {l:.2f}x",
    }
    reference = result.speedupBaseline or result.baseline
    if reference is not None and result.final is not None and reference.device != result.final.device:
        words["minSpeedup"] = (
            f"no speedup was measured on one device (the original ran on {reference.device}, the final model on "
            f"{result.final.device}), and a CPU is never compared with a GPU"
        )
    return "; ".join(
        f"gate {g.name} failed: " + words[g.name].format(m=g.measured, l=g.limit) for g in result.gates if not g.passed
    )
