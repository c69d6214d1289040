"""A stage type Graft does not ship: a toy one, declared whole in this module (its API model, its `StageType`) and
registered here, runs through the Driver on real Ray (2 gloo workers) like the built-in stages, and the spec identity
follows what the toy declares. The registry is the only place the driver, `identity.py` and the export look a stage
type up, so nothing else in Graft has to know the toy."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from graft import storage
from graft.api.models import (
    FrozenFeaturesStage,
    FullFineTuneStage,
    HeadStage,
    PretrainStage,
    StageState,
    TransferJob,
    TransferJobSpec,
)
from graft_trainer import identity, registry
from graft_trainer.driver import Driver
from graft_trainer.stagetype import StageResult, StageType


class ToyStage(BaseModel):
    """The toy's API model (a shipped stage type's is one more member of graft/api/models.py `Stage`)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["Toy"]
    epochs: int = 3
    step: float = 1.0  #: added to the total per worker and epoch: the toy's result depends on it
    note: str = ""  #: the toy's result does not depend on it (`Toy.not_determining`)


class ToySpec(TransferJobSpec):
    stages: list[Annotated[PretrainStage | FrozenFeaturesStage | HeadStage | FullFineTuneStage | ToyStage,
                           Field(discriminator="type")]]


def toy_loop(session, cfg) -> None:
    """Every epoch each worker adds (its rank + 1) x step to a total summed over the workers; rank 0 checkpoints."""
    total = 0.0
    for epoch in range(cfg.stage.epochs):
        (ranks,) = session.all_sum([float(session.rank + 1)])
        total += ranks * cfg.stage.step
        metrics = {"epoch": float(epoch + 1), "workers": float(session.world_size), "total": total,
                   "val_accuracy": 1.0}
        state = {"total": total, "epoch": epoch + 1} if session.rank == 0 else None
        session.report(metrics, state, epoch + 1, cfg.stage.epochs)


class Toy(StageType):
    type = "Toy"
    not_determining = {"stage": ("note",)}

    def check(self, ctx, stage) -> None:
        pass  # the toy reads no data

    def run(self, ctx, cfg) -> StageResult:
        state, checkpoint = ctx.executor.fit(toy_loop, cfg, 2, latest=True)
        out = self.output(ctx.root)
        storage.write_bytes(out, json.dumps(state).encode())
        return StageResult({"total": state["total"]}, out, checkpoint)


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setitem(registry.STAGES, "Toy", Toy())


def toy_spec(**stage) -> ToySpec:
    return ToySpec.model_validate({"model": {"backbone": "smallcnn", "numClasses": 10},
                                   "data": {"train": "builtin:digits", "imageSize": 8},
                                   "stages": [{"type": "Toy", **stage}],
                                   "workers": {"replicas": 2, "cpus": "1"}})


@pytest.fixture(scope="module")
def ray_local():
    """The driver joins the session's Ray cluster (the `shared_ray` fixture) from this process: disconnect at the end
    (a joined cluster stays up)."""
    import ray

    yield
    ray.shutdown()


@pytest.mark.slow
def test_a_toy_stage_type_runs_through_the_driver_on_two_ray_workers(tmp_path, toy, ray_local, shared_ray):
    # Ray's workers import this module to run `toy_loop` (on the driver's sys.path): it imports no test helper.
    # The session's Ray cluster, as a RayJob's driver joins its RayCluster: what this checks is the stage type's way
    # through the Driver and Ray Train, not Ray's own start.
    job = TransferJob.model_validate({"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
                                      "metadata": {"name": "toy", "uid": "toy-1"},
                                      "spec": toy_spec(epochs=3, step=0.5)})
    ledger = Driver(job, str(tmp_path / "jobs"), log_to_driver=False).run()
    rec = ledger.stage("Toy")
    assert (rec.state, rec.message) == (StageState.SUCCEEDED, None)
    # 2 workers, 3 epochs: (1 + 2) x 0.5 per epoch.
    assert rec.metrics["total"] == 4.5
    assert [h["workers"] for h in rec.history] == [2.0, 2.0, 2.0]
    assert json.loads(storage.read_bytes(rec.output)) == {"total": 4.5, "epoch": 3}
    assert rec.checkpoint and rec.checkpoint.startswith(str(tmp_path / "jobs"))
    assert ledger.model_uri is None, "the toy makes no model to export"


@pytest.mark.parametrize(("change", "same"), [({"note": "other"}, True), ({"step": 2.0}, False),
                                              ({"epochs": 4}, False)], ids=["not-determining", "step", "epochs"])
def test_the_spec_identity_follows_what_the_toy_declares(toy, change, same):
    before = identity.hashes(identity.view(toy_spec()))
    after = identity.hashes(identity.view(toy_spec(**change)))
    assert (before == after) is same
