"""Spec identity: which parts of a TransferJob's spec determine each stage's result, as a hash per stage.

The ledger records each stage's hash when the stage starts. A rerun under the same job (same UID or name) with
a spec whose hashes differ from the recorded ones would otherwise reuse results of another spec, so the driver
refuses it, naming the changed fields and the first stage they invalidate, unless the user asks to start over
(`--restart`) or to rerun from a stage (`--from-stage`).

A stage's hash covers its own fields, `spec.model` and `spec.data` (minus the fields listed below as not
affecting it), and the previous stage's hash: every stage's result depends on the stages before it. Workers,
image, storage, run policy and scheduling never count. Fields are compared with their defaults filled in.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from graft.api.models import TransferJobSpec
from graft.ledger import Ledger

#: Spec fields a stage's result does not depend on. Everything else in `model`, `data` and the stage counts
#: (the safe side: a field added later counts until it is listed here).
NOT_DETERMINING: dict[str, dict[str, tuple[str, ...]]] = {
    # Pretrain trains on its own `data` with its own `numClasses`; the target set and its class count come later.
    "Pretrain": {"model": ("numClasses",), "data": ("train", "validation", "shotsPerClass")},
    # Features do not depend on the target's class count, the inference batch size or the actor pool.
    "FrozenFeatures": {"model": ("numClasses",), "stage": ("batchSize", "actors")},
    # How many checkpoints are kept (the best is always among them) and the GPU memory format.
    "FullFineTune": {"stage": ("keepCheckpoints", "channelsLast")},
}


#: Fields added after ledgers recorded hashes, whose empty value gives the results the code before them gave: left
#: out of the view while empty, so that those ledgers' hashes still match (a set value counts as any field does).
ADDED_EMPTY: dict[str, tuple[str, ...]] = {"FullFineTune": ("layerDecay",), "data": ("pathColumn", "labelColumn")}


def view(spec: TransferJobSpec) -> dict[str, Any]:
    """The part of the spec that can determine results (model, data, stages), as JSON with defaults filled in."""
    dumped = spec.model_dump(mode="json", by_alias=True)
    stages = [{k: v for k, v in s.items() if not (v is None and k in ADDED_EMPTY.get(s["type"], ()))}
              for s in dumped["stages"]]
    data = {k: v for k, v in dumped["data"].items() if not (v is None and k in ADDED_EMPTY["data"])}
    return {"model": dumped["model"], "data": data, "stages": stages}


def _determining(spec_view: dict[str, Any], index: int) -> dict[str, dict[str, Any]]:
    stage = spec_view["stages"][index]
    skip = NOT_DETERMINING.get(stage["type"], {})
    parts = {"model": spec_view["model"], "data": spec_view["data"], "stage": stage}
    return {part: {k: v for k, v in fields.items() if k not in skip.get(part, ())} for part, fields in parts.items()}


def hashes(spec_view: dict[str, Any]) -> list[str]:
    """One hash per stage: its determining fields chained with the previous stage's hash."""
    out: list[str] = []
    previous = ""
    for i in range(len(spec_view["stages"])):
        text = json.dumps({"after": previous, **_determining(spec_view, i)}, sort_keys=True, separators=(",", ":"))
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
                    lines.append(f"{name}: {_fmt(before.get(key))} -> {_fmt(value)}")
    return lines


def first_invalidated(ledger: Ledger, new_view: dict[str, Any]) -> int | None:
    """Index (in the new spec) of the first stage whose recorded result or progress does not belong to this spec;
    None when everything recorded still holds. A stage recorded without a hash (a ledger from before 2026-12) is
    "unknown" and accepted as it is, as those ledgers always were."""
    old_types = [s.type for s in ledger.stages]
    new_types = [s["type"] for s in new_view["stages"]]
    new_hashes = hashes(new_view)
    for i, rec in enumerate(ledger.stages):
        if i >= len(new_types) or old_types[i] != new_types[i]:
            return min(i, len(new_types) - 1)
        if rec.spec_hash is not None and rec.spec_hash != new_hashes[i]:
            return i
    if len(new_types) != len(old_types):  # stages added at the end: the exported model changes
        return len(old_types)
    return None
