"""How a model is scored (accuracy, latency, size) and judged against the acceptance gates."""
