"""Kompression: a Kubernetes operator that turns a CompressionJob manifest into a smaller, faster model."""

__version__ = "0.1.0"
