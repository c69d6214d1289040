"""Trainer benchmarks: each figure is a ratio against a baseline measured in the same run.

  .venv/bin/python bench/trainer_bench.py            # CPU figures for bench/RESULTS.md (a few minutes)
  .venv/bin/python bench/trainer_bench.py --tiny     # smoke run
  .venv/bin/python bench/trainer_bench.py gpu        # ResNet-50 and timm ViT-B/16 FullFineTune bf16 on a GPU (gpu.sh)
  .venv/bin/python bench/trainer_bench.py data       # (e) streamed vs kept ImageFolder
  .venv/bin/python bench/trainer_bench.py demo       # the README's demo vs a baseline checkout (bench/demo_bench.py)

(a) Head on stored features vs re-running the frozen backbone every epoch (same epochs).
(b) FullFineTune images/s after start-up (epochs after the first) on Ray Train vs a plain PyTorch loop.
(c) FrozenFeatures images/s (Ray Data actor pool, including actor start) vs a plain torch inference loop.
(d) Fixed start-up cost per stage: wall time of a stage on a trivially small job.
(e) `data` mode: FullFineTune images/s on an ImageFolder streamed from storage (over the worker's memory
    budget) vs the same set kept decoded in memory, in-process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from graft import storage
from graft.api.models import TransferJob
from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import loops, models, sweep
from graft_trainer.driver import Driver
from graft_trainer.session import LocalSession
from graft_trainer.stages import StageConfig


def _job(name: str, spec: dict) -> TransferJob:
    doc = {"apiVersion": "graft.dev/v1alpha1", "kind": "TransferJob", "metadata": {"name": name}, "spec": spec}
    return TransferJob.model_validate(doc)


def _run(name: str, spec: dict, store: str) -> Ledger:
    return Driver(_job(name, spec), store, log_to_driver=False).run()


def _weights(arch: str, path: Path, size: int) -> str:
    buf = io.BytesIO()
    torch.save(models.build(arch, 10, size).state_dict(), buf)
    path.write_bytes(buf.getvalue())
    return str(path)


def _after_startup(history: list[dict]) -> float:
    rates = [h["images_per_second"] for h in history[1:]] or [history[0]["images_per_second"]]
    return sum(rates) / len(rates)


def plain_train_loop(net, x, y, batch, epochs, preset, device, bf16=False, channels_last=False) -> float:
    """Images/s of a textbook loop on the same model and data (epochs after the first)."""
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    rates = []
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        net.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, seen = time.perf_counter(), 0
        for s in range(0, len(y), batch):
            b = perm[s : s + batch]
            xb = data_mod.normalize(x[b].to(device, non_blocking=True), preset["mean"], preset["std"])
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
            with ctx:
                loss = F.cross_entropy(net(xb).float(), y[b].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            seen += len(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    rates = rates[1:] or rates
    return sum(rates) / len(rates)


def bench_head(tiny: bool) -> dict:
    """(a) in-process: stored features + Head vs backbone forward every epoch."""
    size, n, epochs = (32, 256, 5) if tiny else (32, 1024, 30)
    src = data_mod.open_source("builtin:digits")
    x, y = src.images(size)[:n], torch.from_numpy(src.labels[:n])
    net = models.build("resnet18", 10, size).eval()
    preset = models.torchvision_preset("resnet18", None)
    spec = {
        "model": {"backbone": "resnet18", "numClasses": 10, "weights": "/unused.pt"},
        "data": {"train": "builtin:digits", "imageSize": size},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": epochs, "batchSize": 256}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        feats = loops.extract_features(net.backbone, x, preset, torch.device("cpu"))
        for name in ("train", "val"):
            buf = io.BytesIO()
            torch.save({"features": feats, "labels": y}, buf)
            storage.write_bytes(storage.join(tmp, f"{name}.pt"), buf.getvalue())
        # One pinned setting: the figure compares the stored features with the backbone, not sweep sizes.
        pinned = {**spec, "stages": [spec["stages"][0], {**spec["stages"][1], "lr": 1e-2, "weightDecay": 1e-2,
                                                          "labelSmoothing": 0.0, "patience": None}]}
        sweep.train_head(LocalSession(), StageConfig(_job("b", pinned).spec, 1, features=tmp))
        stored = time.perf_counter() - t0
    head = torch.nn.Linear(512, 10)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, n, 256):
            with torch.no_grad():
                f = net.backbone(data_mod.normalize(x[s : s + 256], preset["mean"], preset["std"]))
            loss = F.cross_entropy(head(f), y[s : s + 256])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # the same validation pass the Head stage makes
            head(net.backbone(data_mod.normalize(x[:256], preset["mean"], preset["std"])))
    rerun = time.perf_counter() - t0
    return {"images": n, "epochs": epochs, "stored_s": stored, "rerun_s": rerun, "speedup": rerun / stored}


def bench_ray(tiny: bool, store: str, workdir: Path) -> dict:
    """(b), (c), (d) through the real driver on local Ray, 2 workers x 1 CPU."""
    out: dict = {}
    workers = {"replicas": 2, "cpus": "1"}
    size, batch, epochs = (32, 64, 2) if tiny else (32, 64, 4)
    weights = _weights("resnet18", workdir / "r18.pt", size)
    shots = 10 if tiny else None
    base = {
        "model": {"backbone": "resnet18", "numClasses": 10, "weights": weights},
        "data": {"train": "builtin:digits", "imageSize": size, "shotsPerClass": shots},
        "workers": workers,
    }
    t0 = time.perf_counter()
    ledger = _run("bench-ff", {**base, "stages": [{"type": "FrozenFeatures", "batchSize": 256}]}, store)
    ff = ledger.stage("FrozenFeatures")
    out["ray_init_and_first_stage_s"] = time.perf_counter() - t0
    fft_spec = {"type": "FullFineTune", "epochs": epochs, "batchSize": batch, "augment": False}
    ledger = _run("bench-fft", {**base, "stages": [fft_spec]}, store)
    fft = ledger.stage("FullFineTune")

    d = _job("b", {**base, "stages": [fft_spec]}).spec.data
    train, val = data_mod.train_val(d.train, None, d.validation_split, d.seed, d.shots_per_class)
    x, y = train.images(size), torch.from_numpy(train.labels)
    preset = models.torchvision_preset("resnet18", None)
    torch.set_num_threads(2)
    net = models.build("resnet18", 10, size)
    plain_fft = plain_train_loop(net, x, y, batch, max(2, epochs), preset, torch.device("cpu"))
    ray_fft = _after_startup(fft.history)
    out["fft"] = {"ray_images_s": ray_fft, "plain_images_s": plain_fft, "ratio": ray_fft / plain_fft}

    allx = torch.cat([x, val.images(size)])
    net.eval()
    t0 = time.perf_counter()
    for s in range(0, len(allx), 256):
        loops.extract_features(net.backbone, allx[s : s + 256], preset, torch.device("cpu"))
    plain_ff = len(allx) / (time.perf_counter() - t0)
    ray_ff = ff.metrics["images_per_second"]
    out["frozen_features"] = {"ray_images_s": ray_ff, "plain_images_s": plain_ff, "ratio": ray_ff / plain_ff}

    # (d) start-up: a job so small that its compute is negligible.
    tiny_spec = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": _weights("smallcnn", workdir / "s.pt", 8)},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 1},
        "stages": [
            {"type": "FrozenFeatures"},
            {"type": "Head", "epochs": 1},
            {"type": "FullFineTune", "epochs": 1, "batchSize": 16},
        ],
        "workers": workers,
    }
    ledger = _run("bench-startup", tiny_spec, store)
    out["startup_s"] = {s.type: s.seconds for s in ledger.stages}
    return out


def bench_gpu(tiny: bool, store: str, backbone: str = "resnet50") -> dict:
    """FullFineTune of `backbone` (ResNet-50, or timm's ViT-B/16), bf16 + channels_last, on Ray Train (1 GPU worker)
    vs a plain loop on the same model and data."""
    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        sys.exit("no GPU here: run `bench/gpu.sh --tiny` for the CPU smoke mode")
    size, batch, epochs = (32, 16, 2) if tiny else (224, 256, 6)
    shots = 4 if tiny else None
    spec = {
        "model": {"backbone": backbone, "numClasses": 10},
        # builtin:digits upscaled to 224x224: synthetic images, through the stage's real data path.
        "data": {"train": "builtin:digits", "imageSize": size, "shotsPerClass": shots},
        "stages": [{"type": "FullFineTune", "epochs": epochs, "batchSize": batch, "augment": False,
                    "precision": "bf16" if cuda else "fp32", "channelsLast": True, "keepCheckpoints": 1}],
        "workers": {"replicas": 1, "gpus": 1 if cuda else 0, "cpus": "8" if cuda else "1"},
    }
    ledger = _run("bench-gpu", spec, str(Path(store) / backbone.replace(":", "-")))
    ray_rate = _after_startup(ledger.stage("FullFineTune").history)
    job = _job("b", spec)
    d = job.spec.data
    train, _ = data_mod.train_val(d.train, None, d.validation_split, d.seed, d.shots_per_class)
    x, y = train.images(size), torch.from_numpy(train.labels)
    device = torch.device("cuda" if cuda else "cpu")
    net = models.build(backbone, 10, size)
    plain = plain_train_loop(net, x, y, batch, epochs, models.torchvision_preset(backbone, None), device,
                             bf16=cuda, channels_last=cuda)
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "backbone": backbone, "images": len(y),
            "epochs": epochs, "ray_images_s": ray_rate, "plain_images_s": plain, "ratio": ray_rate / plain}


def bench_streaming(tiny: bool, workdir: Path) -> dict:
    """(e) FullFineTune on a local ImageFolder of 128x128 PNGs (resized to 64): kept vs streamed."""
    import numpy as np
    from PIL import Image

    per_class, size, epochs = (6, 32, 2) if tiny else (120, 64, 3)
    root = workdir / "images"
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    rates = {}
    for mode, memory in (("kept", "8Gi"), ("streamed", "4Ki")):
        spec = _job("bench-data", {
            "model": {"backbone": "resnet18", "numClasses": 10, "weights": "s3://unused/w.pt"},
            "data": {"train": str(root), "imageSize": size, "validationSplit": 0.2},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head"},
                       {"type": "FullFineTune", "epochs": epochs, "batchSize": 32}],
            "workers": {"replicas": 1, "memory": memory},
        }).spec
        session = LocalSession()
        t0 = time.perf_counter()
        loops.train_network(session, StageConfig(spec, 2))
        rates[mode] = {"images_s": _after_startup(session.reports), "wall_s": time.perf_counter() - t0}
    return {"images": per_class * 10, "image_size": size, "epochs": epochs, **rates,
            "ratio": rates["streamed"]["images_s"] / rates["kept"]["images_s"]}


def main() -> None:
    if sys.argv[1:2] == ["demo"]:  # the README's demo, this checkout against a baseline (bench/demo_bench.py)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import demo_bench

        demo_bench.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="cpu", choices=["cpu", "gpu", "data"])
    parser.add_argument("--tiny", action="store_true", help="small sizes: proves the script runs")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        workdir = Path(tmp)
        store = str(workdir / "store")
        if args.mode == "gpu":
            # timm's ViT-B/16 beside ResNet-50 (the CPU smoke mode runs its smallest sibling, same code path).
            vit = "timm:vit_tiny_patch16_224" if args.tiny else "timm:vit_base_patch16_224"
            result = {"gpu_fullfinetune_resnet50": bench_gpu(args.tiny, store),
                      "gpu_fullfinetune_timm_vit_b16": bench_gpu(args.tiny, store, vit)}
        elif args.mode == "data":
            result = {"streamed_vs_kept_imagefolder": bench_streaming(args.tiny, workdir)}
        else:
            result = {"head": bench_head(args.tiny), **bench_ray(args.tiny, store, workdir)}
    print(json.dumps(result, indent=2, default=str))
    for key, value in result.items():
        if isinstance(value, dict) and "ratio" in value:
            print(f"{key}: ratio {value['ratio']:.2f}")
        if key == "head":
            print(f"head: stored features {value['speedup']:.1f}x faster than re-running the backbone")


if __name__ == "__main__":
    main()
