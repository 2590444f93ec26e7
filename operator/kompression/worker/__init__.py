"""The compression worker: loads, compresses, measures and publishes models. Never imports kopf."""
