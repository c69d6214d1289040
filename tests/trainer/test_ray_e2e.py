"""End to end on real Ray Train (2 gloo workers): S3 storage, driver killed and resumed, a worker killed
mid-epoch, and `graft run` interrupted with Ctrl-C and resumed. Each run is a separate driver process, as
in a RayJob, with a bounded timeout. The driver-kill and Ctrl-C tests start their own Ray with each driver (the
driver and its Ray die together, Ctrl-C reaches the whole process group); the worker-kill and streamed-folder tests
join the session's Ray cluster (a worker is found by the cluster's RAY_TMPDIR)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from support.driver_proc import DriverProcess, ray_train_workers
from support.s3 import TEST_CREDENTIALS
from support.trainer_data import (
    NO_SERVING,
    SMOKE_CHECKS,
    job_doc,
    smallcnn_weights,
    state_dict_bytes,
    write_job,
    write_png,
)

from graft import storage
from graft.api.models import StageState
from graft.ledger import Ledger

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
GRAFT = str(Path(sys.executable).with_name("graft"))


def start_driver(args: list[str], tmp_path: Path, env: dict[str, str] | None = None, cwd: Path = REPO
                 ) -> DriverProcess:
    """A driver process in its own session (like a pod): killed as a whole, never leaked."""
    return DriverProcess(args, tmp_path, env, cwd)


def stage_epoch(root: str, stage: str) -> int:
    try:
        ledger = Ledger.load(root)
    except Exception:
        return 0
    if ledger is None:
        return 0
    rec = ledger.stage(stage)
    return rec.epoch if rec.state == StageState.RUNNING else 0


def test_s3_two_workers_driver_killed_mid_stage_resumes_from_checkpoint(tmp_path, s3_endpoint, s3_bucket):
    """FullFineTune on 2 gloo workers with checkpoints and ledger in a moto S3 bucket; the driver (and its Ray)
    is killed mid-stage; the same command resumes FullFineTune from its last checkpoint and skips the
    finished stages."""
    weights = f"{s3_bucket}/weights/smallcnn.pt"
    from graft_trainer.models import SmallCNN

    storage.write_bytes(weights, state_dict_bytes(SmallCNN().state_dict()))
    uid = "0b9c7e52-s3-resume"
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": weights},
        "data": {"train": "builtin:digits-noisy", "imageSize": 32},
        "stages": [
            {"type": "FrozenFeatures"},
            {"type": "FullFineTune", "epochs": 6, "batchSize": 32, "augment": False},
        ],
        "workers": {"replicas": 2, "cpus": "1"},
        "storage": {"uri": f"{s3_bucket}/jobs", "endpoint": s3_endpoint},
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }
    job = write_job(tmp_path / "job.json", job_doc("s3-resume", spec, uid=uid))
    # The pod gets only the keys (from the Secret) and the job (in GRAFT_JOB, as the operator's RayJob hands it to
    # the head); the endpoint comes from the spec.
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env.update(TEST_CREDENTIALS, GRAFT_JOB=job.read_text())
    cmd = [sys.executable, "-m", "graft_trainer", "--job-env", "GRAFT_JOB"]
    root = f"{s3_bucket}/jobs/{uid}"

    first = start_driver(cmd, tmp_path, env)
    first.wait_for(lambda: stage_epoch(root, "FullFineTune") >= 2, 240, "FullFineTune epoch 2")
    first.kill()
    before = Ledger.load(root)
    killed_at = before.stage("FullFineTune").epoch
    assert before.stage("FullFineTune").state == StageState.RUNNING
    assert 2 <= killed_at < 6, "the stage finished before the driver was killed"
    finished = {"FrozenFeatures": before.stage("FrozenFeatures").end_time}
    assert all(finished.values())

    second = start_driver(cmd, tmp_path, env)
    assert second.wait(300) == 0, second.output()[-3000:]
    after = Ledger.load(root)
    assert after.attempt == 2
    assert [s.state for s in after.stages] == [StageState.SUCCEEDED] * 2
    assert {t: after.stage(t).end_time for t in finished} == finished, "finished stages must not run again"
    fft = after.stage("FullFineTune")
    assert [h["epoch"] for h in fft.history] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # Every epoch is checkpointed before the ledger records it; the controller registers a checkpoint when
    # it collects the report, so the last one may not have been registered when the driver died.
    resumed = {h["resumed_from"] for h in fft.history if h["epoch"] > killed_at}
    assert len(resumed) == 1 and killed_at - 1 <= resumed.pop() <= killed_at, f"resumed from {resumed}"
    assert after.model_uri == f"{root}/model"
    assert fft.checkpoint.startswith(f"{root}/checkpoints/{uid}-fullfinetune/epoch_")

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket[5:], Prefix=f"jobs/{uid}/")["Contents"]}
    prefix = f"jobs/{uid}/"
    assert {prefix + "ledger.json", prefix + "model/model.pt", prefix + "model/model.json"} <= keys
    assert {prefix + "features/train.pt", prefix + "features/val.pt"} <= keys
    assert any(k.startswith(f"{prefix}checkpoints/{uid}-fullfinetune/epoch_") and k.endswith("state.pt") for k in keys)

    # The logs outlive the Ray processes: `graft logs` reads each stage's driver and worker lines from S3, the killed
    # attempt's included, and no key is in them.
    second.reap_ray()
    shown = subprocess.run([GRAFT, "logs", root], env={**env, "AWS_ENDPOINT_URL": s3_endpoint}, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    labels = [line.split(" | ")[0] for line in lines]
    assert sorted(set(labels), key=labels.index) == [
        "FrozenFeatures/driver", "FullFineTune/driver", "FullFineTune/worker-0", "FullFineTune/worker-1"]
    for worker in (0, 1):
        epochs = [line for line in lines if line.startswith(f"FullFineTune/worker-{worker} |") and "epoch 6/6" in line]
        assert epochs, f"worker {worker}'s last epoch is not in its log:\n{shown.stdout[-3000:]}"
    started = [line for line in lines if line.startswith("FullFineTune/driver |") and ", attempt " in line]
    assert [line.rsplit(" ", 1)[1] for line in started] == ["1", "2"], "the killed attempt's driver log was lost"
    assert "stage FullFineTune succeeded" in shown.stdout
    assert TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in shown.stdout


def test_worker_killed_mid_epoch_is_restarted_from_the_latest_checkpoint(tmp_path, shared_ray, ray_cluster):
    """A Ray Train worker SIGKILLed mid-stage: Ray Train restarts the worker group from the latest checkpoint and the
    driver finishes the stage. The driver joins the session's Ray cluster (as a RayJob's joins its RayCluster): the
    driver and Ray live on, only the worker dies."""
    weights = smallcnn_weights(tmp_path / "w.pt")
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(weights)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 32},
        "stages": [{"type": "FullFineTune", "epochs": 6, "batchSize": 32, "augment": False}],
        "workers": {"replicas": 2, "cpus": "1"},
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
    }
    job = write_job(tmp_path / "job.json", job_doc("worker-kill", spec, uid="worker-kill-1"))
    store = tmp_path / "store"
    root = str(store / "worker-kill-1")
    earlier = ray_train_workers(ray_cluster.ray_tmp)  # none expected: a finished run's worker actors have exited
    driver = start_driver([sys.executable, "-m", "graft_trainer", "--job", str(job), "--storage", str(store)], tmp_path)
    # At epoch 2 in the ledger, epoch 1's checkpoint is registered (a worker's second report waits for the
    # controller to collect the first).
    driver.wait_for(lambda: stage_epoch(root, "FullFineTune") >= 2, 240, "FullFineTune epoch 2")
    workers = sorted(ray_train_workers(ray_cluster.ray_tmp) - earlier)
    assert workers, "no Ray Train worker process found"
    os.kill(workers[0], signal.SIGKILL)
    assert driver.wait(300) == 0, driver.output()[-3000:]
    fft = Ledger.load(root).stage("FullFineTune")
    assert fft.state == StageState.SUCCEEDED
    assert [h["epoch"] for h in fft.history] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert max(h["resumed_from"] for h in fft.history) >= 1, "the restarted workers began again at epoch 0"


def test_a_driver_killed_mid_sweep_resumes_the_head_sweep_from_its_checkpoint(tmp_path):
    """The Head sweep runs in the driver (the features fit in memory); the driver is killed mid-sweep; the same
    command goes on from the sweep's last checkpoint in storage (and says so in the ledger), not from epoch 1."""
    uid = "5e1d-sweep-resume"
    # The sweep checkpoints every tenth of its epochs (graft_trainer/sweep.py, `every`): killed at 1.5 tenths, it
    # has one checkpoint behind it and most of its epochs ahead (300 epochs: ~13 ms each in the driver, 2 cores; the
    # kill lands within one 0.3 s poll of the ledger, a few dozen epochs at most, of the 255 left).
    epochs, every = 300, 30
    spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": str(smallcnn_weights(tmp_path / "w.pt"))},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": epochs, "patience": None}],
        "checks": SMOKE_CHECKS,
        "serving": NO_SERVING,
        "workers": {"replicas": 2, "cpus": "1"},
        "storage": {"uri": str(tmp_path / "jobs")},
    }
    job = write_job(tmp_path / "job.json", job_doc("sweep-resume", spec, uid=uid))
    cmd = [sys.executable, "-m", "graft_trainer", "--job", str(job)]
    root = str(tmp_path / "jobs" / uid)
    first = start_driver(cmd, tmp_path)
    first.wait_for(lambda: stage_epoch(root, "Head") >= every * 3 // 2, 300,
                   f"Head past its first checkpoint (epoch {every})")
    first.kill()
    killed_at = Ledger.load(root).stage("Head").epoch
    assert killed_at < epochs, "the sweep finished before the driver was killed"
    features_end = Ledger.load(root).stage("FrozenFeatures").end_time

    second = start_driver(cmd, tmp_path)
    assert second.wait(400) == 0, second.output()[-3000:]
    second.reap_ray()
    head = Ledger.load(root).stage("Head")
    assert head.state == StageState.SUCCEEDED and len(head.sweep) == 32
    assert [h["epoch"] for h in head.history] == [float(e) for e in range(1, epochs + 1)]
    resumed = {h["resumed_from"] for h in head.history if h["epoch"] > killed_at}
    assert len(resumed) == 1 and every <= resumed.pop() <= killed_at, resumed
    assert Ledger.load(root).stage("FrozenFeatures").end_time == features_end


