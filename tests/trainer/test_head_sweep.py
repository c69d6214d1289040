"""The Head stage's sweep: many heads trained at once, each exactly as if alone, chosen by validation, the whole
table in the ledger and in `graft status`, resumable after a killed driver."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from support.dying_session import DyingSession, Killed
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc

from graft import storage
from graft.api.models import HeadStage, TransferJob, TransferJobSpec
from graft.ledger import Ledger
from graft_trainer import sweep
from graft_trainer.session import LocalSession, StoredSession
from graft_trainer.stages import StageConfig


def _store_features(folder: str, n: int = 60, dim: int = 16, classes: int = 4, seed: int = 0) -> None:
    """Overlapping classes (so settings differ), stored as FrozenFeatures writes them."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    for name in ("train", "val"):
        y = torch.arange(n) % classes
        x = centers[y] + 1.5 * torch.randn(n, dim, generator=g)
        buf = io.BytesIO()
        torch.save({"features": x, "labels": y}, buf)
        storage.write_bytes(storage.join(folder, f"{name}.pt"), buf.getvalue())


def _spec(head: dict) -> TransferJobSpec:
    return TransferJobSpec.model_validate({
        "model": {"backbone": "smallcnn", "numClasses": 4, "weights": "/never-read.pt"},
        "data": {"train": "builtin:digits"},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "batchSize": 16, **head}],
    })


def _sweep(folder, head: dict, session=None) -> dict:
    session = session or LocalSession()
    sweep.train_head(session, StageConfig(_spec(head), 1, root=None, features=folder))
    return session.state


def test_the_default_grid_has_at_least_16_settings_of_lr_and_weight_decay():
    grid = HeadStage.model_validate({"type": "Head"}).grid()
    assert len(grid) >= 16
    assert len({g["lr"] for g in grid}) >= 4 and len({g["weight_decay"] for g in grid}) >= 4


