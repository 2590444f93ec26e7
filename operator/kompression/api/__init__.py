"""The CompressionJob API: typed models, cross-field rules, CRD generation and validation."""

from kompression.api.v1alpha1 import CompressionJob, CompressionJobSpec, CompressionJobStatus
from kompression.api.validation import FieldError, ManifestUnreadable, SpecInvalid, parse_job

__all__ = [
    "CompressionJob",
    "CompressionJobSpec",
    "CompressionJobStatus",
    "FieldError",
    "ManifestUnreadable",
    "SpecInvalid",
    "parse_job",
]
