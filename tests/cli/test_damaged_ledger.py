"""A ledger.json that does not parse (empty, cut short, garbage), on local storage and on S3 (moto): recovered from
ledger.json.prev with one line saying so; without a good previous version, one line naming the object and the two
ways out (`graft status`, `graft run`, the operator), never a traceback; `--restart` starts over and keeps the
damaged object beside the new ledger (issue 22, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS
from typer.testing import CliRunner

from graft import storage
from graft.api.models import StageState, TransferJob
from graft.cli import app
from graft.ledger import DamagedLedger, Ledger

#: (id, the bytes ledger.json is left with, how the line names the damage). `truncated` is the first 300 bytes of a
#: real ledger (`_cut`); `garbage` is what a proxy answering for the store might leave.
DAMAGES = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param("cut", "truncated JSON at byte 300", id="truncated"),
    pytest.param(b"<html><body>502 Bad Gateway</body></html>", "not JSON: Expecting value at offset 0", id="garbage"),
]


def _spec(tmp_path: Path) -> dict:
    from support.trainer_data import smallcnn_weights

    weights = tmp_path / "w.pt"
    return {
        "model": {"backbone": "smallcnn", "numClasses": 10,
                  "weights": str(weights if weights.exists() else smallcnn_weights(weights))},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 2}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> str:
    """A storage root for runs: a local folder, or a fresh moto S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_bucket") + "/runs"


def _ledger(root: str) -> Ledger:
    """A job's ledger as the trainer leaves it mid-run (written twice: ledger.json and ledger.json.prev agree)."""
    ledger = Ledger.create("digits", "digits", ["FrozenFeatures", "Head"])
    ledger.stages[0].state = StageState.SUCCEEDED
    ledger.save(root)
    ledger.stages[1].state, ledger.stages[1].epoch = StageState.RUNNING, 1
    ledger.save(root)
    return ledger


def _damage(root: str, data: bytes | str) -> bytes:
    if data == "cut":
        data = storage.read_bytes(Ledger.uri(root))[:300]
    storage.write_bytes(Ledger.uri(root), data)
    return data


def _status(root: str):
    return CliRunner().invoke(app, ["status", root], env={"COLUMNS": "200"})


def _names(root: str) -> list[str]:
    return sorted(uri.rsplit("/", 1)[-1] for uri in storage.list_dir(root))


@pytest.mark.parametrize(("data", "cause"), DAMAGES)
def test_a_damaged_ledger_is_recovered_from_its_previous_version(store, data, cause):
    root = storage.join(store, "digits")
    saved = _ledger(root)
    damaged = _damage(root, data)

    recovered = Ledger.load(root)
    assert recovered.model_dump() == saved.model_dump(), "the last complete version comes back whole"
    assert recovered.recovered == (f"{Ledger.uri(root)}: not a valid ledger ({cause}); recovered from "
                                   f"ledger.json.prev (written {saved.updated_at})")
    shown = _status(root)
    assert shown.exit_code == 0, shown.output
    assert shown.stderr.splitlines() == [f"warning: {recovered.recovered}"]
    assert "Running" in shown.stdout and "1/2" in shown.stdout

    # The next write goes on from the recovered version and keeps the damaged object beside it first.
    recovered.stages[1].epoch = 2
    recovered.save(root)
    aside = [n for n in _names(root) if n.startswith("ledger.json.damaged-")]
    assert len(aside) == 1 and storage.read_bytes(storage.join(root, aside[0])) == damaged
    assert Ledger.load(root).stages[1].epoch == 2 and Ledger.load(root).recovered is None


def _no_prev_line(root: str, cause: str, restart: str, prev_cause: str = "not found") -> str:
    uri = Ledger.uri(root)
    return (f"error: {uri}: not a valid ledger ({cause}), and no good previous version ({uri}.prev: {prev_cause}); "
            f"either {restart} to start over (the damaged object is kept as ledger.json.damaged-")


def _graft_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "graft.cli", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


def _job(path: Path, store: str) -> Path:
    doc = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": "digits"},
           "spec": {**_spec(path.parent), "storage": {"uri": store}}}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("data", "cause"), DAMAGES)
def test_without_a_good_previous_version_status_and_run_say_one_line_and_touch_nothing(store, data, cause, tmp_path):
    root = storage.join(store, "digits")
    _ledger(root)
    damaged = _damage(root, data)
    storage.write_bytes(Ledger.prev_uri(root), b"")  # the previous version no better

    shown = _status(root)
    assert shown.exit_code == 1
    (line,) = shown.stderr.splitlines()
    assert line.startswith(_no_prev_line(root, cause, "rerun with --restart", "empty"))
    assert line.endswith("), or put a good ledger.json back")

    run = _graft_run("job.json", cwd=_job(tmp_path / "job.json", store).parent)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith(_no_prev_line(root, cause, "run graft run job.json --restart", "empty"))
    assert storage.read_bytes(Ledger.uri(root)) == damaged, "a ledger that does not parse is never overwritten"
    # Nothing but the job's lease (taken before the ledger is read, released at the refusal) was written.
    assert _names(root) == ["lease.json", "ledger.json", "ledger.json.prev"]


