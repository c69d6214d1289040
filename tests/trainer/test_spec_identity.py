"""A rerun of a job whose spec changed: refused with the changed fields and the first stage they invalidate,
unless `--restart` (a fresh run) or `--from-stage` (rerun from there, keep the earlier results). In-process
(`LocalExecutor`), on a few labels of the built-in digits: each full run takes a few seconds."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
from support.trainer_data import NO_SERVING, SMOKE_CHECKS, job_doc

from graft.api.models import StageState, TransferJob, TransferJobSpec
from graft.ledger import Ledger, job_root
from graft_trainer import driver as driver_mod
from graft_trainer import identity
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.executors import LocalExecutor

SPEC = {
    "model": {"backbone": "smallcnn", "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
    "stages": [
        {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1, "batchSize": 128},
        {"type": "FrozenFeatures"},
        {"type": "Head", "epochs": 2},
        {"type": "FullFineTune", "epochs": 1, "batchSize": 16, "lr": 0.003},
    ],
    "checks": SMOKE_CHECKS,
    "serving": NO_SERVING,
}


def _spec(**changes) -> dict:
    """SPEC with changes given as `path=value`, the path's parts joined by `__` (`stages__3__lr`)."""
    spec = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, last = path.split("__")
        obj = spec
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        obj[int(last) if isinstance(obj, list) else last] = value
    return spec


