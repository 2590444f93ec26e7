"""Names shared by the CLI, the operator and the worker: API identity, condition types, labels, exit codes."""

from typing import Final

from kompression.api import failures

GROUP: Final = "kompression.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "CompressionJob"
PLURAL: Final = "compressionjobs"
SINGULAR: Final = "compressionjob"
# Not "cj": that is CronJob's built-in short name, and kubectl resolves built-ins first.
SHORT_NAMES: Final = ("kjob", "kj")
CATEGORIES: Final = ("kompression",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Condition types. Ready/Reconciling/Stalled follow kstatus; Succeeded/Failed let
# `kubectl wait --for=condition=Succeeded` work.
COND_READY: Final = "Ready"
COND_RECONCILING: Final = "Reconciling"
COND_STALLED: Final = "Stalled"
COND_SUCCEEDED: Final = "Succeeded"
COND_FAILED: Final = "Failed"

# Labels and annotations put on every child object.
LABEL_JOB_NAME: Final = f"{GROUP}/job-name"
LABEL_JOB_UID: Final = f"{GROUP}/job-uid"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
ANNOTATION_GENERATION: Final = f"{GROUP}/generation"
# On a worker Job: how many Jobs of its CompressionJob were deleted unfinished before it was made.
ANNOTATION_RECREATION: Final = f"{GROUP}/recreation"
KUEUE_QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
# Kueue's WorkloadPriorityClass of a Job.
KUEUE_PRIORITY_CLASS_LABEL: Final = "kueue.x-k8s.io/priority-class"
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"


class ExitCode:
    """The worker's exit codes, from the failure table (api/failures.py). The operator's
    podFailurePolicy fails a Job at once on the codes that a rerun cannot fix, so they are part of
    the API."""

    OK: Final = 0
    UNEXPECTED: Final = failures.UNEXPECTED.exit_code  # a bug or a transient fault: retried by backoffLimit
    INVALID_SPEC: Final = failures.INVALID_SPEC.exit_code
    MODEL_ERROR: Final = failures.MODEL_ERROR.exit_code
    DATA_ERROR: Final = failures.DATA_ERROR.exit_code
    STORAGE_ERROR: Final = failures.STORAGE_ERROR.exit_code
    GATE_FAILED: Final = failures.GATE_FAILED.exit_code
    RUNTIME_MISSING: Final = failures.RUNTIME_MISSING.exit_code
    STEP_INVALID: Final = failures.STEP_INVALID.exit_code
    STORAGE_REFUSED: Final = failures.STORAGE_REFUSED.exit_code

    # Codes a retry cannot change: podFailurePolicy fails the Job on these without retrying.
    PERMANENT: Final = failures.PERMANENT_EXIT_CODES


# The worker's environment, set by the operator on the pod and by `kompression run` locally.
ENV_JOB_FILE: Final = "KOMPRESSION_JOB_FILE"  # path of the CompressionJob manifest (YAML or JSON)
ENV_PROGRESS_URL: Final = "KOMPRESSION_PROGRESS_URL"  # where the worker POSTs WorkerReports
ENV_PROGRESS_TOKEN_FILE: Final = "KOMPRESSION_PROGRESS_TOKEN_FILE"  # projected, audience-bound token
ENV_PUSHGATEWAY_URL: Final = "KOMPRESSION_PUSHGATEWAY_URL"  # optional Prometheus Pushgateway
ENV_WORKDIR: Final = "KOMPRESSION_WORKDIR"  # scratch space for intermediate files
# Comma-separated module prefixes `architecture` may name (api/architectures.py).
ENV_ARCHITECTURE_MODULES: Final = "KOMPRESSION_ARCHITECTURE_MODULES"
# Seconds one storage operation retries transient faults: spec.output.retrySeconds, else the chart's.
ENV_STORAGE_RETRY_SECONDS: Final = "KOMPRESSION_STORAGE_RETRY_SECONDS"


# Audience of the token the worker presents to the operator: valid for this one job only.
def progress_audience(namespace: str, name: str, uid: str) -> str:
    return f"{GROUP}/progress/{namespace}/{name}/{uid}"


PROGRESS_PATH_PREFIX: Final = "/v1/progress"  # POST {prefix}/{namespace}/{name}
TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"

# The CompressionSweep: one child CompressionJob per trial.
SWEEP_KIND: Final = "CompressionSweep"
SWEEP_PLURAL: Final = "compressionsweeps"
SWEEP_SINGULAR: Final = "compressionsweep"
SWEEP_SHORT_NAMES: Final = ("ksweep",)
SWEEP_CRD_NAME: Final = f"{SWEEP_PLURAL}.{GROUP}"
# On each trial's CompressionJob: the sweep that made it, and the trial's name within it.
LABEL_SWEEP_NAME: Final = f"{GROUP}/sweep-name"
LABEL_SWEEP_TRIAL: Final = f"{GROUP}/sweep-trial"
# The trial's number and its value per axis (JSON), from which the sweep's state is read back.
ANNOTATION_SWEEP_TRIAL_INDEX: Final = f"{GROUP}/sweep-trial-index"
ANNOTATION_SWEEP_PARAMETERS: Final = f"{GROUP}/sweep-parameters"