def test_no_previous_version_at_all_is_named(store):
    root = storage.join(store, "digits")
    _ledger(root)
    _damage(root, b"")
    fs, path = storage.filesystem(Ledger.prev_uri(root))
    fs.delete_file(path)  # e.g. written by a Graft from before ledger.json.prev
    shown = _status(root)
    assert shown.exit_code == 1 and shown.stderr.startswith(_no_prev_line(root, "empty", "rerun with --restart"))


def _driver(store: str, tmp_path: Path, **kwargs):
    from graft_trainer.driver import Driver
    from graft_trainer.executors import LocalExecutor

    job = TransferJob.model_validate({"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob",
                                      "metadata": {"name": "digits"}, "spec": _spec(tmp_path)})
    return Driver(job, store, executor=LocalExecutor(), **kwargs)


@pytest.mark.parametrize(("data", "cause"), DAMAGES)
def test_restart_over_a_damaged_ledger_starts_over_and_keeps_the_damaged_object(store, data, cause, caplog, tmp_path):
    root = storage.join(store, "digits")
    _ledger(root)
    damaged = _damage(root, data)
    storage.write_bytes(Ledger.prev_uri(root), b"{")
    # Checkpoints of an earlier reset of this job: the new run must not resume them (its reset number is unknown).
    storage.write_bytes(storage.join(root, "checkpoints", "digits-head-r3", "epoch_00001", "state.pt"), b"old")

    with pytest.raises(ValueError, match="not a valid ledger"):
        _driver(store, tmp_path).prepare()
    ledger = _driver(store, tmp_path, restart=True).run()

    assert [s.state for s in ledger.stages] == [StageState.SUCCEEDED, StageState.SUCCEEDED]
    assert ledger.resets == 4 and ledger.stage("Head").run_name == "digits-head-r4"
    aside = [n for n in _names(root) if n.startswith("ledger.json.damaged-")]
    assert len(aside) == 1 and storage.read_bytes(storage.join(root, aside[0])) == damaged
    said = [r.getMessage() for r in caplog.records if "not a valid ledger" in r.getMessage()]
    assert said == [f"{Ledger.uri(root)}: not a valid ledger ({cause}): starting over (--restart); the damaged "
                    f"object is kept as {storage.join(root, aside[0])}"]
    assert Ledger.load(root).recovered is None


def test_the_operator_reports_a_damaged_ledger_as_a_condition_reason_with_the_line(tmp_path):
    """Through the operator's ledger reads (graft_operator/ledgers.py), as its status path hears them."""
    import asyncio

    from graft.api.validation import validate_spec
    from graft_operator import ledgers

    spec, problems = validate_spec({**_spec(tmp_path), "storage": {"uri": str(tmp_path / "jobs")}})
    assert not problems
    root = storage.join(str(tmp_path / "jobs"), "uid-1")
    _ledger(root)
    _damage(root, b"")
    storage.write_bytes(Ledger.prev_uri(root), b"")

    async def read():
        reads = ledgers.Reads()
        got = asyncio.get_running_loop().create_future()
        assert reads.start("uid-1", "ml", spec, lambda o: got.done() or got.set_result(o))
        try:
            return await got
        finally:
            await reads.close()

    assert asyncio.run(read()) == ledgers.Outcome(problem=("LedgerDamaged", (
        f"{Ledger.uri(root)}: not a valid ledger (empty), and no good previous version ({Ledger.prev_uri(root)}: "
        "empty); either delete and recreate the TransferJob to start over, or put a good ledger.json back")))


def test_graft_logs_still_prints_the_logs_of_a_job_whose_ledger_is_damaged(tmp_path):
    from graft import joblogs

    root = str(tmp_path / "job")
    _ledger(root)
    storage.write_bytes(joblogs.log_uri(root, "Head", "driver"), b"head driver started\n")
    _damage(root, b"")
    storage.write_bytes(Ledger.prev_uri(root), b"")
    shown = CliRunner().invoke(app, ["logs", root])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == "Head/driver | head driver started\n"
    assert shown.stderr.startswith(f"warning: {Ledger.uri(root)}: not a valid ledger (empty)")


@pytest.mark.slow
def test_graft_run_restart_over_a_damaged_ledger_runs_the_job(tmp_path, shared_ray):
    """`graft run --restart` as a user runs it (on the session's Ray cluster): the job runs from the start, the
    damaged object kept."""
    root = str(tmp_path / "runs" / "digits")
    _ledger(root)
    damaged = _damage(root, "cut")
    storage.write_bytes(Ledger.prev_uri(root), b"")
    _job(tmp_path / "job.json", str(tmp_path / "runs"))

    run = _graft_run("job.json", "--restart", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{Ledger.uri(root)}: not a valid ledger (truncated JSON at byte 300): starting over (--restart)" \
        in run.stderr
    ledger = Ledger.load(root)
    assert ledger.done and ledger.model_uri and ledger.recovered is None
    aside = [n for n in _names(root) if n.startswith("ledger.json.damaged-")]
    assert len(aside) == 1 and storage.read_bytes(storage.join(root, aside[0])) == damaged


@pytest.mark.parametrize("cut", ['{"splits": nu', '{"ok": t', '{"ok": fals'], ids=["null", "true", "false"])
def test_a_ledger_cut_inside_a_literal_word_is_called_truncated(tmp_path, cut):
    (tmp_path / "ledger.json").write_text(cut)
    with pytest.raises(DamagedLedger) as caught:
        Ledger.load(str(tmp_path))
    assert caught.value.damage.cause == f"truncated JSON at byte {len(cut)}"
