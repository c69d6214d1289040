"""Starting a job (`lifecycle.start`): its RayJob is made, then one status write names it; a start
that dies between the two makes no second RayJob; the user hears once about every local path in the spec."""

from __future__ import annotations

import asyncio
import copy
import logging

from graft.operator import builder, client, lifecycle, memory
from graft.operator.supervisor import Supervisor

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