def test_graft_run_example_ctrl_c_resumes_then_exports_plots_and_predicts(tmp_path):
    """The README's example (epochs cut down for CI), interrupted with Ctrl-C during FullFineTune (the Head sweep,
    in-process, takes about a second), rerun to the end."""
    doc = yaml.safe_load((REPO / "examples" / "digits-lpft.yaml").read_text())
    epochs = {"Pretrain": 3, "Head": 40, "FullFineTune": 20}
    for stage in doc["spec"]["stages"]:
        if stage["type"] in epochs:
            stage["epochs"] = epochs[stage["type"]]
    manifest = tmp_path / "digits-lpft.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    runs = tmp_path / "runs"
    root = str(runs / "digits-lpft")
    # A relative run folder, as `graft run` defaults to: Ray workers have another working directory.
    cmd = [GRAFT, "run", str(manifest), "--storage", "runs"]

    first = start_driver(cmd, tmp_path, cwd=tmp_path)
    first.wait_for(lambda: stage_epoch(root, "FullFineTune") >= 1, 300, "FullFineTune running")
    os.killpg(first.proc.pid, signal.SIGINT)
    code = first.wait(120)
    first.reap_ray()
    assert code == 130, first.output()[-3000:]
    assert "run the same command to resume" in first.output()
    interrupted = Ledger.load(root)
    assert interrupted.stage("Pretrain").state == StageState.SUCCEEDED
    assert interrupted.stage("Head").state == StageState.SUCCEEDED
    assert interrupted.stage("FullFineTune").state == StageState.RUNNING
    pretrain_end = interrupted.stage("Pretrain").end_time

    second = start_driver(cmd, tmp_path, cwd=tmp_path)
    assert second.wait(400) == 0, second.output()[-3000:]
    second.reap_ray()
    out = second.output()
    ledger = Ledger.load(root)
    assert ledger.done and ledger.stage("Pretrain").end_time == pretrain_end
    assert "digits-lpft: 4/4 stages" in out and "curves:" in out
    # The demo learns: every training stage passed the learning check (at its default, Fail), and said how.
    assert [s.finding for s in ledger.stages] == [None] * 4 and "did not learn" not in out
    assert all("against chance" in ledger.stage(t).learning for t in ("Pretrain", "Head", "FullFineTune"))
    png = Path(root) / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((Path(root) / "model" / "model.json").read_text())
    assert meta["labels"] == [str(i) for i in range(10)] and meta["architecture"] == "smallcnn"

    image = tmp_path / "digit.png"
    write_png(image, 90, size=8)
    predicted = subprocess.run([GRAFT, "predict", f"{root}/model", str(image)], capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{image}: ") and len(predicted.stdout.split()) == 1 + 2 * 3

    status = subprocess.run([GRAFT, "status", root, "-o", "json"], capture_output=True, text=True)
    assert json.loads(status.stdout)["model_uri"] == f"{root}/model"


def test_a_streamed_image_folder_trains_on_two_workers_and_its_corrupt_image_fails_the_stage_by_name(tmp_path,
                                                                                                     shared_ray):
    """An ImageFolder over the workers' memory budget (workers.memory 4Ki) is read batch by batch inside the
    Ray Train workers; a corrupt image in it outside the sample decoded up front fails the stage naming the
    file when a worker reads it."""
    from graft_trainer import data as data_mod

    folder = tmp_path / "images"
    for c, value in (("dark", 40), ("mid", 128), ("bright", 215)):
        for i in range(40):
            write_png(folder / c / f"{i}.png", value + i, size=16)
    weights = smallcnn_weights(tmp_path / "w.pt")
    store = tmp_path / "store"

    def run(uid: str, stages: list[dict]) -> tuple[DriverProcess, int]:
        spec = {
            "model": {"backbone": "smallcnn", "numClasses": 3, "weights": str(weights)},
            "data": {"train": str(folder), "imageSize": 16},
            "stages": stages,
            "workers": {"replicas": 2, "cpus": "1", "memory": "4Ki"},
            "checks": SMOKE_CHECKS,
            "serving": NO_SERVING,
        }
        job = write_job(tmp_path / f"{uid}.json", job_doc(uid, spec, uid=uid))
        cmd = [sys.executable, "-m", "graft_trainer", "--job", str(job), "--storage", str(store)]
        driver = start_driver(cmd, tmp_path)
        try:
            return driver, driver.wait(400)
        finally:
            driver.reap_ray()

    driver, rc = run("streamed-ok", [{"type": "FullFineTune", "epochs": 2, "batchSize": 8}])
    assert rc == 0, driver.output()[-3000:]
    fft = Ledger.load(str(store / "streamed-ok")).stage("FullFineTune")
    assert fft.state == StageState.SUCCEEDED and [h["epoch"] for h in fft.history] == [1.0, 2.0]

    train, val = data_mod.train_val(str(folder), None, 0.2, 0)
    sampled = {f for src in (train, val) for f in data_mod.check_sample(src, 0).files}
    corrupt = next(f for f in train.files if f not in sampled)
    Path(corrupt).write_bytes(b"not a png")
    driver, rc = run("streamed-corrupt", [{"type": "FullFineTune", "epochs": 1, "batchSize": 8}])
    assert rc != 0
    fft = Ledger.load(str(store / "streamed-corrupt")).stage("FullFineTune")
    assert fft.state == StageState.FAILED
    assert fft.message.startswith(f"{corrupt}: not a readable image"), fft.message
    assert fft.start_time is not None  # failed in a worker, after the stage started
