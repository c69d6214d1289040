"""The field reference (docs/reference.md), generated from the models like the CRD, so it cannot drift."""

from __future__ import annotations

import enum
import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from graft.api import models as m

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("spec", m.TransferJobSpec),
    ("spec.model", m.ModelSpec),
    ("spec.data", m.DataSpec),
    ("spec.stages[] (type: Pretrain)", m.PretrainStage),
    ("spec.stages[] (type: FrozenFeatures)", m.FrozenFeaturesStage),
    ("spec.stages[] (type: Head)", m.HeadStage),
    ("spec.stages[] (type: FullFineTune)", m.FullFineTuneStage),
    ("spec.workers", m.WorkersSpec),
    ("spec.storage", m.StorageSpec),
    ("spec.storage.credentialsSecret", m.SecretReference),
    ("spec.runPolicy", m.RunPolicy),
    ("spec.scheduling", m.SchedulingSpec),
    ("spec.scheduling.tolerations[]", m.Toleration),
    ("spec.scheduling.head", m.HeadSchedulingSpec),
    ("status", m.TransferJobStatus),
    ("status.conditions[]", m.Condition),
    ("status.stages[]", m.StageStatus),
]


#: The stage types' models: the members of the `Stage` union (Annotated[Union[...], discriminator]).
_STAGE_CLASSES = typing.get_args(typing.get_args(m.Stage)[0])


def _type_name(annotation: typing.Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        if all(a in _STAGE_CLASSES for a in kept):
            return "stage (below)"
        return " \\| ".join(_type_name(a) for a in kept)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in names:
        return names[annotation]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{e.value}`" for e in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if value in ({}, []) else "(object defaults)"
    if field.default is None or field.default is PydanticUndefined:
        return ""
    value = getattr(field.default, "value", field.default)
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def reference_markdown() -> str:
    """Markdown tables of every field: wire name, type, default, description."""
    out = [
        "# TransferJob field reference",
        "",
        f"`apiVersion: {m.API_VERSION}`, `kind: {m.KIND}`. Generated from `graft/api/models.py` by "
        "`python -m graft.api.reference > docs/reference.md`; a test keeps it in step. `kubectl explain "
        "transferjob.spec...` shows the same descriptions from the installed CRD.",
        "",
    ]
    for title, model in _SECTIONS:
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## `{title}`", "", doc, "", "| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            wire = field.alias or name
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            out.append(f"| `{wire}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown(), end="")
