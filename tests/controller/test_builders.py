"""The child manifests, built without a cluster."""

from __future__ import annotations

import yaml

from factories import manifest
from kompression.api.constants import (
    ENV_JOB_FILE,
    ENV_PROGRESS_TOKEN_FILE,
    ENV_PROGRESS_URL,
    ENV_STORAGE_RETRY_SECONDS,
    GPU_PRODUCT_LABEL,
    KUEUE_QUEUE_LABEL,
    ExitCode,
    progress_audience,
)
from kompression.api.v1alpha1 import DEFAULT_ACTIVE_DEADLINE_SECONDS
from kompression.api.validation import parse_job
from kompression.controller.builders import build_configmap, build_job, job_spec_drift
from kompression.controller.naming import MAX_JOB_NAME, configmap_name, job_name
from kompression.controller.settings import Settings
from kompression.controller.views import JobView

SETTINGS = Settings(
    worker_image="registry.local/worker:1", progress_base_url="http://op:8081", s3_endpoint="http://s3:9000"
)


def _job(**spec: object) -> dict:
    return build_job(parse_job(manifest(**spec)), SETTINGS)


def _pod(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_job_is_owned_named_and_runs_the_worker_on_the_configmap() -> None:
    job = _job()
    assert job["metadata"]["name"] == "resnet"
    (owner,) = job["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "name": "resnet",
        "uid": "0b1c-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    (container,) = _pod(job)["containers"]
    assert container["image"] == "registry.local/worker:1"
    assert container["command"] == ["kompression", "run", "/etc/kompression/job.yaml"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[ENV_JOB_FILE] == "/etc/kompression/job.yaml"
    assert env[ENV_PROGRESS_URL] == "http://op:8081/v1/progress/team-a/resnet"
    assert env[ENV_PROGRESS_TOKEN_FILE].startswith("/var/run/secrets/kompression/progress/")
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_storage_retry_budget_comes_from_the_spec_else_the_operator() -> None:
    def budget(job: dict) -> str:
        return str({e["name"]: e["value"] for e in _pod(job)["containers"][0]["env"]}[ENV_STORAGE_RETRY_SECONDS])

    assert budget(_job()) == str(SETTINGS.storage_retry_seconds) == "60"
    assert budget(_job(output={"uri": "s3://out/resnet/", "retrySeconds": 0})) == "0"
    chart = Settings(storage_retry_seconds=15)
    assert budget(build_job(parse_job(manifest()), chart)) == "15"


def test_per_job_image_overrides_the_default() -> None:
    assert _pod(_job(worker={"image": "mine:2"}))["containers"][0]["image"] == "mine:2"


def test_gpu_limits_product_selector_and_toleration() -> None:
    pod = _pod(_job(resources={"gpus": 2, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "memory": "32Gi", "cpu": "8"}))
    res = pod["containers"][0]["resources"]
    assert res["limits"] == {"memory": "32Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "2"}
    assert res["requests"] == {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "20Gi"}
    assert pod["nodeSelector"] == {GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_several_gpus_run_one_rank_each() -> None:
    one = _pod(_job(resources={"gpus": 1}))["containers"][0]["command"]
    four = _pod(_job(resources={"gpus": 4}))["containers"][0]["command"]
    assert one == ["kompression", "run", "/etc/kompression/job.yaml"]
    assert four == [*one, "--nproc-per-node", "4"]


def test_gpu_resource_name_is_a_setting() -> None:
    job = build_job(parse_job(manifest(resources={"gpus": 1})), Settings(gpu_resource="amd.com/gpu"))
    assert _pod(job)["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "1"


def test_cpu_job_has_no_gpu_scheduling() -> None:
    pod = _pod(_job(resources={"gpus": 0}))
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]


def test_pod_meets_pss_restricted() -> None:
    pod = _pod(_job())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    # restricted allows only these volume types
    allowed = {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
    for vol in pod["volumes"]:
        assert set(vol) - {"name"} <= allowed
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/scratch", "/tmp"} <= mounts


def test_only_the_single_audience_progress_token_is_mounted() -> None:
    pod = _pod(_job())
    assert pod["automountServiceAccountToken"] is False
    (projected,) = [v["projected"] for v in pod["volumes"] if "projected" in v]
    (source,) = projected["sources"]
    assert source["serviceAccountToken"]["audience"] == progress_audience("team-a", "resnet", "0b1c-uid")


def test_credentials_are_referenced_never_copied() -> None:
    job = _job(output={"uri": "s3://out/x/", "credentials": {"secretName": "s3-creds"}})
    container = _pod(job)["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # with a Secret, the endpoint is the Secret's to set (env would override envFrom)
    assert "AWS_ENDPOINT_URL" not in {e["name"] for e in container["env"]}
    assert "s3-creds" not in yaml.safe_dump(container["env"])


def test_every_job_has_a_deadline_the_author_may_change() -> None:
    assert _job()["spec"]["activeDeadlineSeconds"] == DEFAULT_ACTIVE_DEADLINE_SECONDS == 86_400
    assert _job(runPolicy={"activeDeadlineSeconds": 172_800})["spec"]["activeDeadlineSeconds"] == 172_800


def test_run_policy_carries_over_and_pod_failure_policy_fails_on_permanent_codes() -> None:
    job = _job(
        runPolicy={
            "backoffLimit": 4,
            "activeDeadlineSeconds": 600,
            "ttlSecondsAfterFinished": 60,
            "priorityClassName": "batch-high",
        }
    )
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (4, 600, 60)
    assert spec["suspend"] is False
    assert _pod(job)["priorityClassName"] == "batch-high"
    assert _pod(job)["restartPolicy"] == "Never"
    fail, ignore = spec["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"]["values"] == list(ExitCode.PERMANENT)
    assert ExitCode.UNEXPECTED not in fail["onExitCodes"]["values"]
    assert ExitCode.STORAGE_ERROR not in fail["onExitCodes"]["values"]
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_queue_name_labels_the_job_and_creates_it_suspended() -> None:
    job = _job(runPolicy={"queueName": "gpu"})
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "gpu"
    assert job["spec"]["suspend"] is True
    # Kueue owns suspend from then on: no drift patch unsuspends it
    cr = parse_job(manifest(runPolicy={"queueName": "gpu"}))
    assert job_spec_drift(cr, JobView.of(job)) == {}


def test_suspend_drift_both_ways() -> None:
    running = _job()
    suspended = parse_job(manifest(runPolicy={"suspend": True}))
    assert job_spec_drift(suspended, JobView.of(running)) == {"spec": {"suspend": True}}
    resumed = parse_job(manifest(runPolicy={"suspend": False}))
    assert job_spec_drift(resumed, JobView.of(_job(runPolicy={"suspend": True}))) == {"spec": {"suspend": False}}
    assert job_spec_drift(resumed, JobView.of(running)) == {}


def test_configmap_holds_the_manifest_without_status() -> None:
    doc = manifest()
    doc["status"] = {"phase": "Running"}
    cm = build_configmap(parse_job(doc))
    assert cm["metadata"]["name"] == "resnet-job"
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "0b1c-uid"
    assert cm["immutable"] is True
    loaded = yaml.safe_load(cm["data"]["job.yaml"])
    assert "status" not in loaded
    assert parse_job(loaded).spec == parse_job(doc).spec


def test_names_are_deterministic_and_bounded() -> None:
    long = "a" * 200
    assert job_name(long) == job_name(long)
    assert len(job_name(long)) == MAX_JOB_NAME
    assert job_name(long) != job_name("a" * 199)
    assert job_name("short") == "short"
    assert len(configmap_name("b" * 253)) <= 253


def test_pvc_claims_are_mounted_read_only_for_inputs_and_read_write_for_the_output() -> None:
    job = _job(
        model={
            "uri": "pvc://models/resnet/model.pt2",
            "format": "TorchExport",
            "inputs": [{"name": "x", "shape": [-1, 3, 8, 8]}],
        },
        data={
            "calibration": {"uri": "pvc://datasets.team-a/calib.npz"},
            "evaluation": {"uri": "pvc://models/val.npz"},  # a second use of a claim: one volume
            "training": {"uri": "s3://data/train.npz"},
        },
        output={"uri": "pvc://results/resnet/"},
    )
    pod = _pod(job)
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {
        "pvc-0": {"claimName": "models", "readOnly": True},
        "pvc-1": {"claimName": "datasets.team-a", "readOnly": True},
        "pvc-2": {"claimName": "results", "readOnly": False},
    }
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["pvc-0"] == {"name": "pvc-0", "mountPath": "/mnt/pvc/models", "readOnly": True}
    assert mounts["pvc-1"] == {"name": "pvc-1", "mountPath": "/mnt/pvc/datasets.team-a", "readOnly": True}
    assert mounts["pvc-2"] == {"name": "pvc-2", "mountPath": "/mnt/pvc/results", "readOnly": False}
    assert {"name": "KOMPRESSION_PVC_ROOT", "value": "/mnt/pvc"} in container["env"]


def test_the_step_caches_claim_is_mounted_read_write() -> None:
    job = _job(output={"uri": "s3://results/resnet/"}, stepCache={"uri": "pvc://sweep-cache/steps/"})
    pod = _pod(job)
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": "sweep-cache", "readOnly": False}]


def test_a_claim_read_and_written_is_mounted_once_read_write() -> None:
    pod = _pod(
        _job(
            model={
                "uri": "pvc://work/in/model.pt2",
                "format": "TorchExport",
                "inputs": [{"name": "x", "shape": [-1, 3, 8, 8]}],
            },
            output={"uri": "pvc://work/out/"},
        )
    )
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim == {"name": "pvc-0", "persistentVolumeClaim": {"claimName": "work", "readOnly": False}}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "pvc-0"]
    assert mount["readOnly"] is False


def test_jobs_without_pvc_uris_mount_no_claims() -> None:
    pod = _pod(_job())
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert "KOMPRESSION_PVC_ROOT" not in {e["name"] for e in pod["containers"][0]["env"]}


def test_scratch_and_ephemeral_storage_are_bounded_by_the_spec() -> None:
    for spec, size in (({}, "20Gi"), ({"resources": {"ephemeralStorage": "200Gi"}}, "200Gi")):
        pod = _pod(_job(**spec))
        (scratch,) = [v for v in pod["volumes"] if v["name"] == "scratch"]
        assert scratch["emptyDir"] == {"sizeLimit": size}
        resources = pod["containers"][0]["resources"]
        assert resources["requests"]["ephemeral-storage"] == size
        assert resources["limits"]["ephemeral-storage"] == size


def test_a_low_priority_llm_calibration_is_retried_after_preemption_without_spending_its_retries() -> None:
    """docs/steps.md (llmQuantize: Resuming): a pod that is evicted or preempted carries the
    DisruptionTarget condition, which the Job's podFailurePolicy ignores, so the Job starts another
    pod (which resumes at the first unfinished layer) and backoffLimit counts only real failures."""
    llm = {
        "model": {
            "uri": "s3://models/llama/",
            "format": "HuggingFace",
            "inputs": [{"name": "input_ids", "shape": [-1, -1], "dtype": "int64"}],
        },
        "data": {
            "calibration": {"uri": "s3://data/calibration.jsonl", "samples": 512, "maxLength": 2048},
            "evaluation": {"uri": "s3://data/eval.txt", "samples": 256, "maxLength": 2048},
        },
        "steps": [{"name": "w4a16", "llmQuantize": {"scheme": "W4A16", "algorithm": "GPTQ"}}],
        "acceptance": {},
        "resources": {"gpus": 1},
        "runPolicy": {"priorityClassName": "batch-low", "backoffLimit": 2},
    }
    job = _job(**llm)
    assert _pod(job)["priorityClassName"] == "batch-low"
    assert job["spec"]["backoffLimit"] == 2
    rules = job["spec"]["podFailurePolicy"]["rules"]
    disruption = [r for r in rules if r.get("onPodConditions") == [{"type": "DisruptionTarget", "status": "True"}]]
    assert [r["action"] for r in disruption] == ["Ignore"]
