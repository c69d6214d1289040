"""docs/reference.md is generated from the models; the committed copy must not drift."""

from __future__ import annotations

from graft.api import models as m
from graft.api.reference import COMMITTED_REFERENCE, reference_markdown


def test_committed_reference_matches_models():
    assert COMMITTED_REFERENCE.read_text() == reference_markdown(), (
        "docs/reference.md drifted from the models; regenerate it with "
        "`python -m graft.api.reference > docs/reference.md`"
    )


def test_reference_lists_every_spec_field():
    text = reference_markdown()
    for model in (m.TransferJobSpec, m.DataSpec, m.FullFineTuneStage, m.RunPolicy, m.StorageSpec):
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text, name
