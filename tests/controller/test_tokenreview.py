"""What a TokenReview must prove before a progress report counts, and which audience is asked about."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kompression.api.constants import progress_audience
from kompression.controller.tokenreview import POD_NAME_EXTRA, POD_UID_EXTRA, BoundPod, bound_pod, claimed_audience

AUDIENCE = progress_audience("team-a", "resnet", "0b1c-uid")


def _status(**changes: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "authenticated": True,
        "audiences": [AUDIENCE],
        "user": {
            "username": "system:serviceaccount:team-a:default",
            "extra": {POD_NAME_EXTRA: ["resnet-abcde"], POD_UID_EXTRA: ["pod-uid-1"]},
        },
    }
    for key, value in changes.items():
        if key in ("username", "extra"):
            status["user"][key] = value
        else:
            status[key] = value
    return status


def test_a_review_that_proves_everything_names_the_pod() -> None:
    assert bound_pod(_status(), AUDIENCE, "team-a") == BoundPod("team-a", "resnet-abcde", "pod-uid-1")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"authenticated": False}, "not authenticated"),
        ({"audiences": []}, "the authenticator ignored the audience"),
        ({"audiences": None}, "no audiences at all"),
        ({"audiences": ["kompression.dev/progress/team-a/other/uid"]}, "another job's audience"),
        ({"username": "system:serviceaccount:team-b:default"}, "a ServiceAccount of another namespace"),
        ({"username": "alice"}, "not a ServiceAccount"),
        ({"username": "system:serviceaccount:team-a"}, "no ServiceAccount name"),
        ({"extra": {POD_NAME_EXTRA: ["resnet-abcde"]}}, "no pod-uid binding"),
        ({"extra": {}}, "not bound to a pod"),
        ({"extra": {POD_NAME_EXTRA: ["a", "b"], POD_UID_EXTRA: ["1", "2"]}}, "two pods"),
    ],
)
def test_a_review_that_proves_less_is_refused(changes: dict[str, Any], why: str) -> None:
    assert bound_pod(_status(**changes), AUDIENCE, "team-a") is None, why


def _jwt(claims: Any) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_the_audience_asked_about_is_the_tokens_own_claim_for_this_job() -> None:
    prefix = progress_audience("team-a", "resnet", "")
    assert claimed_audience(_jwt({"aud": [AUDIENCE]}), prefix) == AUDIENCE
    assert claimed_audience(_jwt({"aud": AUDIENCE}), prefix) == AUDIENCE
    assert claimed_audience(_jwt({"aud": ["https://kubernetes.default.svc"]}), prefix) is None
    # resnet is not a prefix of resnet2's audience
    assert claimed_audience(_jwt({"aud": [progress_audience("team-a", "resnet2", "u")]}), prefix) is None
    for garbage in ("", "abc", "a.b.c", "a.!!!.c", _jwt([1, 2]), _jwt({"aud": 7}), "x" * 20000):
        assert claimed_audience(garbage, prefix) is None
