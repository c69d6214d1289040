"""docs/reference.md is generated from the models; the committed copy must not drift."""

from __future__ import annotations

from support.committed import COMMITTED_REFERENCE

from graft.api import models as m
from graft.api.reference import reference_markdown


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


def test_reference_has_the_head_pods_section():
    text = reference_markdown()
    section = text.split("## `spec.scheduling.head`", 1)[1].split("\n## ", 1)[0]
    for name, field in m.HeadSchedulingSpec.model_fields.items():
        assert f"| `{field.alias or name}` |" in section, name
