"""`graft serve` answers the real `tritonclient.http` v2 client like `graft predict` answers, refuses bad requests
with 400 and a reason and goes on serving, and says how to make an ONNX model when a folder has none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.s3 import free_port
from typer.testing import CliRunner

from graft.cli import app
from graft_trainer import data as data_mod
from graft_trainer import export, models, serving

LABELS = [f"class-{i}" for i in range(6)]
IMAGES = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A 6-class smallcnn model folder with its serving files, and a temperature that is not 1."""
    root = tmp_path_factory.mktemp("served") / "job"
    torch.manual_seed(3)
    net = models.build("smallcnn", len(LABELS), 8)
    with torch.no_grad():  # spread the head so random images land in different classes
        net.head.weight.mul_(20)
    meta = {"architecture": "smallcnn", "num_classes": len(LABELS), "labels": LABELS, "temperature": 2.0,
            "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
            "job": {"name": "digits-lpft", "uid": "u1"}}
    uri = export.export_model(str(root), net.state_dict(), meta)
    serving.export_serving(uri)
    return uri


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Images of several sizes (so the client's resize matters), each a noisy patch of its own colour."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(7)
    paths = []
    for i in range(IMAGES):
        h, w = 8 + 3 * (i % 4), 8 + 2 * (i % 5)
        pixels = rng.randint(0, 256, 3)[None, None, :] + rng.normal(0, 30, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
        paths.append(str(folder / f"{i:02d}.png"))
    return paths


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"graft serve exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as answer:  # noqa: S310 (http)
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"graft serve not ready at {url} after {timeout:.0f}s")


@pytest.fixture(scope="module")
def server(model_dir):
    """A real `graft serve` process on a free port; yields its base URL (host:port)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "graft.cli", "serve", model_dir, "--port", str(port),
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _pixels(model_dir: str, paths: list[str]) -> np.ndarray:
    """What a client sends: images decoded and resized as model.json says, uint8 NCHW (the graph normalises)."""
    pre = json.loads(Path(model_dir, "model.json").read_text())["preprocessing"]
    return np.stack([data_mod.decode_image(p, pre["image_size"], data_mod.resize_of(pre)) for p in paths])


def _infer(client, name: str, array: np.ndarray, datatype: str = "UINT8", outputs=None):
    import tritonclient.http as httpclient

    given = httpclient.InferInput("images", list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return client.infer(name, [given], outputs=outputs)


def test_tritonclient_gets_the_same_top1_as_graft_predict(server, model_dir, images):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server)
    assert client.is_server_ready() and client.is_model_ready("digits-lpft")
    meta = client.get_model_metadata("digits-lpft")
    assert (meta["inputs"], [o["name"] for o in meta["outputs"]]) == (
        [{"name": "images", "datatype": "UINT8", "shape": [-1, 3, 8, 8]}], ["logits", "probabilities"])
    result = _infer(client, "digits-lpft", _pixels(model_dir, images),
                    outputs=[httpclient.InferRequestedOutput("probabilities"),
                             httpclient.InferRequestedOutput("logits", class_count=1)])
    served = [LABELS[i] for i in result.as_numpy("probabilities").argmax(axis=1)]
    classified = [v.decode().split(":")[2] for v in result.as_numpy("logits").reshape(-1)]
    printed = [p.top[0][0] for p in export.predict(model_dir, images, top=1)]
    assert (served, classified) == (printed, printed)
    assert len(set(printed)) > 1, "every image in one class: the comparison would prove little"
    probs = result.as_numpy("probabilities").max(axis=1)
    assert np.allclose(probs, [p.top[0][1] for p in export.predict(model_dir, images, top=1)], atol=1e-5)


BAD = [
    pytest.param("digits-lpft", np.zeros((2, 3, 9, 9), np.uint8), "UINT8", "shape [2, 3, 9, 9], the model takes",
                 id="wrong-shape"),
    pytest.param("digits-lpft", np.zeros((2, 3, 8, 8), np.float32), "FP32", "datatype 'FP32', the model takes UINT8",
                 id="wrong-dtype"),
    pytest.param("resnet", np.zeros((2, 3, 8, 8), np.uint8), "UINT8", "unknown model 'resnet'", id="unknown-model"),
    pytest.param("digits-lpft", np.zeros((65, 3, 8, 8), np.uint8), "UINT8", "batch of 65, the model takes 1 to 64",
                 id="batch-too-large"),
]


@pytest.mark.parametrize(("name", "array", "datatype", "reason"), BAD)
def test_a_bad_request_gets_400_with_the_reason_and_the_next_one_is_served(server, model_dir, images, name, array,
                                                                           datatype, reason):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server)
    with pytest.raises(InferenceServerException) as refused:
        _infer(client, name, array, datatype)
    assert (refused.value.status(), reason in refused.value.message()) == ("400", True), refused.value.message()
    good = _infer(client, "digits-lpft", _pixels(model_dir, images[:2]))
    assert good.as_numpy("probabilities").shape == (2, len(LABELS))


def test_json_only_request_as_curl_sends_it(server, model_dir, images):
    body = {"id": "42", "inputs": [{"name": "images", "shape": [1, 3, 8, 8], "datatype": "UINT8",
                                    "data": _pixels(model_dir, images[:1]).reshape(-1).tolist()}]}
    request = urllib.request.Request(f"http://{server}/v2/models/digits-lpft/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (an http URL)
        doc = json.loads(answer.read())
    [probs] = [o for o in doc["outputs"] if o["name"] == "probabilities"]
    assert (doc["id"], doc["model_name"], probs["datatype"], probs["shape"]) == ("42", "digits-lpft", "FP32", [1, 6])
    assert LABELS[int(np.argmax(probs["data"]))] == next(export.predict(model_dir, images[:1], top=1)).top[0][0]


def test_a_model_folder_without_onnx_says_how_to_make_one(tmp_path):
    net = models.build("smallcnn", 2, 8)
    meta = {"architecture": "smallcnn", "num_classes": 2, "labels": ["a", "b"],
            "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3}}
    uri = export.export_model(str(tmp_path / "old-job"), net.state_dict(), meta)
    result = CliRunner().invoke(app, ["serve", uri, "--port", "0"])
    assert (result.exit_code, result.output.splitlines()) == (
        1, [f"error: {uri}: no ONNX model in this model folder (a job from before serving support); make one with: "
            f"graft export {uri}"])
