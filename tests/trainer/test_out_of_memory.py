"""A stage that runs out of memory fails with one line in Graft's words (issue 11, problem 4), not ~900
characters of Ray's ControllerError: which fields size the run and what to try."""

from __future__ import annotations

import pytest
import torch
from support.trainer_data import SMOKE_CHECKS, job_doc

from graft.api.models import TransferJob
from graft.ledger import Ledger, job_root
from graft_trainer.driver import Driver, StageFailed
from graft_trainer.errors import out_of_memory
from graft_trainer.executors import LocalExecutor

SPEC = {"model": {"backbone": "smallcnn", "numClasses": 10},
        "data": {"train": "builtin:digits-noisy", "imageSize": 8, "shotsPerClass": 2},
        "stages": [{"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1,
                    "batchSize": 128}],
        "checks": SMOKE_CHECKS,
        "workers": {"replicas": 2, "memory": "2Gi"}}


class ControllerError(RuntimeError):
    """Shaped like Ray Train's: the worker's failure hangs off `controller_failure`."""

    def __init__(self, failure: BaseException):
        super().__init__("Training failed due to controller error: [... 900 characters of Ray ...]")
        self.controller_failure = failure


def _job():
    return TransferJob.model_validate(job_doc("oom", SPEC))


@pytest.mark.parametrize(("exc", "words"), [
    pytest.param(ControllerError(RuntimeError("Task was killed due to the node running low on memory; out of "
                                              "memory")), "a worker ran out of memory", id="ray-memory-monitor"),
    pytest.param(MemoryError(), "a worker ran out of memory", id="python-memory-error"),
    pytest.param(RuntimeError("a stage failed for another reason"), None, id="not-memory"),
    pytest.param(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "a GPU ran out of memory",
                 id="cuda"),
])
def test_out_of_memory_names_the_fields_that_size_the_run(exc, words):
    message = out_of_memory(exc, 0, _job().spec)
    if words is None:
        assert message is None
        return
    assert message.startswith(words)
    assert "spec.data.imageSize (8)" in message and "spec.stages[0].batchSize (128)" in message
    assert ("spec.workers.memory (2Gi)" in message) == (words == "a worker ran out of memory")
    assert "\n" not in message


def test_a_stage_that_runs_out_of_memory_fails_in_graft_words(tmp_path, monkeypatch):
    def fit(self, loop, cfg, keep):
        raise ControllerError(MemoryError())

    monkeypatch.setattr(LocalExecutor, "fit", fit)
    with pytest.raises(StageFailed, match=r"a worker ran out of memory: lower spec\.data\.imageSize"):
        Driver(_job(), str(tmp_path), executor=LocalExecutor()).run()
    rec = Ledger.load(job_root(str(tmp_path), "oom")).stage("Pretrain")
    assert rec.message.startswith("a worker ran out of memory") and "ControllerError" not in rec.message
