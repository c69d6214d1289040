"""What `graft run`'s bars and summary say about a stage (issue 11, problem 6): its own time, not the run's, and
a finished stage's metrics labelled as its best epoch's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from graft.api.models import StageState
from graft.ledger import StageRecord
from graft_trainer.cli import _fmt_metrics, _stage_time


def test_a_finished_stage_shows_its_own_seconds_and_a_running_one_the_time_since_it_started():
    done = StageRecord(type="Head", state=StageState.SUCCEEDED, seconds=75.4,
                       start_time=(datetime.now(UTC) - timedelta(hours=2)).isoformat())
    assert _stage_time(done) == "1:15"  # not the two hours since the run (or the stage) began
    running = StageRecord(type="FullFineTune", state=StageState.RUNNING, seconds=500.0,
                          start_time=(datetime.now(UTC) - timedelta(seconds=42)).isoformat())
    assert _stage_time(running) in ("0:42", "0:43")
    assert _stage_time(StageRecord(type="Head")) == ""  # pending: no time yet


def test_metrics_of_a_finished_stage_say_which_epoch_they_are_from():
    best = {"val_accuracy": 0.9894, "val_loss": 0.161, "train_loss": 0.59, "best_epoch": 14.0}
    assert _fmt_metrics(best) == "best epoch 14: val_accuracy=0.989, val_loss=0.161, train_loss=0.590"
    assert _fmt_metrics({"val_accuracy": 0.5}) == "val_accuracy=0.500"  # an epoch in progress: its own
    assert _fmt_metrics({}) == ""


def test_the_summary_says_the_held_out_score_apart_and_where_a_stage_stopped_early():
    from rich.console import Console

    from graft.ledger import Ledger
    from graft_trainer.cli import _summary

    ledger = Ledger.create("u", "demo", ["Head", "FullFineTune"])
    ledger.stage("Head").metrics = {"val_accuracy": 0.44, "best_epoch": 62.0, "test_accuracy": 0.41}
    ledger.stage("Head").stop = "early stop at epoch 82 of 100: no setting improved val_accuracy for 20 epochs"
    ledger.stage("FullFineTune").stop = "ran all 20 epochs"
    console = Console(record=True, width=250)
    _summary(ledger, console)
    text = console.export_text()
    assert "best epoch 62: val_accuracy=0.440; held-out test_accuracy=0.410" in text
    assert "Head: early stop at epoch 82 of 100: no setting improved val_accuracy for 20 epochs" in text
    assert "FullFineTune: ran all" not in text  # only an early stop is worth a line
