"""Why a created job is not starting, read from pods, Events and Kueue's suspension (table-driven)."""

from __future__ import annotations

import pytest

from graft_operator import pending


def _pod(name="c-head-x", waiting=None, scheduled=None, image="graft:1"):
    status = {}
    if waiting:
        status["containerStatuses"] = [{"image": image, "state": {"waiting": waiting}}]
    if scheduled:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", **scheduled}]
    return {"metadata": {"name": name}, "status": status}


POD_CASES = [
    pytest.param([], None, id="no-pods"),
    pytest.param([_pod()], None, id="pod-fine"),
    pytest.param([_pod(waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image graft:1"})],
                 ("ImagePullBackOff", "pod c-head-x cannot pull image graft:1: Back-off pulling image graft:1"),
                 id="image-pull"),
    pytest.param([_pod(waiting={"reason": "ErrImagePull"})], ("ImagePullBackOff",
                                                              "pod c-head-x cannot pull image graft:1: ErrImagePull"),
                 id="err-image-pull-no-message"),
    pytest.param([_pod(scheduled={"reason": "Unschedulable", "message": "0/3 nodes: 3 Insufficient nvidia.com/gpu"})],
                 ("Unschedulable", "pod c-head-x cannot be scheduled: 0/3 nodes: 3 Insufficient nvidia.com/gpu"),
                 id="unschedulable"),
    pytest.param([_pod(waiting={"reason": "CreateContainerConfigError", "message": 'secret "s3" not found'})],
                 ("ContainerConfigError", 'pod c-head-x cannot start: secret "s3" not found'), id="missing-secret"),
    pytest.param([_pod(waiting={"reason": "ContainerCreating"})], None, id="still-creating"),
]


@pytest.mark.parametrize(("pods", "expected"), POD_CASES)
def test_from_pods(pods, expected):
    assert pending.from_pods(pods) == expected


def test_quota_from_the_latest_events():
    quota = 'pods "c-head-x" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=1'
    events = [
        {"involvedObject": {"kind": "RayCluster", "name": "c"}, "message": "Created head pod", "lastTimestamp": "t1"},
        {"involvedObject": {"kind": "RayCluster", "name": "c"}, "message": quota, "lastTimestamp": "t2"},
    ]
    assert pending.from_events(events) == ("QuotaExceeded", f"RayCluster c: {quota}")
    assert pending.from_events(events[:1]) is None
