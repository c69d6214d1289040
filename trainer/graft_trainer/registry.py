"""The stage registry: the stage type of each `spec.stages[].type`, looked up by the driver, `identity.py` (which
fields a stage's result depends on) and `selection.py` (which stages are export candidates).

A new stage type is its API model (graft/api/models.py `Stage`) and one module with its `StageType`, added to
`STAGES` here (a test adds its own to `STAGES` for the test's length: tests/trainer/test_stage_registry.py).
"""

from __future__ import annotations

from graft_trainer.stages import STAGE_TYPES
from graft_trainer.stagetype import StageType

#: Every registered stage type by its `type`.
STAGES: dict[str, StageType] = {s.type: s for s in STAGE_TYPES}


def kind(stage_type: str) -> StageType:
    """The registered stage type of that name."""
    try:
        return STAGES[stage_type]
    except KeyError:
        raise KeyError(f"no stage type {stage_type!r} is registered; registered: {', '.join(STAGES)}") from None