def test_one_setting_of_the_batched_sweep_trains_exactly_as_torch_adamw_alone(tmp_path):
    """The vectorised AdamW and the per-setting label smoothing are torch's own, setting by setting."""
    _store_features(str(tmp_path))
    head = {"epochs": 6, "patience": None, "lr": 0.05, "weightDecay": 0.1, "labelSmoothing": 0.1}
    state = _sweep(str(tmp_path), head)
    train = torch.load(tmp_path / "train.pt")
    x, y = train["features"], train["labels"]
    torch.manual_seed(0)
    ref = torch.nn.Linear(16, 4)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.1)
    total = math.ceil(60 / 16) * 6
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    for epoch in range(6):
        perm = torch.randperm(60, generator=torch.Generator().manual_seed(epoch))
        for s in range(0, 60, 16):
            b = perm[s : s + 16]
            loss = F.cross_entropy(ref(x[b]), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    last = state["grid"]
    assert torch.allclose(last["weight"][0].t(), ref.weight.detach(), atol=1e-5)
    assert torch.allclose(last["bias"][0], ref.bias.detach(), atol=1e-5)


def test_settings_trained_together_score_as_each_trained_alone(tmp_path):
    _store_features(str(tmp_path))
    grid = {"lr": [0.003, 0.1], "weightDecay": [0.0, 1.0], "labelSmoothing": [0.0, 0.1]}
    together = _sweep(str(tmp_path), {"epochs": 15, "patience": 4, "sweep": grid})["table"]
    assert len(together) == 8
    for row in together:
        alone = _sweep(str(tmp_path), {"epochs": 15, "patience": 4, "lr": row["lr"],
                                       "weightDecay": row["weight_decay"],
                                       "labelSmoothing": row["label_smoothing"]})["table"]
        assert alone[0] == pytest.approx(row, abs=1e-5)


def test_the_chosen_head_is_the_best_row_by_validation_and_is_what_the_stage_outputs(tmp_path):
    _store_features(str(tmp_path))
    state = _sweep(str(tmp_path), {"epochs": 30, "patience": 5})
    table, chosen = state["table"], state["chosen"]
    assert len(table) == 32
    best = max(r["val_accuracy"] for r in table)
    assert table[chosen]["val_accuracy"] == best
    assert table[chosen]["val_loss"] == min(r["val_loss"] for r in table if r["val_accuracy"] == best)
    assert len({r["val_accuracy"] for r in table}) > 1, "the settings should not all score the same"
    val = torch.load(tmp_path / "val.pt")
    logits = F.linear(val["features"], state["head"]["weight"], state["head"]["bias"])
    assert (logits.argmax(1) == val["labels"]).float().mean().item() == pytest.approx(best)


def test_patience_stops_each_setting_and_the_stage_and_says_why(tmp_path):
    _store_features(str(tmp_path))
    state = _sweep(str(tmp_path), {"epochs": 500, "patience": 3})
    assert state["epoch"] < 500
    assert all(0 < r["stopped_at"] <= state["epoch"] and r["stopped_at"] - r["best_epoch"] == 3
               for r in state["table"])
    assert state["stop"].startswith(f"early stop at epoch {state['epoch']} of 500: no setting improved val_accuracy")
    assert state["history"][-1]["stopped_early"] == 1.0


def test_a_sweep_resumed_after_a_killed_driver_goes_on_from_its_checkpoint(tmp_path):
    features = str(tmp_path / "features")
    _store_features(features)
    job = TransferJob.model_validate(job_doc("resume", {**_spec({"epochs": 40, "patience": None}).model_dump(
        by_alias=True, exclude_none=True)}))
    root = str(tmp_path / "job")
    Ledger.create("resume", "resume", ["FrozenFeatures", "Head"]).save(root)
    cfg = StageConfig(job.spec, 1, root=root, run_name="resume-head", features=features)
    with pytest.raises(Killed):
        sweep.train_head(DyingSession(cfg, 20), cfg)
    resumed = StoredSession(cfg)
    sweep.train_head(resumed, cfg)
    assert resumed.reports[0]["epoch"] == 21 and resumed.reports[0]["resumed_from"] == 20
    whole = LocalSession()
    sweep.train_head(whole, StageConfig(job.spec, 1, features=features))
    assert resumed.state["table"] == whole.state["table"]
    assert torch.equal(resumed.state["head"]["weight"], whole.state["head"]["weight"])
    assert Ledger.load(root).stage("Head").history[-1]["resumed_from"] == 20.0


def test_graft_status_shows_the_whole_sweep_with_the_chosen_row_marked(tmp_path):
    from typer.testing import CliRunner

    from graft.cli import app

    _store_features(str(tmp_path / "features"))
    state = _sweep(str(tmp_path / "features"), {"epochs": 30, "patience": 5})
    ledger = Ledger.create("u", "sweepy", ["FrozenFeatures", "Head"])
    rec = ledger.stage("Head")
    rec.sweep, rec.chosen, rec.stop = state["table"], state["chosen"], state["stop"]
    ledger.save(str(tmp_path / "run"))
    out = CliRunner().invoke(app, ["status", str(tmp_path / "run")], env={"COLUMNS": "200"}).output
    assert "Head sweep: 32 settings, chosen by validation (*)" in out
    assert f"Head: {state['stop']}" in out
    rows = [line for line in out.splitlines() if line.startswith("│") and any(c.isdigit() for c in line)]
    sweep_rows = [line for line in rows if line.count("│") == 9]
    assert len(sweep_rows) == 32
    marked = [i for i, line in enumerate(sweep_rows) if line.split("│")[1].strip() == "*"]
    assert marked == [state["chosen"]]
    chosen = state["table"][state["chosen"]]
    assert f"{chosen['val_accuracy']:.4f}" in sweep_rows[state["chosen"]]


@pytest.mark.parametrize(("memory", "path"), [("2Gi", "in_process"), ("64Ki", "fit")], ids=["fits", "too-big"])
def test_head_runs_in_the_driver_only_when_the_features_fit_in_memory(tmp_path, memory, path, one_thread):
    """In the driver (no worker group, no DDP) when the stored features fit a quarter of the smaller of the
    worker's and the Ray head's memory; else on the worker group, where the same sweep runs under DDP."""
    from support.trainer_data import smallcnn_weights

    from graft_trainer.driver import Driver
    from graft_trainer.executors import LocalExecutor

    class Recording(LocalExecutor):
        used: list[str] = []

        def in_process(self, loop, cfg):
            self.used.append("in_process")
            return super().in_process(loop, cfg)

        def fit(self, loop, cfg, keep, latest=False):
            self.used.append("fit")
            return super().fit(loop, cfg, keep, latest)

    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(smallcnn_weights(tmp_path / "w.pt"))},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 5},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 5}],
        "workers": {"memory": memory},
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }
    executor = Recording()
    ledger = Driver(TransferJob.model_validate(job_doc("where", spec)), str(tmp_path / "runs"),
                    executor=executor).run()
    assert executor.used == [path]
    assert len(ledger.stage("Head").sweep) == 32
