"""Where a stage's time goes: the parts of its latest attempt recorded in the ledger (`StageRecord.timing`, seconds),
shown by `graft status` (and `-o json`) and measured by `bench/trainer_bench.py demo`.

The parts, each measured where it happens:
- `ray_init`: starting (or joining) Ray, in the first stage that needs it;
- `startup`: from the driver's `fit()` to the training loop starting on rank 0 (Ray Train's controller and worker
  group, the workers' imports); for FrozenFeatures, from submitting the Ray Data pipeline to its first batch (the
  actor pool's start);
- `data`: the loop reading and decoding its data and building the model, until it asks for its checkpoint;
- `compute`: the epochs' training and validation (FrozenFeatures: the rest of the feature pass);
- `checkpoint`: reporting epochs: checkpoints written (and a resume's read), the ledger's per-epoch writes
  (FrozenFeatures: writing the features);
- `teardown`: from the loop's last measured moment to `fit()` returning (worker group and controller shut down);
- `driver`: the rest of the attempt, in the driver: the stage's inputs, reading the chosen checkpoint back, saving
  the output, scoring on the held-out test set, calibration.
"""

from __future__ import annotations

import time

from graft.ledger import TIMING_PARTS as PARTS


class Clock:
    """A training loop's own parts (`data`, `compute`, `checkpoint`): the time since the last switch goes to the
    part the loop was in. A session starts in `data`; the session's methods switch (see `graft_trainer/session.py`)."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {"data": 0.0, "compute": 0.0, "checkpoint": 0.0}
        self._phase = "data"
        self._since = time.perf_counter()

    def switch(self, phase: str) -> None:
        """Put the time since the last switch into the current part and go on in `phase`."""
        now = time.perf_counter()
        self.parts[self._phase] = self.parts.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def snapshot(self) -> dict[str, float]:
        """The parts so far (the current one up to now), rounded for the ledger."""
        self.switch(self._phase)
        return rounded(self.parts)

    def total(self) -> float:
        self.switch(self._phase)
        return sum(self.parts.values())


def rounded(parts: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in parts.items()}


def close(parts: dict[str, float], seconds: float) -> dict[str, float]:
    """The attempt's parts with `driver` (what the others leave of the attempt's `seconds`) added; in `PARTS` order."""
    measured = {k: v for k, v in parts.items() if k != "driver"}
    done = {**measured, "driver": max(0.0, seconds - sum(measured.values()))}
    return rounded({k: done[k] for k in PARTS if k in done})
