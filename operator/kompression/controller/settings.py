"""The operator's settings: one immutable object built from flags and environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_WORKER_IMAGE = "ghcr.io/kompression/worker:0.1.0"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Settings:
    """What an operator replica is configured with. The builders read only this, never globals."""

    worker_image: str = DEFAULT_WORKER_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    # Handed to the worker as AWS_ENDPOINT_URL when the job's credentials Secret does not set one.
    s3_endpoint: str = ""
    # The URL pods reach the operator's progress server at (a Service in front of the operator).
    progress_base_url: str = "http://kompression-operator.kompression-system.svc:8081"
    pushgateway_url: str = ""
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    max_gpu_jobs: int = 0  # GPU Jobs in flight across the cluster; 0 = unlimited
    max_gpu_jobs_per_namespace: int = 0  # 0 = unlimited
    metrics_port: int = 8080
    progress_port: int = 8081
    health_port: int = 8082
    peering: str = ""  # kopf peering object name; empty runs standalone
    priority: int = 0  # kopf peering priority: each replica needs a distinct one
    progress_interval_s: float = 5.0  # at most one status write per job per interval from progress POSTs
    service_account: str = ""  # the worker pod's ServiceAccount; empty uses the namespace's default
    extra_tolerations: tuple[dict[str, str], ...] = field(default=())
