"""Starting a job (`lifecycle.start`): its RayJob is made, then one status write names it; a start
that dies between the two makes no second RayJob; the user hears once about every local path in the spec."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest

from graft_operator import builder, client, lifecycle, memory
from graft_operator.supervisor import Supervisor

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "/models/w.pt"},
    "data": {"train": "/data/train"},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
    "storage": {"uri": "/shared/jobs"},
}
BODY = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
        "metadata": {"uid": "uid-1", "name": "job", "namespace": "ml", "generation": 1}, "spec": SPEC}


class FakeKube:
    """What start() writes: status patches and created objects, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.status: dict = {}
        self.objects: dict[tuple[str, str], dict] = {}

    async def merge_patch(self, kind, name, namespace, body, *, status=False):
        self.calls.append(("patch status" if status else "patch", kind))
        self.status = {k: v for k, v in {**self.status, **body.get("status", {})}.items() if v is not None}
        return {"status": copy.deepcopy(self.status)}

    async def create(self, obj):
        self.calls.append(("create", obj["kind"]))
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            raise client.Conflict(f"{key} exists")
        self.objects[key] = copy.deepcopy(obj)
        return copy.deepcopy(obj)

    async def get(self, kind, name, namespace):
        self.calls.append(("get", kind))
        return copy.deepcopy(self.objects.get((kind, name)))


def _start(mem, body=BODY):
    """lifecycle.start, then the mirror loop until it has written the first status (or 10 s have passed)."""
    async def go():
        await lifecycle.start(mem, copy.deepcopy(body), logging.getLogger("test"))
        for _ in range(100):
            if mem.api.status:
                break
            await asyncio.sleep(0.1)
        await mem.supervisor.stop()
        await mem.reads.close()

    asyncio.run(go())


def test_start_makes_the_children_then_names_the_rayjob_in_one_status_write_and_warns_once_about_local_paths(
        monkeypatch):
    events: list[tuple] = []
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: events.append(e))
    monkeypatch.setattr(memory, "event", lambda body, *e: events.append(e))
    api = FakeKube()
    mem = memory.Memory(api)
    mem.supervisor = Supervisor(mem)
    _start(mem)
    assert api.calls[:2] == [("create", "RayJob"), ("patch status", "TransferJob")]
    assert api.status["rayJobName"] == builder.rayjob_name("job", "uid-1")
    assert (api.status["phase"], api.status["reason"]) == ("Pending", "ClusterStarting")
    warnings = [e for e in events if e[1] == "StorageNotShared"]
    assert len(warnings) == 1, events
    for path in ("spec.storage.uri", "spec.model.weights", "spec.data.train"):
        assert path in warnings[0][2]
    # RayJobCreated says it; a ClusterStarting Event milliseconds later would say the same again
    assert [e[1] for e in events if e[1] != "StorageNotShared"] == ["RayJobCreated"]


def test_a_start_that_died_before_its_status_write_adopts_its_rayjob_and_makes_no_second_one(monkeypatch):
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: None)
    monkeypatch.setattr(memory, "event", lambda body, *e: None)
    api = FakeKube()
    # What the dead operator left: the RayJob, owned by the job, and no status at all.
    rayjob = builder.build_owned_rayjob(copy.deepcopy(BODY), lifecycle.validate_for_cluster(copy.deepcopy(SPEC))[0])
    api.objects = {("RayJob", rayjob["metadata"]["name"]): rayjob}
    mem = memory.Memory(api)
    mem.supervisor = Supervisor(mem)
    _start(mem)
    assert [c for c in api.calls if c[0] == "create"] == [("create", "RayJob")]
    assert len([k for k in api.objects if k[0] == "RayJob"]) == 1
    assert api.status["rayJobName"] == rayjob["metadata"]["name"]


def test_the_first_status_write_waits_for_kuberays_first_status_and_says_both(monkeypatch):
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: None)
    monkeypatch.setattr(memory, "event", lambda body, *e: None)
    api = FakeKube()
    mem = memory.Memory(api, rayjobs={})  # kopf's index of our RayJobs, as the RayJob watch fills it
    mem.supervisor = Supervisor(mem)
    name = builder.rayjob_name("job", "uid-1")

    async def go():
        await lifecycle.start(mem, copy.deepcopy(BODY), logging.getLogger("test"))
        await asyncio.sleep(0.5)
        assert api.status == {}, "written before KubeRay said anything about the RayJob"
        seen = copy.deepcopy(api.objects[("RayJob", name)])
        seen["status"] = {"jobDeploymentStatus": "Initializing", "jobStatus": "PENDING"}
        mem.rayjobs[("ml", name)] = [seen]
        mem.supervisor.kick("uid-1")  # what the RayJob watch does
        for _ in range(50):
            if api.status:
                break
            await asyncio.sleep(0.05)
        await mem.supervisor.stop()
        await mem.reads.close()

    asyncio.run(go())
    assert api.calls.count(("patch status", "TransferJob")) == 1
    assert (api.status["rayJobName"], api.status["reason"], api.status["jobDeploymentStatus"]) == (
        name, "ClusterStarting", "Initializing")


