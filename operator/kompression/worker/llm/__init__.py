"""Causal language models: the LLM techniques (llm-compressor, Model Optimizer) and the checkpoint
folder's evaluator, for the worker-llm image.

llm-compressor pins an older torch and a narrow transformers range than the main worker, so these
modules run in their own environment (images/worker-llm, `make setup-llm`). Only they import
llmcompressor, compressed_tensors and modelopt; the one pipeline imports them by name when a job's
model is a checkpoint folder (evaluation.PREPARE) and when its llmQuantize or llmSparsify step runs
(techniques.TECHNIQUES).
"""

import os

# The LLM path reads only local copies of the job's files. datasets and huggingface_hub read these at
# import, before any module here is imported; offline, datasets' `json` builder (lm-eval's task data)
# skips the download-count request it otherwise sends to the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
