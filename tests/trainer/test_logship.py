"""The job's logs in storage (graft_trainer/logship.py): what a process logs and prints lands in its file while it runs,
credentials never do, a rerun appends, and a failure's traceback is kept."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pytest

from graft import joblogs
from graft_trainer import logship

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"  # noqa: S105 (AWS docs example key)


@pytest.mark.parametrize(("line", "expected"), [
    (f"boto said {SECRET} twice: {SECRET}", "boto said *** twice: ***"),
    ("key id AKIAIOSFODNN7EXAMPLE in use", "key id *** in use"),
    ("aws_secret_access_key = abc123def", "aws_secret_access_key = ***"),
    ('{"password": "hunter22", "user": "me"}', '{"password": "***", "user": "me"}'),
    ("HF_TOKEN=hf_abcdefghijklmnop rest", "HF_TOKEN=*** rest"),
    ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: Bearer ***"),
    ("mlflow at https://admin:s3cr3t@mlflow.example:5000/", "mlflow at https://admin:***@mlflow.example:5000/"),
    ("epoch 3/20: val_accuracy=0.41, train_loss=0.66", "epoch 3/20: val_accuracy=0.41, train_loss=0.66"),
], ids=["env-value", "aws-key-id", "name-equals", "json-password", "token-variable", "bearer", "url-password",
        "plain-line"])
def test_credentials_are_masked(line, expected):
    secrets = logship.secret_values({"AWS_SECRET_ACCESS_KEY": SECRET, "HOME": "/home/someone", "SHORT_KEY": "abc"})
    assert secrets == [SECRET]  # short values and variables not named as secrets are left alone
    assert logship.scrub(line, secrets) == expected


def _read(root: Path, stage: str, name: str) -> str:
    path = Path(joblogs.log_uri(str(root), stage, name))
    return path.read_text() if path.exists() else ""


def test_a_log_is_uploaded_while_the_stage_runs_not_only_at_its_end(tmp_path):
    shipper = logship.LogShipper(joblogs.log_uri(str(tmp_path), "Head", "driver"), interval=0.05, secrets=[]).start()
    try:
        shipper.line("epoch 1/5")
        deadline = time.monotonic() + 5
        while "epoch 1/5" not in _read(tmp_path, "Head", "driver") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "epoch 1/5" in _read(tmp_path, "Head", "driver"), "nothing uploaded before the stage ended"
    finally:
        shipper.close()


def test_capture_keeps_graft_records_warnings_and_the_traceback_and_a_rerun_appends(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with logship.capture(str(tmp_path), "FullFineTune", "worker-1"):
        logging.getLogger("graft_trainer.loops").info("epoch 1/2: train_loss=0.5")
        logging.getLogger("ray.train").info("chatter that is not kept")
        logging.getLogger("ray.train").warning("a warning that is")
        warnings.warn(f"a Python warning naming {SECRET}", UserWarning, stacklevel=1)
    with pytest.raises(ValueError), logship.capture(str(tmp_path), "FullFineTune", "worker-1"):
        raise ValueError("bad batch")
    text = _read(tmp_path, "FullFineTune", "worker-1")
    assert "INFO graft_trainer.loops: epoch 1/2: train_loss=0.5" in text and "a warning that is" in text
    assert "chatter" not in text
    assert "a Python warning naming ***" in text and SECRET not in text
    assert text.count("--- FullFineTune worker-1: started") == 2, "the rerun replaced the first attempt's log"
    assert text.index("a Python warning") < text.index("ValueError: bad batch")
    assert "Traceback (most recent call last)" in text


def test_capture_puts_the_process_back_as_it_found_it(tmp_path):
    graft_logger = logging.getLogger("graft")
    level, handlers = graft_logger.level, list(logging.getLogger().handlers)
    with logship.capture(str(tmp_path), "Head", "driver"):
        pass
    assert (graft_logger.level, logging.getLogger().handlers) == (level, handlers)


def test_a_log_past_its_cap_keeps_its_latest_lines_and_says_what_was_cut(tmp_path):
    shipper = logship.LogShipper(str(tmp_path / "w.log"), cap=1000, secrets=[])
    for i in range(100):
        shipper.line(f"line {i:03d} " + "x" * 20)
    shipper.close()
    text = (tmp_path / "w.log").read_text()
    assert len(text) <= 1000 and text.startswith("[... ") and "characters cut" in text
    assert "line 099" in text and "line 000" not in text
