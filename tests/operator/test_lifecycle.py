"""Starting a job (`lifecycle.start`): the RayJob's name is recorded before its children are made, and the user
hears once about every local path in the spec."""

from __future__ import annotations

import asyncio
import copy
import logging

from graft.operator import builder, lifecycle, memory
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

    async def merge_patch(self, kind, name, namespace, body, *, status=False):
        self.calls.append(("patch status" if status else "patch", kind))
        self.status = {k: v for k, v in {**self.status, **body.get("status", {})}.items() if v is not None}
        return {"status": copy.deepcopy(self.status)}

    async def create(self, obj):
        self.calls.append(("create", obj["kind"]))
        return copy.deepcopy(obj)


def test_start_records_the_name_first_and_warns_once_about_every_local_path(monkeypatch):
    events: list[tuple] = []
    monkeypatch.setattr(lifecycle, "event", lambda body, *e: events.append(e))
    monkeypatch.setattr(memory, "event", lambda body, *e: events.append(e))
    api = FakeKube()
    mem = memory.Memory(api)
    mem.supervisor = Supervisor(mem)

    async def go():
        await lifecycle.start(mem, copy.deepcopy(BODY), logging.getLogger("test"))
        await mem.supervisor.stop()
        await mem.reads.close()

    asyncio.run(go())
    assert api.calls[:3] == [("patch status", "TransferJob"), ("create", "ConfigMap"), ("create", "RayJob")]
    assert api.status["rayJobName"] == builder.rayjob_name("job", "uid-1")
    warnings = [e for e in events if e[1] == "StorageNotShared"]
    assert len(warnings) == 1, events
    for path in ("spec.storage.uri", "spec.model.weights", "spec.data.train"):
        assert path in warnings[0][2]
    assert [e[1] for e in events if e[1] != "StorageNotShared"][:1] == ["RayJobCreated"]
