"""Every accuracy a user is shown comes with its 95% Wilson interval and the size of the split it was measured on,
and a validation split too small for the choices made on it is called out: `graft run`'s summary, `graft status`
(table and JSON), and `graft evaluate --split` on a job's manifest or run folder, each split rebuilt as the run
made it (issue 27, parts 2 and 4).

Two real jobs run once for the module (in-process stages, seconds each): the same digits recipe with a held-out
test split, one with a 5% validation split (about 30 images: under the rule's 100) and one with 20% (125)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS

from graft.api.models import TransferJob
from graft.ledger import Ledger
from graft.stats import MIN_VALIDATION, wilson

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2, "testFraction": 0.3},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1, "batchSize": 128},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 2},
        {"type": "FullFineTune", "epochs": 1, "lr": 0.003},
    ],
    "serving": NO_SERVING,
    "checks": SMOKE_CHECKS,  # one epoch each: next to chance, which is not what these tests are about
}
#: Job name -> its validationSplit.
JOBS = {"small": 0.05, "large": 0.2}


def _doc(name: str) -> dict:
    spec = json.loads(json.dumps(SPEC))
    spec["data"]["validationSplit"] = JOBS[name]
    return {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder with the two jobs' manifests (`<name>.json`) and their finished runs (`runs/<name>`)."""
    from graft_trainer.driver import Driver
    from graft_trainer.executors import LocalExecutor

    folder = tmp_path_factory.mktemp("uncertainty")
    for name in JOBS:
        (folder / f"{name}.json").write_text(json.dumps(_doc(name)))
        Driver(TransferJob.model_validate(_doc(name)), str(folder / "runs"), executor=LocalExecutor()).run()
    return folder


