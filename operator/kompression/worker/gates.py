"""Acceptance gates: compare the final model with the original against spec.acceptance."""

from __future__ import annotations

from operator import ge

from kompression.api.v1alpha1 import Acceptance, GateResult, Metrics, Result


def compute_result(baseline: Metrics, final: Metrics) -> Result:
    """The pipeline's outcome figures (gates are added by evaluate)."""
    ratio = baseline.sizeBytes / final.sizeBytes if baseline.sizeBytes and final.sizeBytes else None
    delta = final.accuracy - baseline.accuracy if baseline.accuracy is not None and final.accuracy is not None else None
    speedup = baseline.latencyMs / final.latencyMs if baseline.latencyMs and final.latencyMs else None
    return Result(
        baseline=baseline,
        final=final,
        compressionRatio=None if ratio is None else round(ratio, 4),
        accuracyDelta=None if delta is None else round(delta, 6),
        speedup=None if speedup is None else round(speedup, 4),
    )


def evaluate(acceptance: Acceptance | None, result: Result) -> list[GateResult]:
    """One verdict per configured gate. A gate whose figure could not be measured fails."""
    if acceptance is None:
        return []
    drop = -result.accuracyDelta if result.accuracyDelta is not None else float("inf")
    checks = (  # name, limit, measured, whether measured is within the limit
        ("maxAccuracyDrop", acceptance.maxAccuracyDrop, round(drop, 6), lambda m, lim: m <= lim + 1e-9),
        ("minCompressionRatio", acceptance.minCompressionRatio, result.compressionRatio or 0.0, ge),
        ("minSpeedup", acceptance.minSpeedup, result.speedup or 0.0, ge),
    )
    return [
        GateResult(name=name, passed=within(measured, limit), measured=measured, limit=limit)
        for name, limit, measured, within in checks
        if limit is not None
    ]


def describe_failures(gates: list[GateResult]) -> str:
    """One sentence per failed gate: which, measured value, limit."""
    words = {
        "maxAccuracyDrop": "accuracy dropped by {m:.4f} (limit {l:.4f})",
        "minCompressionRatio": "compression ratio {m:.2f}x is below the minimum {l:.2f}x",
        "minSpeedup": "speedup {m:.2f}x is below the minimum {l:.2f}x",
    }
    return "; ".join(
        f"gate {g.name} failed: " + words[g.name].format(m=g.measured, l=g.limit) for g in gates if not g.passed
    )
