"""The operator: reconciles CompressionJobs into batch/v1 Jobs. Never imports torch."""
