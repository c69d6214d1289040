"""Spec identity: which parts of a TransferJob's spec determine each stage's result, as a hash per stage.

The ledger records each stage's hash when the stage starts. A rerun under the same job (same UID or name) with
a spec whose hashes differ from the recorded ones would otherwise reuse results of another spec, so the driver
refuses it, naming the changed fields and the first stage they invalidate, unless the user asks to start over
(`--restart`) or to rerun from a stage (`--from-stage`).

A stage's hash covers its own fields, `spec.model` and `spec.data` (minus the fields listed below as not
affecting it), and the previous stage's hash: every stage's result depends on the stages before it. Workers,
image, storage, run policy and scheduling never count. Fields are compared with their defaults filled in, except
a field added to Graft after ledgers recorded hashes, at the value that does what Graft did before it existed
(`neutral`): it is left out, so an unchanged manifest still matches a ledger written before the field existed. A
field whose default changed what the stage does (the Head's sweep and patience) counts, and such a ledger's stage
is refused, naming the field. Which fields those are is declared on each stage type (`StageType.not_determining`,
`neutral`, `added_empty`, `as_recorded`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from graft.api.models import TransferJobSpec
from graft.ledger import Ledger
from graft_trainer import registry

#: Fields added after ledgers first recorded hashes (issue 12, 2026-12), at the value that reproduces what Graft did
#: before them, for every stage type (each type declares its own: `StageType.neutral`): left out of the hash at
#: exactly that value. No held-out test set, as before.
NEUTRAL_ALL: dict[str, dict[str, Any]] = {"data": {"test": None, "testFraction": None}}

#: `spec.data` fields added after both forms of recorded hashes (issue 13), whose empty value gives the results the
#: code before them gave: left out of the view while empty, so that every earlier ledger's hashes still match (a set
#: value counts as any field does). A stage type's own are its `StageType.added_empty`.
DATA_ADDED_EMPTY: tuple[str, ...] = ("pathColumn", "labelColumn")


def view(spec: TransferJobSpec) -> dict[str, Any]:
    """The part of the spec that can determine results (model, data, stages), as JSON with defaults filled in."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    stages = [{k: v for k, v in s.items() if not (v is None and k in registry.kind(s["type"]).added_empty)}
              for s in dumped["stages"]]
    data = {k: v for k, v in dumped["data"].items() if not (v is None and k in DATA_ADDED_EMPTY)}
    return {"model": dumped["model"], "data": data, "stages": stages}


def _determining(spec_view: dict[str, Any], index: int, neutral: bool = True) -> dict[str, dict[str, Any]]:
    stage = spec_view["stages"][index]
    kind = registry.kind(stage["type"])
    skip = kind.not_determining
    parts = {"model": spec_view["model"], "data": spec_view["data"],
             "stage": kind.as_recorded(stage) if neutral else stage}
    kept = {}
    for part, fields in parts.items():
        same = {**NEUTRAL_ALL.get(part, {}), **kind.neutral.get(part, {})} if neutral else {}
        kept[part] = {k: v for k, v in fields.items()
                      if k not in skip.get(part, ()) and not (k in same and v == same[k])}
    return kept


def hashes(spec_view: dict[str, Any], neutral: bool = True) -> list[str]:
    """One hash per stage: its determining fields chained with the previous stage's hash. With `neutral` false,
    every field counts, as the ledgers of 2026-12-01/02 recorded them (issue 12's fields at any value)."""
    out: list[str] = []
    previous = ""
    for i in range(len(spec_view["stages"])):
        det = _determining(spec_view, i, neutral)
        text = json.dumps({"after": previous, **det}, sort_keys=True, separators=(",", ":"))
        previous = "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]
        out.append(previous)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "(not set)"
    return value if isinstance(value, str) else json.dumps(value)


def changed_fields(ledger: Ledger, new: dict[str, Any]) -> list[str]:
    """`spec.<path>: old -> new` for each determining field (of any stage) that differs from the ledger's spec."""
    lines: list[str] = []
    old_types = [s.type for s in ledger.stages]
    new_types = [s["type"] for s in new["stages"]]
    if old_types != new_types:
        lines.append(f"spec.stages: {', '.join(old_types)} -> {', '.join(new_types)}")
    old = ledger.spec
    if old is None:  # a ledger from before 2026-12 records no spec
        return lines
    seen: set[str] = set()
    for i in range(len(new["stages"])):
        det = _determining(new, i)
        for part in ("model", "data", "stage"):
            if part == "stage":
                if i >= min(len(old_types), len(old.get("stages", []))) or old_types[i] != new_types[i]:
                    continue
                before, path = old["stages"][i], f"spec.stages[{i}]"
            else:
                before, path = old.get(part, {}), f"spec.{part}"
            for key, value in det[part].items():
                name = f"{path}.{key}"
                if name not in seen and before.get(key) != value:
                    seen.add(name)
                    # A field the recorded spec lacks is newer than the run: its default is what changed.
                    new_field = " (a field added to Graft after that run; its default changed the stage)"
                    lines.append(f"{name}: {_fmt(before.get(key))} -> {_fmt(value)}"
                                 + (new_field if key not in before else ""))
    return lines


def first_invalidated(ledger: Ledger, new_view: dict[str, Any]) -> int | None:
    """Index (in the new spec) of the first stage whose recorded result or progress does not belong to this spec;
    None when everything recorded still holds. A stage recorded without a hash (a ledger from before 2026-12) is
    "unknown" and accepted as it is, as those ledgers always were."""
    old_types = [s.type for s in ledger.stages]
    new_types = [s["type"] for s in new_view["stages"]]
    # A recorded hash of either form belongs to this spec: today's, or every field counted (2026-12-01/02).
    accepted = list(zip(hashes(new_view), hashes(new_view, neutral=False), strict=True))
    for i, rec in enumerate(ledger.stages):
        if i >= len(new_types) or old_types[i] != new_types[i]:
            return min(i, len(new_types) - 1)
        if rec.spec_hash is not None and rec.spec_hash not in accepted[i]:
            return i
    if len(new_types) != len(old_types):  # stages added at the end: the exported model changes
        return len(old_types)
    return None
