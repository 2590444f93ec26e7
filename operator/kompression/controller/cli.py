"""Commands of the controller, registered on the kompression CLI: `operator` and `render`.

Every operator setting is a flag whose default comes from an environment variable, so a
Deployment can set either. kopf and aiohttp are imported only when `operator` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from kompression.api.architectures import module_list_argument
from kompression.api.validation import (
    FieldError,
    ManifestUnreadable,
    SpecInvalid,
    check_architectures,
    load_documents,
    parse_job,
)
from kompression.controller.builders import build_configmap, build_job, build_planning_job, planned
from kompression.controller.settings import Settings
from kompression.extras import ExtraMissing, need, require

ENV_PREFIX = "KOMPRESSION_"
# Stands in for the uid the API server assigns, which the token audience and owner references carry.
RENDER_UID = "00000000-0000-0000-0000-000000000000"


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _json_object(text: str) -> dict[str, str]:
    value = json.loads(text) if text.strip() else {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise argparse.ArgumentTypeError("expected a JSON object of strings")
    return {str(k): v for k, v in value.items()}


def _json_list(text: str) -> tuple[dict[str, Any], ...]:
    value = json.loads(text) if text.strip() else []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise argparse.ArgumentTypeError("expected a JSON list of objects")
    return tuple(value)


def _log_level(text: str) -> str:
    level = text.strip().lower() or "info"
    if level not in ("debug", "info", "warning", "error"):
        raise argparse.ArgumentTypeError("expected debug, info, warning or error")
    return level


# (flag, Settings field, type, help)
_FLAGS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--worker-image", "worker_image", str, "default worker image"),
    ("--worker-llm-image", "worker_llm_image", str, "default worker image of jobs with an LLM step"),
    ("--gpu-resource", "gpu_resource", str, "extended resource name of a GPU"),
    ("--s3-endpoint", "s3_endpoint", str, "default AWS_ENDPOINT_URL for jobs without a credentials Secret"),
    ("--progress-base-url", "progress_base_url", str, "URL at which worker pods reach the progress server"),
    ("--pushgateway-url", "pushgateway_url", str, "Prometheus Pushgateway handed to workers"),
    (
        "--storage-retry-seconds",
        "storage_retry_seconds",
        int,
        "seconds a worker retries a transient storage fault, unless spec.output.retrySeconds says",
    ),
    ("--max-gpu-jobs", "max_gpu_jobs", int, "GPU Jobs in flight cluster-wide (0: unlimited)"),
    (
        "--max-gpu-jobs-per-namespace",
        "max_gpu_jobs_per_namespace",
        int,
        "GPU Jobs in flight per namespace (0: unlimited)",
    ),
    ("--workers", "workers", int, "reconciles in flight at once"),
    ("--metrics-port", "metrics_port", int, "port of /metrics"),
    ("--progress-port", "progress_port", int, "port of the progress server"),
    ("--health-port", "health_port", int, "port of /healthz (liveness and readiness)"),
    ("--peering", "peering", str, "kopf peering object; exactly one replica is active (single-active HA)"),
    (
        "--priority",
        "priority",
        _optional_int,
        "this replica's peering priority; empty derives a distinct one from POD_NAME",
    ),
    ("--progress-interval", "progress_interval_s", float, "seconds between progress status writes per job"),
    (
        "--progress-read-timeout",
        "progress_read_timeout_s",
        float,
        "seconds a progress request may take to send its head, and again its body",
    ),
    ("--progress-max-connections", "progress_max_connections", int, "open connections to the progress port"),
    ("--worker-service-account", "service_account", str, "ServiceAccount of worker pods"),
    ("--worker-node-selector", "worker_node_selector", _json_object, "JSON object of labels every worker pod selects"),
    ("--extra-tolerations", "extra_tolerations", _json_list, "JSON list of tolerations added to every worker pod"),
    ("--worker-runtime-class", "worker_runtime_class", str, "runtimeClassName of worker pods that request GPUs"),
    ("--log-level", "log_level", _log_level, "debug, info, warning or error"),
    ("--watch-server-timeout", "watch_server_timeout_s", int, "seconds the API server keeps one watch request open"),
    ("--watch-client-timeout", "watch_client_timeout_s", float, "seconds after which a watch request is dropped"),
    (
        "--watch-inactivity-timeout",
        "watch_inactivity_timeout_s",
        float,
        "seconds of silence after which a watch is dropped and reopened (a stalled connection)",
    ),
    ("--api-timeout", "api_timeout_s", float, "seconds a request other than a watch may take"),
    (
        "--resync-interval",
        "resync_interval_s",
        float,
        "seconds between full LISTs that drop objects the watches missed the deletion of",
    ),
    (
        "--max-job-recreations",
        "max_job_recreations",
        int,
        "times a worker Job deleted before it finished is recreated before the job fails",
    ),
    (
        "--architecture-modules",
        "architecture_modules",
        module_list_argument,
        "comma-separated module prefixes a job's `architecture` may name (handed to workers)",
    ),
    (
        "--worker-pod-annotations",
        "pod_annotations",
        _json_object,
        "JSON object of annotations on worker pods (tests and benchmarks)",
    ),
)


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper().removesuffix("_S")


def _add_settings(p: argparse.ArgumentParser) -> None:
    defaults = Settings()
    for flag, field, kind, text in _FLAGS:
        env = _env_name(field)
        # An empty variable (a chart value left blank) means the default, not an error.
        # A string default goes through `type` when this subcommand is parsed, so a bad value is
        # reported as a usage error of that command only.
        default = os.environ[env] if os.environ.get(env, "").strip() else getattr(defaults, field)
        p.add_argument(flag, dest=field, type=kind, default=default, help=f"{text} (env {env}; default %(default)s)")


def settings_from(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {field: getattr(args, field) for _, field, _, _ in _FLAGS}
    namespaces = getattr(args, "namespaces", "") or ""
    values["namespaces"] = tuple(n for n in namespaces.split(",") if n)
    return Settings(**values)


def _operator(args: argparse.Namespace) -> int:
    try:
        require(need("`kompression operator`", "operator"))
    except ExtraMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    from kompression.controller.handlers import run  # kopf, aiohttp: only for this command

    settings = settings_from(args)
    if args.verbose:
        settings = replace(settings, log_level="debug")
    return run(settings)


def render(docs: list[Any], settings: Settings) -> str:

    out: list[dict[str, Any]] = []
    for doc in docs:
        # What the API server fills in; a malformed document is left for parse_job to explain.
        if isinstance(doc, dict) and isinstance(doc.setdefault("metadata", {}), dict):
            for key, value in (("namespace", "default"), ("uid", RENDER_UID), ("generation", 1)):
                doc["metadata"].setdefault(key, value)
        job = parse_job(doc)
        if not job.metadata.name:
            reason = "render needs metadata.name: the API server picks the name from generateName only at create"
            raise SpecInvalid([FieldError("metadata.name", reason)], None)
        check_architectures(job, settings.architecture_modules)  # as the operator would (reconcile.sync)
        # An LLM job's planning Job runs first; an unset memory or ephemeralStorage then reaches the
        # worker Job as the plan's figure, which only the planning pod can know (the defaults show here).
        out += [
            build_configmap(job),
            *([build_planning_job(job, settings)] if planned(job) else []),
            build_job(job, settings),
        ]
    return yaml.safe_dump_all(out, sort_keys=False)


def _render(args: argparse.Namespace) -> int:

    try:
        docs = load_documents(Path(args.file))
        text = render(docs, settings_from(args))
    except ManifestUnreadable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SpecInvalid as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def register(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Add this package's subcommands."""
    p = sub.add_parser("operator", help="run the operator (reconciles CompressionJobs into Jobs)")
    p.add_argument(
        "--namespaces",
        default=os.environ.get(ENV_PREFIX + "NAMESPACES", ""),
        help="comma-separated namespaces to watch; empty watches all (env KOMPRESSION_NAMESPACES)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every reconcile")
    _add_settings(p)
    p.set_defaults(func=_operator)

    p = sub.add_parser(
        "render",
        help="print the ConfigMap and batch/v1 Jobs the operator would create for FILE (an LLM job's planning Job too)",
    )
    p.add_argument("file", metavar="FILE")
    _add_settings(p)
    p.set_defaults(func=_render)
