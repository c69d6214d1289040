"""A driver killed mid-stage, in-process: a StoredSession (the in-driver Head sweep's) that raises right after the
checkpoint of a given epoch has been written, as a SIGKILL there would leave it."""

from __future__ import annotations

from graft_trainer.session import StoredSession


class Killed(Exception):
    pass


class DyingSession(StoredSession):
    """Raises `Killed` right after the checkpoint of epoch `at`."""

    def __init__(self, cfg, at):
        super().__init__(cfg)
        self.at = at

    def report(self, metrics, state, epoch, epochs):
        super().report(metrics, state, epoch, epochs)
        if epoch == self.at:
            raise Killed