def test_a_refused_spec_fixed_by_a_new_generation_is_followed_as_the_new_run_not_as_the_refusal(monkeypatch):
    """Issue 24: the refusal's Failed/InvalidSpec belongs to the old generation; once the fixed spec's RayJob exists
    the status names it and follows it (it used to stay Failed/InvalidSpec, Stalled, with the RayJob running)."""
    events: list[tuple] = []
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: events.append(e))
    monkeypatch.setattr(memory, "event", lambda body, *e: events.append(e))
    api = FakeKube()
    mem = memory.Memory(api, rayjobs={})
    mem.supervisor = Supervisor(mem)
    name = builder.rayjob_name("job", "uid-1")
    refused = copy.deepcopy(BODY)
    refused["spec"]["workers"] = {"cpus": "0"}  # the API server takes it, Graft does not

    async def wait_for(check):
        for _ in range(100):
            if check():
                return
            await asyncio.sleep(0.05)

    async def go():
        await lifecycle.start(mem, copy.deepcopy(refused), logging.getLogger("test"))
        assert (api.status["phase"], api.status["reason"]) == ("Failed", "InvalidSpec")
        fixed = {**copy.deepcopy(BODY), "status": copy.deepcopy(api.status)}
        fixed["metadata"]["generation"] = 2
        await lifecycle.start(mem, fixed, logging.getLogger("test"))
        await asyncio.sleep(0.3)  # the first look comes before KubeRay's first status of the RayJob
        seen = copy.deepcopy(api.objects[("RayJob", name)])
        seen["status"] = {"jobDeploymentStatus": "Initializing", "jobStatus": "PENDING"}
        mem.rayjobs[("ml", name)] = [seen]
        mem.supervisor.kick("uid-1")  # what the RayJob watch does
        await wait_for(lambda: api.status.get("rayJobName"))
        first = copy.deepcopy(api.status)
        seen = copy.deepcopy(seen)
        seen["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
        mem.rayjobs[("ml", name)] = [seen]
        mem.supervisor.kick("uid-1")
        await wait_for(lambda: api.status.get("phase") == "Running")
        await mem.supervisor.stop()
        await mem.reads.close()
        return first

    first = asyncio.run(go())
    conditions = {c["type"]: c["status"] for c in first["conditions"]}
    assert "RayJobCreated" in [e[1] for e in events]
    assert (first.get("rayJobName"), first["phase"], first["reason"], first["observedGeneration"]) == (
        name, "Pending", "ClusterStarting", 2)
    assert (conditions["Created"], conditions.get("Stalled", "False")) == ("True", "False"), first["conditions"]
    assert api.status["phase"] == "Running", api.status


@pytest.mark.parametrize(("stored", "standing"), [
    pytest.param({}, memory.Standing.NEW, id="no-status"),
    pytest.param({"phase": "Failed", "reason": "InvalidSpec"}, memory.Standing.REFUSED, id="refused"),
    # The refusal of a later generation never makes a run final, whatever else the status still says (issue 24).
    pytest.param({"phase": "Failed", "reason": "InvalidSpec", "rayJobName": "job-x"}, memory.Standing.REFUSED,
                 id="refused-naming-a-rayjob"),
    pytest.param({"phase": "Pending", "reason": "ClusterStarting", "rayJobName": "job-x"}, memory.Standing.STARTED,
                 id="started"),
    pytest.param({"phase": "Failed", "reason": "BackoffLimitExceeded", "rayJobName": "job-x"},
                 memory.Standing.FINISHED, id="run-failed"),
    pytest.param({"phase": "Succeeded", "reason": "Succeeded", "rayJobName": "job-x"}, memory.Standing.FINISHED,
                 id="run-succeeded"),
])
def test_where_a_job_stands_is_read_from_its_stored_status_and_only_a_run_is_ever_final(stored, standing):
    assert memory.Standing.of(stored) is standing


HOST_PATH_POD = {"volumes": [{"name": "nvme", "hostPath": {"path": "/mnt/nvme"}}],
                 "volumeMounts": [{"name": "nvme", "mountPath": "/nvme"}]}


@pytest.mark.parametrize("allow", [frozenset(), frozenset({"hostPath"})], ids=["operator-refuses", "operator-allows"])
def test_a_new_hostpath_job_runs_only_where_the_operator_allows_it(monkeypatch, allow):
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: None)
    monkeypatch.setattr(memory, "event", lambda body, *e: None)
    api = FakeKube()
    mem = memory.Memory(api, pod_security_allow=allow)
    mem.supervisor = Supervisor(mem)
    _start(mem, {**BODY, "spec": {**SPEC, "pod": HOST_PATH_POD}})
    if allow:
        assert [c for c in api.calls if c[0] == "create"] == [("create", "RayJob")]
    else:
        assert [c for c in api.calls if c[0] == "create"] == []
        assert (api.status["phase"], api.status["reason"]) == ("Failed", "InvalidSpec")
        assert "spec.pod.volumes[0].hostPath" in api.status["message"]


def test_a_started_job_runs_on_after_a_restart_that_no_longer_allows_its_exception(monkeypatch):
    """Made under `--allow hostPath`, resumed by an operator without it: its RayJob is adopted and followed, not
    refused (refusing would only freeze its status; the pods run either way)."""
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: None)
    monkeypatch.setattr(memory, "event", lambda body, *e: None)
    body = {**BODY, "spec": {**SPEC, "pod": HOST_PATH_POD}}
    spec = lifecycle.validate_for_cluster(copy.deepcopy(body["spec"]), {"hostPath"})[0]
    rayjob = builder.build_owned_rayjob(copy.deepcopy(body), spec)
    api = FakeKube()
    api.objects = {("RayJob", rayjob["metadata"]["name"]): rayjob}
    body["status"] = {"phase": "Pending", "reason": "ClusterStarting", "rayJobName": rayjob["metadata"]["name"]}
    mem = memory.Memory(api)  # allows nothing
    mem.supervisor = Supervisor(mem)
    _start(mem, body)
    # Adopted (the create answers 409) and handed to the mirror loop; a refusal would create nothing and follow nothing.
    assert [c for c in api.calls if c[0] == "create"] == [("create", "RayJob")]
    assert len([k for k in api.objects if k[0] == "RayJob"]) == 1
    assert api.status.get("reason") != "InvalidSpec", api.status