def _driver(store, spec, **kw) -> Driver:
    job = TransferJob.model_validate(job_doc("digits", spec))
    return Driver(job, str(store), executor=LocalExecutor(), **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of SPEC; each test copies its run folder."""
    store = tmp_path_factory.mktemp("finished")
    _driver(store, SPEC).run()
    return store


@pytest.fixture()
def store(finished, tmp_path):
    import shutil

    shutil.copytree(finished, tmp_path / "store")
    return tmp_path / "store"


def _ledger_bytes(store) -> bytes:
    return (store / "digits" / "ledger.json").read_bytes()


def test_a_changed_spec_is_refused_naming_the_fields_and_the_stage(store, one_thread):
    """Issue 11, problem 1: epochs and lr of FullFineTune edited, same name: the old code printed the old result."""
    before = _ledger_bytes(store)
    with pytest.raises(Exception, match=r"spec\.stages\[3\]\.epochs: 1 -> 2") as err:
        _driver(store, _spec(stages__3__epochs=2, stages__3__lr=0.01)).run()
    assert isinstance(err.value, driver_mod.SpecChanged)
    text = str(err.value)
    assert "spec.stages[3].lr: 0.003 -> 0.01" in text
    assert "stage FullFineTune (4 of 4)" in text
    assert "--from-stage FullFineTune" in text and "--restart" in text
    assert _ledger_bytes(store) == before  # nothing written


def test_the_same_spec_resumes_without_running_anything(store):
    before = Ledger.load(str(store / "digits"))
    after = _driver(store, SPEC).run()
    assert [s.end_time for s in after.stages] == [s.end_time for s in before.stages]
    assert after.model_uri == before.model_uri and after.attempt == before.attempt + 1


def test_from_stage_reruns_that_stage_and_keeps_the_earlier_results(store, one_thread):
    before = Ledger.load(str(store / "digits"))
    after = _driver(store, _spec(stages__3__epochs=2), from_stage="FullFineTune").run()
    for i in range(3):
        assert after.stages[i] == before.stages[i]
    fft = after.stage("FullFineTune")
    assert fft.state == StageState.SUCCEEDED and fft.epoch == 2 and len(fft.history) == 2
    assert fft.run_name == "digits-fullfinetune-r1"  # a new Ray run: the old one's checkpoints are not resumed
    assert after.model_uri and after.resets == 1
    # The ledger now records the new spec: the same command again resumes.
    assert _driver(store, _spec(stages__3__epochs=2)).run().stage("FullFineTune").end_time == fft.end_time


def test_from_stage_after_the_first_invalidated_stage_is_refused(store):
    before = _ledger_bytes(store)
    with pytest.raises(driver_mod.SpecChanged, match=r"spec\.data\.seed: 0 -> 1") as err:
        _driver(store, _spec(data__seed=1), from_stage="FullFineTune").run()
    assert err.value.stage == "Pretrain"  # the seed initialises Pretrain's network too
    assert _ledger_bytes(store) == before


def test_restart_starts_a_fresh_run(store, one_thread):
    before = Ledger.load(str(store / "digits"))
    after = _driver(store, _spec(stages__2__lr=0.05), restart=True).run()
    assert after.done and after.resets == 1
    for old, new in zip(before.stages, after.stages, strict=True):
        assert new.start_time >= old.end_time and new.run_name == f"{old.run_name}-r1"
        assert len(new.history) == len(old.history)  # not appended to the old run's
    assert after.spec["stages"][2]["lr"] == 0.05


def test_a_ledger_written_before_hashes_resumes_as_it_always_did(store):
    """No hash recorded means "unknown": the rerun accepts the recorded results, changed spec or not."""
    path = store / "digits" / "ledger.json"
    doc = json.loads(path.read_text())
    doc.pop("spec")
    doc.pop("resets")
    for s in doc["stages"]:
        s.pop("spec_hash")
    path.write_text(json.dumps(doc))
    after = _driver(store, _spec(stages__3__lr=0.01)).run()
    assert after.done and after.stage("FullFineTune").spec_hash is None
    assert after.spec["stages"][3]["lr"] == 0.01


def test_changing_the_stages_of_an_older_ledger_is_refused_as_before(store):
    """Ledgers without a recorded spec refused a changed stage list before 2026-12; they still do, by name."""
    path = store / "digits" / "ledger.json"
    doc = json.loads(path.read_text())
    doc.pop("spec")
    path.write_text(json.dumps(doc))
    without_head = _spec(stages=[SPEC["stages"][0], SPEC["stages"][1], SPEC["stages"][3]])
    with pytest.raises(driver_mod.SpecChanged) as err:
        _driver(store, without_head).run()
    assert "spec.stages: Pretrain, FrozenFeatures, Head, FullFineTune -> Pretrain, FrozenFeatures, FullFineTune" in (
        str(err.value))
    assert err.value.stage == "FullFineTune"


def test_a_retry_of_a_failed_attempt_with_the_same_spec_resumes(tmp_path, one_thread):
    """What a retried RayJob does on a cluster (the operator hands every attempt the same spec)."""

    class FailFullFineTuneOnce(LocalExecutor):
        failed = False

        def fit(self, loop, cfg, keep):
            if cfg.stage.type == "FullFineTune" and not FailFullFineTuneOnce.failed:
                FailFullFineTuneOnce.failed = True
                raise RuntimeError("worker lost")
            return super().fit(loop, cfg, keep)

    job = TransferJob.model_validate(job_doc("digits", SPEC))
    with pytest.raises(StageFailed, match="worker lost"):
        Driver(job, str(tmp_path), executor=FailFullFineTuneOnce()).run()
    first = Ledger.load(job_root(str(tmp_path), "digits"))
    after = Driver(job, str(tmp_path), executor=FailFullFineTuneOnce()).run()
    assert after.done and after.stage("Head").end_time == first.stage("Head").end_time


def test_the_entrypoint_resumes_the_same_spec_and_refuses_a_changed_one(store, capsys):
    from graft_trainer.__main__ import main

    doc = job_doc("digits", SPEC)
    assert main(["--job", json.dumps(doc), "--storage", str(store)]) == 0
    assert '"progress": "4/4"' in capsys.readouterr().out
    doc["spec"] = _spec(stages__2__epochs=3)
    assert main(["--job", json.dumps(doc), "--storage", str(store)]) == 2
    assert "spec.stages[2].epochs: 2 -> 3" in capsys.readouterr().err


def test_the_status_projection_is_unchanged_by_the_new_fields(store):
    status = Ledger.load(str(store / "digits")).to_status()
    assert set(status) == {"stages", "stage", "progress", "modelURI", "model"}  # model: issue 26, status.model
    # `finding` (issue 27) is a status field of its own: a smoke job's stage may have one (SMOKE_CHECKS warns).
    assert all(set(s) <= {"type", "state", "startTime", "endTime", "epoch", "epochs", "checkpoint", "message",
                          "metrics", "finding"} for s in status["stages"])


CHANGES = [
    # (id, the change, first stage it invalidates: None = the recorded results still hold)
    ("fft-lr", {"stages__3__lr": 0.01}, "FullFineTune"),
    ("head-epochs", {"stages__2__epochs": 5}, "Head"),
    ("target-data", {"data__train": "builtin:digits"}, "FrozenFeatures"),
    ("shots", {"data__shotsPerClass": 3}, "FrozenFeatures"),
    ("num-classes", {"model__numClasses": 11}, "Head"),
    ("image-size", {"data__imageSize": 16}, "Pretrain"),
    ("weights", {"model__weights": "/w.pt"}, "Pretrain"),
    ("pretrain-data", {"stages__0__data": "builtin:digits"}, "Pretrain"),
    ("workers", {"workers": {"replicas": 4, "cpus": "2", "memory": "8Gi", "gpus": 1}}, None),
    ("image", {"image": "example.com/graft:other"}, None),
    ("feature-batch", {"stages__1__batchSize": 32}, None),
    ("kept-checkpoints", {"stages__3__keepCheckpoints": 5}, None),
    ("head-removed", {"stages": [*SPEC["stages"][:2], SPEC["stages"][3]]}, "FullFineTune"),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_what_a_change_invalidates(change, expected):
    old = identity.view(TransferJobSpec.model_validate(SPEC))
    ledger = Ledger.create("u", "digits", [s["type"] for s in old["stages"]])
    for rec, h in zip(ledger.stages, identity.hashes(old), strict=True):
        rec.state, rec.spec_hash = StageState.SUCCEEDED, h
    new = identity.view(TransferJobSpec.model_validate(_spec(**change)))
    first = identity.first_invalidated(ledger, new)
    assert (new["stages"][first]["type"] if first is not None else None) == expected


# What `identity.view(SPEC)` was before issue 12's fields (data.test and testFraction, patience and monitor, the Head's
# sweep, the interpolation) existed: the pydantic models of commit 0ee22c7^1 (graft/api/models.py) dumped SPEC so.
BEFORE_ISSUE_12 = {
    "model": {"backbone": "smallcnn", "weights": None, "numClasses": 10},
    "data": {"train": "builtin:digits-noisy", "validation": None, "validationSplit": 0.2, "imageSize": 8,
             "shotsPerClass": 2, "seed": 0},
    "stages": [
        {"epochs": 1, "batchSize": 128, "type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10,
         "lr": 0.1, "weightDecay": 0.0001, "labelSmoothing": 0.1},
        {"type": "FrozenFeatures", "batchSize": 256, "actors": None},
        {"epochs": 2, "batchSize": 256, "type": "Head", "lr": 0.01, "weightDecay": 0.0001},
        {"epochs": 1, "batchSize": 16, "type": "FullFineTune", "lr": 0.003, "backboneLrScale": 0.1,
         "weightDecay": 0.05, "warmupEpochs": 1.0, "labelSmoothing": 0.1, "gradClipNorm": 1.0, "precision": "auto",
         "channelsLast": True, "keepCheckpoints": 2, "augment": True},
    ],
}


def _old_hashes(old_view: dict) -> list[str]:
    """The hashing rule of graft_trainer/identity.py from 5825ee2 to 0ee22c7 (a copy, so this test does not depend on
    the code it checks): every field of model, data and the stage but the listed ones, chained."""
    skip = {"Pretrain": {"model": ("numClasses",), "data": ("train", "validation", "shotsPerClass")},
            "FrozenFeatures": {"model": ("numClasses",), "stage": ("batchSize", "actors")},
            "FullFineTune": {"stage": ("keepCheckpoints", "channelsLast")}}
    out, previous = [], ""
    for stage in old_view["stages"]:
        parts = {"model": old_view["model"], "data": old_view["data"], "stage": stage}
        det = {p: {k: v for k, v in f.items() if k not in skip.get(stage["type"], {}).get(p, ())}
               for p, f in parts.items()}
        text = json.dumps({"after": previous, **det}, sort_keys=True, separators=(",", ":"))
        previous = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
        out.append(previous)
    return out


def _old_ledger(stages: list[int]) -> Ledger:
    """A finished ledger as Graft wrote it before issue 12, of the stages of BEFORE_ISSUE_12 at these indices."""
    old_view = {**BEFORE_ISSUE_12, "stages": [BEFORE_ISSUE_12["stages"][i] for i in stages]}
    ledger = Ledger.create("u", "digits", [s["type"] for s in old_view["stages"]])
    for rec, h in zip(ledger.stages, _old_hashes(old_view), strict=True):
        rec.state, rec.spec_hash = StageState.SUCCEEDED, h
    ledger.spec = old_view
    return ledger


OLD_JOBS = [
    # (id, stages of SPEC kept, changes to the new manifest, first stage refused: None = the results still hold)
    ("unchanged-no-head", [0, 1, 3], {}, None),
    ("unchanged-fft-only", [3], {}, None),
    # The Head's defaults changed what it does (a sweep of 32 settings, patience 20): refused from the Head on.
    ("unchanged-with-head", [0, 1, 2, 3], {}, "Head"),
    # The Head pinned to what it did before (one setting, no label smoothing, no early stopping): accepted.
    ("head-pinned-as-before", [0, 1, 2, 3],
     {"stages__2": {"type": "Head", "epochs": 2, "lr": 0.01, "weightDecay": 1e-4, "labelSmoothing": 0.0,
                    "patience": None}}, None),
    ("head-pinned-with-smoothing", [0, 1, 2, 3],
     {"stages__2": {"type": "Head", "epochs": 2, "lr": 0.01, "weightDecay": 1e-4, "labelSmoothing": 0.1,
                    "patience": None}}, "Head"),
    ("head-pinned-with-patience", [0, 1, 2, 3],
     {"stages__2": {"type": "Head", "epochs": 2, "lr": 0.01, "weightDecay": 1e-4, "labelSmoothing": 0.0}}, "Head"),
    # A new field set away from the old behaviour counts.
    ("fft-patience", [0, 1, 3], {"stages__3__patience": 3}, "FullFineTune"),
    ("fft-interpolation-at-default", [0, 1, 3], {"stages__3__interpolate": "off"}, None),
    ("fft-monitor-loss", [0, 1, 3], {"stages__3__monitor": "val_loss"}, "FullFineTune"),
    ("test-fraction", [0, 1, 3], {"data__testFraction": 0.2}, "Pretrain"),
]


@pytest.mark.parametrize(("kept", "change", "expected"), [c[1:] for c in OLD_JOBS], ids=[c[0] for c in OLD_JOBS])
def test_a_ledger_from_before_issue_12_is_refused_only_where_a_default_changed(kept, change, expected):
    ledger = _old_ledger(kept)
    spec = _spec(**change)
    spec["stages"] = [spec["stages"][i] for i in kept]
    new = identity.view(TransferJobSpec.model_validate(spec))
    first = identity.first_invalidated(ledger, new)
    assert (new["stages"][first]["type"] if first is not None else None) == expected


def test_the_refusal_of_an_old_head_says_that_graft_changed_the_default(store):
    """The same manifest, rerun on a ledger written before the Head sweep: refused at the Head (FrozenFeatures and
    Pretrain still hold), naming the new fields as Graft's, not the user's, change."""
    path = store / "digits" / "ledger.json"
    doc = json.loads(path.read_text())
    old = _old_ledger([0, 1, 2, 3])
    doc["spec"] = old.spec
    for s, rec in zip(doc["stages"], old.stages, strict=True):
        s["spec_hash"] = rec.spec_hash
    path.write_text(json.dumps(doc))
    with pytest.raises(driver_mod.SpecChanged) as err:
        _driver(store, SPEC).run()
    text = str(err.value)
    assert err.value.stage == "Head" and "--from-stage Head" in text
    assert "spec.stages[2].patience: (not set) -> 20 (a field added to Graft after that run" in text
    assert "spec.stages[2].lr: 0.01 -> (not set)" in text
    assert "spec.data" not in text and "spec.stages[3]" not in text  # no new field at its neutral value is named


def test_a_ledger_written_while_every_new_field_counted_still_resumes():
    """Ledgers of 2026-12-01/02 (0ee22c7 to this change) hashed issue 12's fields at any value: still accepted."""
    view = identity.view(TransferJobSpec.model_validate(SPEC))
    ledger = Ledger.create("u", "digits", [s["type"] for s in view["stages"]])
    for rec, h in zip(ledger.stages, identity.hashes(view, neutral=False), strict=True):
        rec.state, rec.spec_hash = StageState.SUCCEEDED, h
    assert identity.hashes(view, neutral=False) != identity.hashes(view)
    assert identity.first_invalidated(ledger, view) is None
