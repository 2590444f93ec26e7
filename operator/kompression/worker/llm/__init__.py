"""Causal language models compressed with llm-compressor: the worker-llm image's path.

llm-compressor pins an older torch and a narrow transformers range than the main worker, so these
modules run in their own environment (images/worker-llm, `make setup-llm`). Only they import
llmcompressor and compressed_tensors; `kompression run` picks this path for an llmQuantize or llmSparsify job.
"""