def graft_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`graft run` as a user runs it (its own process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}  # a pipe: lines unwrapped
    return subprocess.run([sys.executable, "-m", "graft.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def graft(*args: str, cwd: Path) -> Result:
    """The other commands through the same CLI app in this process (seconds fewer each: torch is imported once)."""
    from typer.testing import CliRunner

    from graft.cli import app

    before = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner(env={"COLUMNS": None, "LINES": None}).invoke(app, list(args))
    finally:
        os.chdir(before)
    return Result(result.exit_code, result.stdout, result.stderr)


def _ledger(runs: Path, name: str) -> Ledger:
    ledger = Ledger.load(str(runs / "runs" / name))
    assert ledger is not None
    return ledger


def _shown(ledger: Ledger, stage: str, key: str, split: str) -> str:
    """How an accuracy with its interval is written, from the ledger's own figures."""
    i = wilson(ledger.stage(stage).metrics[key], ledger.splits[split])
    return f"{key}={i.accuracy:.3f} [{i.low:.2f}, {i.high:.2f}] n={i.n}"


def test_the_ledger_records_the_split_sizes_the_stages_used(runs):
    for name in JOBS:
        ledger = _ledger(runs, name)
        features = ledger.stage("FrozenFeatures").metrics  # counted by the stage itself, as it read them
        assert ledger.splits == {"train": features["train_images"], "validation": features["val_images"],
                                 "test": features["test_images"]}, name
        assert ledger.splits["train"] == 20  # 2 shots of 10 classes
        assert set(ledger.stage_splits) == {"Pretrain"}  # its own data set, not the target's
    assert _ledger(runs, "small").splits["validation"] < MIN_VALIDATION <= _ledger(runs, "large").splits["validation"]


@pytest.mark.parametrize("name, warned", [("small", True), ("large", False)], ids=["small-split", "large-split"])
def test_graft_run_shows_intervals_and_warns_only_for_a_small_validation_split(runs, name, warned):
    ledger = _ledger(runs, name)
    proc = graft_run(f"{name}.json", "--storage", "runs", cwd=runs)  # finished: its summary, nothing rerun
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    for stage in ("Head", "FullFineTune"):
        assert _shown(ledger, stage, "val_accuracy", "validation") in out
        assert _shown(ledger, stage, "test_accuracy", "test") in out
    n = ledger.splits["validation"]
    assert (f"warning: the validation split has {n} examples" in out) is warned
    if warned:
        assert "spec.data.validationSplit" in out and "the Head sweep chose 1 of 32 settings" in out


@pytest.mark.parametrize("name, warned", [("small", True), ("large", False)], ids=["small-split", "large-split"])
def test_graft_status_shows_intervals_and_the_warning_in_table_and_json(runs, name, warned):
    ledger = _ledger(runs, name)
    table = graft("status", f"runs/{name}", cwd=runs)
    assert table.returncode == 0, table.stderr
    out = " ".join(table.stdout.split())
    assert _shown(ledger, "Head", "val_accuracy", "validation") in out
    assert ("warning: the validation split has" in out) is warned

    doc = json.loads(graft("status", f"runs/{name}", "-o", "json", cwd=runs).stdout)
    head = next(s for s in doc["stages"] if s["type"] == "Head")
    expected = wilson(head["metrics"]["test_accuracy"], ledger.splits["test"])
    assert (head["test_accuracy_interval"], head["test_accuracy_n"]) == ([expected.low, expected.high],
                                                                         ledger.splits["test"])
    assert head["val_accuracy_n"] == ledger.splits["validation"]
    assert bool(doc["warnings"]) is warned
    n = ledger.splits["validation"]
    assert all(f"has {n} examples" in w and "spec.data.validationSplit" in w for w in doc["warnings"])

    rows = json.loads(graft("status", "runs", "-o", "json", cwd=runs).stdout)
    row = next(r for r in rows if r["run"] == name)
    assert bool(row["warnings"]) is warned
    best = max(("Head", "FullFineTune"), key=lambda t: ledger.stage(t).metrics["val_accuracy"])  # not Pretrain's
    assert row["best"].startswith(_shown(ledger, best, "val_accuracy", "validation") + f" ({best})")
    assert row["val_accuracy_n"] == ledger.splits["validation"]


@pytest.mark.parametrize("where", ["manifest", "run-folder"])
def test_evaluate_scores_the_split_asked_for_with_the_runs_sizes_and_figures(runs, where):
    ledger = _ledger(runs, "small")
    data = "small.json" if where == "manifest" else "runs/small"
    model = str(runs / "runs" / "small" / "model")
    exported = ledger.stage(ledger.export["stage"]).metrics
    docs = {}
    for split in ("default", "test", "validation", "train"):
        args = () if split == "default" else ("--split", split)
        proc = graft("evaluate", model, data, *args, "-o", "json", "--png", "cm.png", cwd=runs)
        assert proc.returncode == 0, proc.stderr
        docs[split] = json.loads(proc.stdout)
    assert docs["default"]["split"] == "test"  # the job has a test split
    for split in ("test", "validation", "train"):
        assert (docs[split]["split"], docs[split]["n"]) == (split, ledger.splits[split])
    # The same images the run scored: the exported stage's recorded accuracies, recomputed.
    assert docs["test"]["accuracy"] == pytest.approx(exported["test_accuracy"], abs=1e-6)
    assert docs["validation"]["accuracy"] == pytest.approx(exported["val_accuracy"], abs=1e-6)
    i = wilson(docs["test"]["accuracy"], docs["test"]["n"])
    assert docs["test"]["accuracy_interval"] == [i.low, i.high]
    small = [w for w in docs["test"]["warnings"] if "spec.data.validationSplit" in w]
    assert len(small) == 1 and f"has {ledger.splits['validation']} examples" in small[0]
    assert any("optimistic" in w for w in docs["validation"]["warnings"])

    text = graft("evaluate", model, data, "--split", "validation", "--png", "cm.png", cwd=runs).stdout
    assert "split: validation" in text
    v = wilson(docs["validation"]["accuracy"], docs["validation"]["n"])
    assert f"({round(v.accuracy * v.n)} of {v.n} images), 95% Wilson interval [{v.low:.3f}, {v.high:.3f}]" in text
    assert "warning: the validation split has" in text


def test_evaluate_on_the_large_split_job_has_no_small_split_warning(runs):
    model = str(runs / "runs" / "large" / "model")
    doc = json.loads(graft("evaluate", model, "large.json", "-o", "json", "--png", "cm.png", cwd=runs).stdout)
    assert doc["split"] == "test" and doc["warnings"] == []


@pytest.mark.parametrize("args, code, line", [
    (("runs/small", "--split", "holdout"), 2, "error: --split: 'holdout' is not a split; use one of test, "
                                              "validation, train"),
    (("builtin:digits-noisy", "--split", "test"), 1, "error: --split: builtin:digits-noisy is a data set, not a "
                                                       "job: --split applies to a TransferJob manifest or a run "
                                                       "folder"),
], ids=["bad-value", "not-a-job"])
def test_a_bad_split_is_one_line_naming_the_option(runs, args, code, line):
    proc = graft("evaluate", str(runs / "runs" / "small" / "model"), *args, "--png", "cm.png", cwd=runs)
    assert (proc.returncode, proc.stderr.strip()) == (code, line)


def test_a_job_without_a_test_split_is_refused_for_split_test_and_defaults_to_validation(runs, tmp_path):
    doc = _doc("large")
    del doc["spec"]["data"]["testFraction"]
    manifest = tmp_path / "no-test.json"
    manifest.write_text(json.dumps(doc))
    model = str(runs / "runs" / "large" / "model")
    refused = graft("evaluate", model, str(manifest), "--split", "test", "--png", "cm.png", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().startswith("error: --split: ")
    assert "has no test split" in refused.stderr and "--split validation" in refused.stderr
    chosen = json.loads(graft("evaluate", model, str(manifest), "-o", "json", "--png", "cm.png", cwd=tmp_path).stdout)
    assert chosen["split"] == "validation"


def test_a_ledger_without_split_sizes_still_loads_and_shows_plain_figures(runs, tmp_path):
    old = json.loads((runs / "runs" / "small" / "ledger.json").read_text())
    del old["splits"], old["stage_splits"]  # as written before 2026-12
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ledger.json").write_text(json.dumps(old))
    doc = json.loads(graft("status", "old", "-o", "json", cwd=tmp_path).stdout)
    assert doc["splits"] is None and doc["warnings"] == []
    assert not any(k.endswith("_interval") for s in doc["stages"] for k in s)
