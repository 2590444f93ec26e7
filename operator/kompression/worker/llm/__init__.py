"""Causal language models compressed with llm-compressor: the worker-llm image's path.

llm-compressor pins an older torch and a narrow transformers range than the main worker, so these
modules run in their own environment (images/worker-llm, `make setup-llm`). Only they import
llmcompressor and compressed_tensors; `kompression run` picks this path for an llmQuantize or llmSparsify job.
"""

import os

# The LLM path reads only local copies of the job's files. datasets and huggingface_hub read these at
# import, before any module here is imported; offline, datasets' `json` builder (lm-eval's task data)
# skips the download-count request it otherwise sends to the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
