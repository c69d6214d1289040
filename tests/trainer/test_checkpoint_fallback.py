"""Checkpoint manifests (graft_trainer/checkpoints.py): an incomplete checkpoint (a file cut short, emptied or
missing) is never resumed from; the in-driver Head sweep (StoredSession) and a finished Ray run's read-back go back
to the newest complete one and say so in one line; a checkpoint from a Graft before manifests still resumes
(issue 22)."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import pytest
import torch
from support.dying_session import DyingSession, Killed
from support.trainer_data import job_doc

from graft import storage
from graft.api.models import TransferJob, TransferJobSpec
from graft.ledger import Ledger
from graft_trainer import checkpoints, sweep
from graft_trainer.session import LocalSession, StoredSession
from graft_trainer.stages import StageConfig

STATE = {"weights": torch.arange(1000, dtype=torch.float32), "epoch": 3}


def _folder(path: Path, manifest: bool = True) -> int:
    """A checkpoint folder as Graft writes one: state.pt, then manifest.json. Returns state.pt's size."""
    path.mkdir(parents=True)
    buf = io.BytesIO()
    torch.save(STATE, buf)
    (path / "state.pt").write_bytes(buf.getvalue())
    if manifest:
        checkpoints.write_manifest(str(path), checkpoints.manifest_of_dir(path))
    return len(buf.getvalue())


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# (id, what is done to a complete folder, the problem named; None: it loads). `{n}` is state.pt's whole size.
DAMAGES = [
    pytest.param(lambda d, n: None, None, id="complete"),
    pytest.param(lambda d, n: _cut(d / "state.pt", n // 2), "state.pt: {half} bytes, manifest says {n}", id="cut"),
    pytest.param(lambda d, n: _cut(d / "state.pt", 0), "state.pt: 0 bytes, manifest says {n}", id="emptied"),
    pytest.param(lambda d, n: (d / "state.pt").unlink(), "state.pt: missing, manifest says {n} bytes", id="missing"),
    pytest.param(lambda d, n: _flip(d / "state.pt"), "state.pt: sha256 differs from the manifest's", id="bit-flip"),
    pytest.param(lambda d, n: _cut(d / "manifest.json", 10), "manifest.json: not a valid manifest (JSONDecodeError)",
                 id="manifest-cut"),
    pytest.param(lambda d, n: _cut(d / "manifest.json", 0), "manifest.json: not a valid manifest (empty)",
                 id="manifest-emptied"),
    # A folder with no manifest (a Graft from before manifests, or a writer that died before it): loads or not.
    pytest.param(lambda d, n: (d / "manifest.json").unlink(), None, id="no-manifest-whole"),
    pytest.param(lambda d, n: ((d / "manifest.json").unlink(), _cut(d / "state.pt", n // 2)),
                 "state.pt: cannot be loaded (", id="no-manifest-cut"),
]


@pytest.mark.parametrize(("damage", "problem"), DAMAGES)
@pytest.mark.parametrize("read", [checkpoints.load_dir, checkpoints.load_uri], ids=["local-folder", "storage"])
def test_a_checkpoint_is_complete_only_as_its_manifest_says(tmp_path, damage, problem, read):
    folder = tmp_path / "epoch_00003"
    n = _folder(folder)
    damage(folder, n)
    if problem is None:
        assert torch.equal(read(str(folder))["weights"], STATE["weights"])
        return
    with pytest.raises(checkpoints.Incomplete) as err:
        read(str(folder))
    assert str(err.value).startswith(problem.format(n=n, half=n // 2))


def _store_features(folder: str, n: int = 60, dim: int = 16, classes: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(classes, dim, generator=g)
    for name in ("train", "val"):
        y = torch.arange(n) % classes
        buf = io.BytesIO()
        torch.save({"features": centers[y] + 1.5 * torch.randn(n, dim, generator=g), "labels": y}, buf)
        storage.write_bytes(storage.join(folder, f"{name}.pt"), buf.getvalue())


def _head_job(base: str) -> tuple[StageConfig, str]:
    """A Head sweep of 40 epochs (a checkpoint every 4th) on stored features, and its job root with a ledger."""
    spec = TransferJobSpec.model_validate({
        "model": {"backbone": "smallcnn", "numClasses": 4, "weights": "/never-read.pt"},
        "data": {"train": "builtin:digits"},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "batchSize": 16, "epochs": 40, "patience": None}],
    })
    job = TransferJob.model_validate(job_doc("fallback", spec.model_dump(by_alias=True, exclude_none=True)))
    features, root = storage.join(base, "features"), storage.join(base, "job")
    _store_features(features)
    Ledger.create("fallback", "fallback", ["FrozenFeatures", "Head"]).save(root)
    return StageConfig(job.spec, 1, root=root, run_name="fallback-head", features=features), root


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path) -> str:
    return str(tmp_path) if request.param == "local" else request.getfixturevalue("s3_bucket")


def test_a_sweep_whose_latest_checkpoint_was_cut_short_resumes_from_the_one_before_and_says_so(base, caplog):
    cfg, root = _head_job(base)
    with pytest.raises(Killed):
        sweep.train_head(DyingSession(cfg, 28), cfg)
    run = storage.join(root, "checkpoints", "fallback-head")
    assert checkpoints.folders(run) == ["epoch_00028", "epoch_00024"], "the last two checkpoints are kept"
    state_pt = storage.join(run, "epoch_00028", "state.pt")
    whole = storage.read_bytes(state_pt)
    storage.write_bytes(state_pt, whole[: len(whole) // 2])

    caplog.set_level(logging.WARNING, logger="graft")
    resumed = StoredSession(cfg)
    sweep.train_head(resumed, cfg)

    line = (f"checkpoint {run}/epoch_00028 is incomplete (state.pt: {len(whole) // 2} bytes, manifest says "
            f"{len(whole)}): resuming from {run}/epoch_00024")
    assert [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()] == [line]
    assert Ledger.load(root).stage("Head").notes == [line]
    assert resumed.reports[0]["resumed_from"] == 24
    uninterrupted = LocalSession()
    sweep.train_head(uninterrupted, StageConfig(cfg.spec, 1, features=cfg.features))
    assert resumed.state["table"] == uninterrupted.state["table"], "a fallback costs epochs, never the result"
    assert checkpoints.folders(run) == ["epoch_00040", "epoch_00036"]


def test_a_sweep_checkpoint_from_a_graft_before_manifests_still_resumes(tmp_path, caplog):
    """Graft before 2026-12 kept the sweep's one checkpoint as `latest/state.pt`, without a manifest."""
    cfg, root = _head_job(str(tmp_path))
    with pytest.raises(Killed):
        sweep.train_head(DyingSession(cfg, 28), cfg)
    run = Path(root) / "checkpoints" / "fallback-head"
    (run / "latest").mkdir()
    (run / "epoch_00028" / "state.pt").rename(run / "latest" / "state.pt")
    for folder in run.glob("epoch_*"):
        shutil.rmtree(folder)

    caplog.set_level(logging.WARNING, logger="graft")
    resumed = StoredSession(cfg)
    sweep.train_head(resumed, cfg)
    assert resumed.reports[0]["resumed_from"] == 28
    assert not [r for r in caplog.records if "incomplete" in r.getMessage()]
    assert Ledger.load(root).stage("Head").notes == []


@pytest.fixture()
def ray_logging_put_back():
    """Importing ray sets up its "ray" logger (its own stderr handler, propagate False) for the whole process; put it
    back as it was, so that the tests after these see logging as a process that never imported ray does."""
    ray_logger = logging.getLogger("ray")
    before = (ray_logger.propagate, list(ray_logger.handlers), ray_logger.level)
    yield
    ray_logger.propagate, ray_logger.handlers[:], ray_logger.level = before[0], before[1], before[2]


def _result(tmp_path: Path, scores: dict[int, float], latest: int):
    """A finished Ray Train run's Result (ray/air/result.py) over local checkpoint folders epoch_00001..."""
    from ray.train import Checkpoint, Result

    made = {}
    for epoch in scores:
        _folder(tmp_path / f"epoch_{epoch:05d}")
        made[epoch] = Checkpoint.from_directory(str(tmp_path / f"epoch_{epoch:05d}"))
    best = [(made[e], {"epoch": float(e), "selection": s}) for e, s in scores.items()]
    return Result(metrics={"epoch": float(latest)}, checkpoint=made[latest], error=None, path=str(tmp_path),
                  best_checkpoints=best)


@pytest.mark.parametrize(
    ("latest_wanted", "damaged", "chosen"),
    [
        pytest.param(False, [], 2, id="best-complete"),
        pytest.param(False, [2], 3, id="best-cut-next-best"),
        pytest.param(False, [2, 3], 1, id="two-cut"),
        pytest.param(True, [], 3, id="latest-complete"),
        pytest.param(True, [3], 2, id="latest-cut-next-newest"),
    ],
)
def test_a_finished_runs_checkpoint_is_read_back_complete(tmp_path, caplog, latest_wanted, damaged, chosen,
                                                         ray_logging_put_back):
    from graft_trainer.executors import read_back

    result = _result(tmp_path, {1: 0.5, 2: 0.9, 3: 0.7}, latest=3)
    n = (tmp_path / "epoch_00001" / "state.pt").stat().st_size
    for epoch in damaged:
        _cut(tmp_path / f"epoch_{epoch:05d}" / "state.pt", 0)
    cfg = StageConfig(TransferJobSpec.model_validate(job_doc("x", {
        "model": {"backbone": "smallcnn", "numClasses": 4, "weights": "/w.pt"}, "data": {"train": "builtin:digits"},
        "stages": [{"type": "FullFineTune"}]})["spec"]), 0, root=str(tmp_path), run_name="x-fullfinetune")
    caplog.set_level(logging.WARNING, logger="graft")
    state, uri = read_back(result, cfg, "selection", latest_wanted)
    assert uri == str(tmp_path / f"epoch_{chosen:05d}") and torch.equal(state["weights"], STATE["weights"])
    said = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    if damaged:
        passed = "; ".join(f"{tmp_path}/epoch_{e:05d} (state.pt: 0 bytes, manifest says {n})" for e in damaged)
        assert said == [f"x-fullfinetune: passed over incomplete checkpoint(s) {passed}: using {uri}"]
    else:
        assert said == []


def test_a_finished_run_with_no_complete_checkpoint_fails_naming_them(tmp_path, ray_logging_put_back):
    from graft_trainer.executors import read_back

    result = _result(tmp_path, {1: 0.5}, latest=1)
    _cut(tmp_path / "epoch_00001" / "state.pt", 0)
    cfg = StageConfig(TransferJobSpec.model_validate(job_doc("x", {
        "model": {"backbone": "smallcnn", "numClasses": 4, "weights": "/w.pt"}, "data": {"train": "builtin:digits"},
        "stages": [{"type": "FullFineTune"}]})["spec"]), 0, root=str(tmp_path), run_name="x-fullfinetune")
    with pytest.raises(RuntimeError, match=r"x-fullfinetune: no complete checkpoint: .*epoch_00001 \(state.pt: 0 b"):
        read_back(result, cfg, "selection", False)
