"""The job's export: which model it exports (the choice among candidates, `selection.py`, or the last stage that
made a model) and its model.json (architecture, labels, preprocessing, metrics, the choice's account), written
through `export.export_model`."""

from __future__ import annotations

from typing import Any

from graft.ledger import Ledger
from graft_trainer import data as data_mod
from graft_trainer import export, models, registry, selection, timm_backbone
from graft_trainer.context import StageContext


def export_job(ctx: StageContext, job: dict[str, str], ledger: Ledger) -> str:
    """Export the job's model under `<root>/model/` and return its URI ("" when no stage made a model: FrozenFeatures
    alone makes features); records the choice in `ledger.export`. `job`: its `name` and `uid` for model.json."""
    found = selection.candidates(ledger)
    block = None
    if found:  # the best target classifier by validation, never silently the last stage's
        chosen, reason, tests = selection.choose(found)
        made, block = _candidate(ctx, chosen, ledger), _selection_block(ctx, chosen, reason, found, tests, ledger)
        metrics = chosen.metrics
        ledger.export = {"stage": chosen.stage, "reason": reason}
    else:
        made = metrics = None
        for last in reversed(ctx.spec.stages):
            made = registry.kind(last.type).model(ctx, ledger)
            if made:
                metrics = ledger.stage(last.type).metrics
                break
    if made is None:
        return ""
    state, classes, num_classes = made
    meta = _meta(ctx, job, num_classes, classes, metrics)
    _mark_findings(ledger, meta)
    extra = _timm_files(ctx, state, meta) if timm_backbone.is_timm(ctx.spec.model.backbone) else {}
    if block:
        meta["selection"] = block
    if metrics and metrics.get("temperature"):
        # Fitted on validation logits of the exported weights; `graft predict` divides logits by it.
        meta["temperature"] = metrics["temperature"]
    return export.export_model(ctx.root, state, meta, extra)


def _mark_findings(ledger: Ledger, meta: dict[str, Any]) -> None:
    """A job that goes on past a stage that did not learn (`spec.checks.learning.action: Warn`) never exports
    silently: model.json's `findings` and the ledger's `export.warning` name each such stage."""
    findings = {r.type: r.finding["message"] for r in ledger.stages if r.finding}
    if not findings:
        return
    meta["findings"] = findings
    warning = "; ".join(f"stage {stage} {message.split('.')[0]}" for stage, message in findings.items())
    ledger.export = {**(ledger.export or {}), "warning": warning}


def _meta(ctx: StageContext, job: dict[str, str], num_classes: int, classes: list[str],
          metrics: dict[str, float] | None) -> dict[str, Any]:
    spec = ctx.spec
    return {
        "architecture": spec.model.backbone,
        "num_classes": num_classes,
        "labels": classes,
        "preprocessing": {"image_size": spec.data.image_size, "resize": _resize_words(ctx), **ctx.preprocessing},
        "metrics": metrics,
        "stages": [s.type for s in spec.stages],
        "job": job,
        "load": "net = graft_trainer.models.build(architecture, num_classes, image_size); "
        "net.load_state_dict(torch.load('model.pt'))",
    }


def _timm_files(ctx: StageContext, state: dict, meta: dict[str, Any]) -> dict[str, bytes]:
    """The same weights in plain timm's layout (timm.create_model(name, num_classes=N, checkpoint_path=...)), said in
    model.json's `timm` and `load`."""
    net = ctx.build_net()
    net.load_state_dict(state)
    files = {"timm.safetensors": timm_backbone.safetensors_bytes(timm_backbone.timm_state_dict(net.backbone, net.head))}
    kwargs = net.backbone.graft_create_kwargs
    meta["timm"] = {**timm_backbone.json_config(ctx.spec.model.backbone, ctx.spec.data.image_size),
                    "checkpoint": "timm.safetensors", "create_kwargs": kwargs}
    meta["load"] += ("; or plain timm: timm.create_model(timm.name, num_classes=num_classes, "
                     "checkpoint_path='timm.safetensors', **timm.create_kwargs)")
    return files


def _resize_words(ctx: StageContext) -> str:
    """model.json's `preprocessing.resize`: how an image becomes image_size x image_size."""
    resize = data_mod.resize_of(ctx.preprocessing)
    if resize is None:
        return "bilinear"
    return (f"{resize.interpolation}: shorter side to floor(image_size / crop_pct), then the centre crop (timm's "
            "eval transform)")


def _candidate(ctx: StageContext, chosen: selection.Candidate, ledger: Ledger) -> tuple[dict, list[str], int]:
    """The chosen candidate's weights, label names and class count."""
    if chosen.record is not None:  # the interpolation: its weights are its own output
        state = models.read_state_dict(ledger.stage(chosen.record).interpolation["output"])
        return state, ctx.target_data()[0].classes, ctx.spec.model.num_classes
    made = registry.kind(chosen.stage).model(ctx, ledger)
    assert made is not None
    return made


def _selection_block(ctx: StageContext, chosen: selection.Candidate, reason: str, found: list[selection.Candidate],
                     tests: list[dict], ledger: Ledger) -> dict:
    """model.json's account of the choice: the rule, the reason, every candidate, the paired test of each
    alternative against the last stage's model, the checkpoint kept."""
    stage = chosen.source
    rec = ledger.stage(stage)
    block = {
        "stage": chosen.stage, "model": selection.name(chosen.stage), "rule": selection.RULE, "reason": reason,
        "candidates": [c.summary() for c in found], "tests": tests,
        "checkpoint": {"stage": stage, "best_epoch": rec.metrics.get("best_epoch"),
                       "monitor": ctx.stage(stage).monitor, "stop": rec.stop,
                       "note": "the best epoch by validation (monitor), not the last"},
    }
    if rec.interpolation:
        block["interpolation"] = {"alpha": rec.interpolation["alpha"], "curve": rec.interpolation["curve"]}
    return block
