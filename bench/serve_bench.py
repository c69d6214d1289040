"""Images/s of `graft serve` (onnxruntime behind v2 REST, called by the real `tritonclient.http` client) against
torch eager `graft predict` (export.predict), same model, same image files, same run, CPU.

  .venv/bin/python bench/serve_bench.py                   # resnet18 at 128 px, 256 images (about 2 minutes here)
  .venv/bin/python bench/serve_bench.py --arch smallcnn --size 8 --images 2048

Both sides start from the image files and end with the top class of every image, in batches of 64:
(a) `graft predict`'s path in-process: decode + resize (8 threads), torch eager forward, softmax;
(b) a v2 client: the same decode + resize, uint8 pixels sent to a `graft serve` process with the binary-data
    extension (tritonclient's default), probabilities back;
(c) for scale: onnxruntime in-process on the same pixels (what (b) costs without HTTP).
Both use the same thread count for the network (`--threads`, default 2: this machine's cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from graft_trainer import data as data_mod
from graft_trainer import export, models, serving

BATCH = 64


def _model(root: Path, arch: str, size: int) -> str:
    torch.manual_seed(0)
    net = models.build(arch, 10, size)
    meta = {"architecture": arch, "num_classes": 10, "labels": [f"c{i}" for i in range(10)], "temperature": 1.5,
            "preprocessing": {"image_size": size, **models.torchvision_preset(arch, None)},
            "job": {"name": "bench", "uid": "bench"}}
    uri = export.export_model(str(root / "job"), net.state_dict(), meta)
    serving.export_serving(uri)
    return uri


def _images(root: Path, n: int, size: int) -> list[str]:
    rng = np.random.RandomState(0)
    paths = []
    for i in range(n):
        path = root / "images" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (size + 16, size + 16, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _serve(uri: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "graft.cli", "serve", uri, "--port", str(port), "--threads",
                             str(threads)], stdout=subprocess.DEVNULL, env=env)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2):
                return proc
        except OSError:
            time.sleep(0.2)
    raise SystemExit("graft serve did not become ready")


def _decode(paths: list[str], size: int, pool: ThreadPoolExecutor) -> np.ndarray:
    return np.stack(list(pool.map(lambda p: data_mod.decode_image(p, size), paths)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    import tritonclient.http as httpclient
    from support.s3 import free_port

    with tempfile.TemporaryDirectory(prefix="graft-serve-bench-") as tmp:
        uri = _model(Path(tmp), args.arch, args.size)
        paths = _images(Path(tmp), args.images, args.size)
        list(export.predict(uri, paths[:BATCH], top=1))  # warm-up: model load, first-call allocations
        start = time.perf_counter()
        eager = [p.top[0][0] for p in export.predict(uri, paths, top=1, batch=BATCH)]
        t_eager = time.perf_counter() - start

        port = free_port()
        proc = _serve(uri, port, args.threads)
        try:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", connection_timeout=600,
                                                      network_timeout=600)
            name, served = "bench", []
            with ThreadPoolExecutor(8) as pool:
                pixels = _decode(paths[:BATCH], args.size, pool)
                given = httpclient.InferInput("images", list(pixels.shape), "UINT8")
                given.set_data_from_numpy(pixels)
                client.infer(name, [given])  # warm-up
                start = time.perf_counter()
                for i in range(0, len(paths), BATCH):
                    pixels = _decode(paths[i:i + BATCH], args.size, pool)
                    given = httpclient.InferInput("images", list(pixels.shape), "UINT8")
                    given.set_data_from_numpy(pixels)
                    out = client.infer(name, [given], outputs=[httpclient.InferRequestedOutput("probabilities")])
                    served += [f"c{j}" for j in out.as_numpy("probabilities").argmax(axis=1)]
                t_served = time.perf_counter() - start
                options = ort.SessionOptions()
                options.intra_op_num_threads = args.threads
                path, _ = serving.onnx_path(uri)
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                start = time.perf_counter()
                for i in range(0, len(paths), BATCH):
                    session.run(["probabilities"], {"images": _decode(paths[i:i + BATCH], args.size, pool)})
                t_ort = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    n = len(paths)
    same = sum(a == b for a, b in zip(eager, served, strict=True))
    print(f"{args.arch} {args.size}px, {n} images, batch {BATCH}, {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"(a) graft predict (torch eager):           {n / t_eager:8.1f} img/s")
    print(f"(b) graft serve via tritonclient (v2 REST): {n / t_served:8.1f} img/s   ratio b/a {t_eager / t_served:.2f}")
    print(f"(c) onnxruntime in-process:                 {n / t_ort:8.1f} img/s   ratio c/a {t_eager / t_ort:.2f}")
    print(f"same top-1: {same} of {n}")


if __name__ == "__main__":
    main()
