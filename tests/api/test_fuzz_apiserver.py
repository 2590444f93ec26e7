"""Generated CompressionJobs around the schema: `kompression validate`'s verdict must equal a real
kube-apiserver's on a server-side dry-run create (strict field validation, as `kubectl create`).

This tests the CEL rules as a CEL library evaluates them, the OpenAPI bounds against pydantic's, and the
type checks (a string where a number goes) on documents nobody wrote by hand. Values are drawn at
and around each bound and pattern, with whole sections present, absent or malformed.
"""

from __future__ import annotations

from typing import Any

import pytest
from admission import DryRun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kompression.api.validation import SpecInvalid, parse_job

pytestmark = pytest.mark.cluster

# About a minute on the 2-core test machine; each example is one dry-run request.
EXAMPLES = 150


def pick(valid: list[Any], invalid: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value: a document needs most fields right before the cross-field rules matter."""
    # Hypothesis favours the ends of a range, so the invalid branch is a value from its middle.
    return st.integers(0, 15).flatmap(lambda n: st.sampled_from(invalid if n == 11 else valid))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


URIS = pick(
    ["s3://b/m.pt2", "file:///m", "pvc://claim/m", "gs://b/x", "az://c/x", "pvc://claim/.m/a..b", "file://.k/m"],
    [
        "http://x/m",
        "s3://",
        "hf://org/m",
        "pvc://Bad_Claim/m",
        "s3://" + "a" * 2044,
        7,
        "pvc://claim/x/../m",
        "pvc://claim/./m",
        "s3://b//m",
        "gs://b/m/..",
        "file://../m",
    ],
)
COUNTS = pick([1, 2, 16, 1.0], [-1, 0, 17, 1000, 1001, "1", True, 1.5])
FRACTIONS = pick([0.01, 0.3, 0.5, 0.99], [0, 0.0, 1, 1.5, -0.1, "0.5", True])


@st.composite
def model(draw: st.DrawFn) -> dict[str, Any]:
    fmt = draw(pick(["TorchExport", "TorchScript", "ONNX", "HuggingFace", "SafeTensors"], ["Pickle", "torchexport"]))
    shape = draw(st.lists(pick([-1, 1, 3, 224, 16384], [0, -2, 1.5, "3", 1048577, 1048576]), min_size=1, max_size=3))
    dtype = draw(optional(pick(["float32", "int64"], ["fp8", 32])))
    inputs = draw(
        pick([[drop_none({"name": "x", "shape": shape, "dtype": dtype})]], [[], [{"name": "", "shape": [1]}]])
    )
    safetensors = fmt == "SafeTensors"
    return drop_none(
        {
            "uri": draw(URIS),
            "format": fmt,
            "inputs": inputs,
            "architecture": draw(
                pick(
                    ["torchvision.models:resnet18" if safetensors else None],
                    ["resnet18", "a.b:c.d", "torchvision.models:resnet18"],
                )
            ),
            "architectureArguments": draw(pick([{"num_classes": 10} if safetensors else None], [[1], "x", {"a": 1}])),
            "trustTorchScriptCode": draw(pick([fmt == "TorchScript" or None], [True, False, "yes"])),
        }
    )


@st.composite
def data_source(draw: st.DrawFn, evaluation: bool = False) -> dict[str, Any]:
    uri, builtin = draw(
        pick([("s3://d/x.npz", None), (None, "Digits")], [(None, None), ("s3://d/x.npz", "Digits"), (None, "MNIST")])
    )
    out = drop_none(
        {
            "uri": uri,
            "builtin": builtin,
            "samples": draw(optional(COUNTS)),
            "batchSize": draw(optional(pick([1, 64, 65536], [0, 65537]))),
        }
    )
    if evaluation:
        out.update(drop_none({"metric": draw(optional(pick(["Top1Accuracy", "OutputAgreement"], ["Accuracy"])))}))
    return out


@st.composite
def step(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    kind = draw(st.sampled_from(["prune", "lowRank", "distill", "quantize", "onnx", "tensorrt"]))
    techniques = {
        "prune": drop_none(
            {
                "method": draw(pick(["L1Structured", "SemiStructured24", "L1Unstructured"], ["l1"])),
                "sparsity": draw(optional(FRACTIONS)),
                "fineTune": draw(optional(st.builds(lambda e: {"epochs": e}, COUNTS))),
            }
        ),
        "lowRank": drop_none(
            {
                "method": draw(pick(["SVD", "Tucker2"], ["Svd", "CP"])),
                # exactly one of the two is valid; none or both is refused
                **draw(
                    pick([{"energy": 0.9}, {"rankRatio": 0.5}], [{}, {"energy": 0.9, "rankRatio": 0.5}, {"energy": 0}])
                ),
                "fineTune": draw(optional(st.builds(lambda e: {"epochs": e}, COUNTS))),
            }
        ),
        "distill": {
            "student": draw(
                pick(
                    [{"fromStep": n} for n in names] + [{"architecture": "torchvision.models:resnet18"}],
                    [{"fromStep": "nope"}, {}, {"fromStep": "a", "architecture": "torchvision.models:resnet18"}],
                )
            ),
            **drop_none({"alpha": draw(optional(FRACTIONS)), "temperature": draw(optional(COUNTS))}),
        },
        "quantize": drop_none(
            {
                "method": draw(pick(["DynamicInt8", "StaticInt8", "FP8", "Float16"], ["Int4", "Fp8"])),
                "calibrator": draw(optional(pick(["Entropy", "MinMax"], ["KL"]))),
                "percentile": draw(optional(pick([90.5, 100], [90, 100.1]))),
            }
        ),
        "onnx": drop_none({"opset": draw(optional(pick([13, 18, 23], [12, 24])))}),
        "tensorrt": drop_none(
            {
                "precision": draw(optional(pick(["FP16", "INT8", "FP8"], ["Int4", "Fp16"]))),
                "profiles": draw(
                    optional(
                        pick(
                            [
                                [{"min": [1, 3], "opt": [4, 3], "max": [8, 3]}],
                                [{"min": [1], "opt": [4], "max": [1048576]}],
                            ],
                            [
                                [{"min": [8], "opt": [4], "max": [2]}],
                                [{"min": [1, 3], "opt": [4], "max": [8]}],
                                [{"min": [1], "opt": [4], "max": [1048577]}],
                                [{"min": [1, 1], "opt": [4, 4], "max": [1048576, 1024]}],
                            ],
                        )
                    )
                ),
            }
        ),
    }
    kinds = draw(pick([[kind]], [[], ["prune", "onnx"]]))
    name = draw(pick([f"s{len(names)}"], ["Bad", "", "a" * 64, "-a", 3, *names[:1]]))
    return {"name": name, **{k: techniques[k] for k in kinds}}


@st.composite
def task(draw: st.DrawFn) -> dict[str, Any]:
    """One entry of data.tasks (refused on these jobs, none of which has an llmQuantize step)."""
    return drop_none(
        {
            "name": draw(pick(["word-order", "t"], ["Word", "", "a" * 64, 3])),
            "uri": draw(pick(["s3://d/t.jsonl", "pvc://claim/t.jsonl"], ["s3://d/t.txt", "hf://o/t.jsonl", 7])),
            "samples": draw(optional(COUNTS)),
            "fewShot": draw(optional(pick([0, 5, 64], [-1, 65, "2", 1.5]))),
        }
    )


@st.composite
def compression_job(draw: st.DrawFn) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for _ in range(draw(pick([1, 2, 3], [0, 17]))):
        steps.append(draw(step([s["name"] for s in steps])))
    data = drop_none(
        {
            "calibration": draw(data_source()) if draw(pick([True], [False])) else None,
            "evaluation": draw(data_source(evaluation=True)) if draw(pick([True], [False])) else None,
            "training": draw(data_source()) if draw(pick([True], [False])) else None,
            "tasks": draw(st.lists(task(), max_size=2)) if draw(pick([False], [True])) else None,
        }
    )
    spec = drop_none(
        {
            "model": draw(model()),
            "data": data or None,
            "steps": steps,
            "acceptance": draw(
                optional(
                    st.builds(
                        lambda d, r: drop_none({"maxAccuracyDrop": d, "minCompressionRatio": r}),
                        optional(FRACTIONS),
                        optional(COUNTS),
                    )
                )
            ),
            "output": draw(
                pick(
                    [{"uri": "s3://out/"}, {"uri": "s3://out/", "credentials": {"secretName": "creds"}}],
                    [{"uri": "s3://out/", "credentials": {"secretName": "Creds_1"}}, {"uri": "ftp://out/"}, {}],
                )
            ),
            "resources": draw(
                optional(
                    st.builds(
                        lambda g, p, m: drop_none({"gpus": g, "gpuProduct": p, "memory": m}),
                        optional(pick([0, 1, 2, 16], [-1, 17, "1", True])),
                        optional(pick(["NVIDIA-H100-80GB-HBM3"], ["-bad"])),
                        optional(pick(["16Gi", "1.5Gi", "500m"], ["16GB", 16])),
                    )
                )
            ),
            "runPolicy": draw(
                optional(st.builds(lambda b: drop_none({"backoffLimit": b}), optional(pick([0, 2, 20], [-1, 21, "2"]))))
            ),
            "unknownField": draw(pick([None], [1])),
        }
    )
    return {
        "apiVersion": "kompression.dev/v1alpha1",
        "kind": "CompressionJob",
        "metadata": {"name": draw(pick(["fuzz", "fuzz.job", "f" * 253], ["", "Fuzz", "f" * 254, "a_b"]))},
        "spec": spec,
    }


def cli_verdict(doc: dict[str, Any]) -> tuple[bool, str]:
    try:
        parse_job(doc)
    except SpecInvalid as exc:
        return False, str(exc)
    return True, ""


def test_cli_and_api_server_agree_on_generated_jobs(dry_run: DryRun, namespace: str) -> None:
    seen = {True: 0, False: 0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same documents every run: a failure reproduces
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(compression_job())
    def agree(doc: dict[str, Any]) -> None:
        cli_ok, cli_why = cli_verdict(doc)
        refusal = dry_run(doc, namespace)
        server_ok, server_why = refusal is None, "" if refusal is None else refusal.body
        assert cli_ok == server_ok, (
            f"CLI {'accepts' if cli_ok else 'rejects'}: {cli_why}\nAPI server: {server_why}\n{doc}"
        )
        seen[cli_ok] += 1

    agree()
    # The generator must reach both verdicts often enough to compare anything.
    assert seen[True] >= 10 and seen[False] >= 10, seen
