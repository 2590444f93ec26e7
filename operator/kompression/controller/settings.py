"""The operator's settings: one immutable object built from flags and environment variables."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from kompression.api.architectures import DEFAULT_ARCHITECTURE_MODULES

DEFAULT_WORKER_IMAGE = "ghcr.io/kompression/worker:0.1.0"
DEFAULT_WORKER_LLM_IMAGE = "ghcr.io/kompression/worker-llm:0.1.0"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Settings:
    """What an operator replica is configured with. The builders read only this, never globals."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    # The image of jobs with an LLM step (llm-compressor pins its own torch: images/worker-llm).
    worker_llm_image: str = DEFAULT_WORKER_LLM_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    # Handed to the worker as AWS_ENDPOINT_URL when the job's credentials Secret does not set one.
    s3_endpoint: str = ""
    # The URL pods reach the operator's progress server at (a Service in front of the operator).
    progress_base_url: str = "http://kompression-operator.kompression-system.svc:8081"
    pushgateway_url: str = ""
    # How long a worker's storage operation rides out an outage, unless spec.output.retrySeconds says.
    storage_retry_seconds: int = 60
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    max_gpu_jobs: int = 0  # GPU Jobs in flight across the cluster; 0 = unlimited
    max_gpu_jobs_per_namespace: int = 0  # 0 = unlimited
    metrics_port: int = 8080
    progress_port: int = 8081
    health_port: int = 8082
    peering: str = ""  # kopf peering object name; empty runs standalone
    # kopf peering priority: each replica needs a distinct one (equal priorities freeze every
    # replica). None derives one from the pod name; see `effective_priority`.
    priority: int | None = None
    workers: int = 16  # reconciles in flight at once (they wait on the API server, not the CPU)
    progress_interval_s: float = 5.0  # at most one status write per job per interval from progress POSTs
    # The progress port's guard: seconds for a request's head, and again for its body; open connections.
    progress_read_timeout_s: float = 10.0
    progress_max_connections: int = 512
    service_account: str = ""  # the worker pod's ServiceAccount; empty uses the namespace's default
    extra_tolerations: tuple[dict[str, Any], ...] = field(default=())  # added to every worker pod
    worker_node_selector: dict[str, str] = field(default_factory=dict)  # added to every worker pod
    worker_runtime_class: str = ""  # runtimeClassName of worker pods that request GPUs
    log_level: str = "info"  # debug, info, warning or error
    # Module prefixes `architecture` may name; handed to every worker (see api/architectures.py).
    architecture_modules: tuple[str, ...] = DEFAULT_ARCHITECTURE_MODULES
    # Bounds on every connection to the API server. A watch can stall silently, the connection
    # open and nothing arriving (kopf #585, #957, #996): kopf drops and reopens it after these,
    # resuming at the last resourceVersion it saw.
    watch_server_timeout_s: int = 270  # the API server ends each watch after this (whole seconds)
    watch_client_timeout_s: float = 300.0  # a watch request is dropped after this, whatever it does
    watch_inactivity_timeout_s: float = 600.0  # a watch silent for this long is dropped
    api_timeout_s: float = 30.0  # every request that is not a watch
    # A LIST of CompressionJobs, Jobs and pods this often replaces what the watches left in the
    # store. kopf re-lists after a watch ends in 410 Gone, but never reports what was deleted in the
    # gap (client-go's relist does): without this, such ghosts would hold queue slots forever.
    resync_interval_s: float = 300.0
    # How many times a worker Job deleted before it finished is recreated; then the job fails
    # with reason RecreateLimitExceeded instead of looping against whoever deletes it.
    max_job_recreations: int = 3
    # Test and benchmark only: annotations put on every worker pod template (kwok's exit codes).
    pod_annotations: dict[str, str] = field(default_factory=dict)

    def effective_priority(self, pod_name: str | None = None) -> int:
        """This replica's peering priority: the configured one, else one derived from its name.

        With peering, kopf pauses every replica when two share the highest priority (the freeze
        trap), and every replica of a Deployment gets the same flags. A hash of the pod name
        (POD_NAME, else the host name) gives each replica its own priority, stable across restarts.
        """
        if self.priority is not None:
            return self.priority
        if not self.peering:
            return 0
        name = pod_name if pod_name is not None else os.environ.get("POD_NAME") or socket.gethostname()
        return 1 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % (2**31 - 2)
