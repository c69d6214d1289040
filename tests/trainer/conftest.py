"""Fixtures of the trainer tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.s3 import free_port, make_bucket
from support.trainer_data import write_png


@pytest.fixture()
def one_thread():
    """torch on one thread for the test (same floating-point order every run), restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """A 3-class ImageFolder: dark, mid and bright images, 6 each."""
    root = tmp_path / "images"
    for c, value in (("dark", 30), ("mid", 128), ("bright", 225)):
        for i in range(6):
            write_png(root / c / f"{i}.png", value + i)
    return root


@pytest.fixture()
def authenticating_s3(monkeypatch):
    """A moto server that checks credentials (after the bucket is made), as AWS does."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)  # noqa: S310 (loopback)
                break
            except OSError:
                time.sleep(0.2)
        make_bucket(endpoint, "locked")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDWRONGWRONGWRONG0")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        yield "s3://locked"
    finally:
        proc.terminate()
        proc.wait(10)
