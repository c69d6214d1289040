"""What `graft status` prints: one job's table (stages, what they left, where the model and its serving files are)
or one line per run of a folder."""

from __future__ import annotations

import json
from typing import Any

import typer

from graft import uncertainty


def serving_line(model_uri: str) -> str | None:
    """Where the model's InferenceService manifest is (model.json's `serving` block, graft_trainer/serving.py), or None
    for a model folder without one."""
    from graft import storage

    try:
        serving = storage.read_json(storage.join(model_uri, "model.json")).get("serving")
    except (OSError, ValueError, storage.StorageError):
        return None  # the model line above is what status promises; this one is a pointer
    if not isinstance(serving, dict) or not serving.get("inferenceServiceUri"):
        return None
    return (f"inference service: {serving['inferenceServiceUri']}   (kubectl apply -f it; "
            f"locally: graft serve {model_uri})")


def print_ledger(ledger: Any, run: str) -> None:
    """`graft status`'s table of one job: its stages, then what they left (stops, notes, sweeps, the model, the
    tracking run, the logs) and why it failed."""
    from rich.table import Table

    from graft import joblogs
    from graft.console import console

    table = Table(title=f"{ledger.job_name or ledger.job_uid}  ({ledger.progress()} stages)")
    for col in ("stage", "state", "epoch", "metrics", "checkpoint"):
        table.add_column(col, overflow="fold")
    for s in ledger.stages:
        found = uncertainty.intervals(ledger, s.type, s.metrics)
        metrics = ", ".join(f"{k}={uncertainty.text(found[k])}" if k in found else f"{k}={v:.4g}"
                            for k, v in sorted(s.metrics.items()))
        epoch = f"{s.epoch}/{s.epochs}" if s.epochs else str(s.epoch or "")
        table.add_row(s.type, s.state.value, epoch, metrics, s.checkpoint or s.output or "")
    console().print(table)
    if ledger.splits:
        typer.echo("intervals: 95% Wilson, from the split sizes (" + ", ".join(
            f"{k} {n}" for k, n in ledger.splits.items()) + ")")
    for s in ledger.stages:
        if s.timing:
            typer.echo(f"{s.type}: time {s.timing_text()}")
        if s.stop:
            typer.echo(f"{s.type}: {s.stop}")
        for note in s.notes:
            typer.echo(f"{s.type}: {note}")
        if s.learning:
            typer.echo(f"{s.type}: learning check: {s.learning}")
        if s.finding and s.state.value != "Failed":  # a failed stage's message is the finding, said below
            typer.echo(f"{s.type} {s.finding['message']}")
        if s.sweep:
            console().print(sweep_table(s))
    for line in ledger.leakage or []:
        typer.echo(f"warning: leakage: {line}")
    if ledger.model_uri:
        typer.echo(f"model: {ledger.model_uri}")
        if ledger.export and ledger.export.get("stage"):
            typer.echo(f"exported: {ledger.export['stage']}: {ledger.export['reason']}")
        if ledger.export and ledger.export.get("warning"):
            typer.echo(f"warning: exported although {ledger.export['warning']}")
        if line := serving_line(ledger.model_uri):
            typer.echo(line)
    if ledger.tracking:
        typer.echo(ledger.tracking.describe())
    if line := joblogs.pointer(run):
        typer.echo(line)
    for line in uncertainty.warnings(ledger):
        typer.echo(f"warning: {line}")
    failed = ledger.failed
    if failed and failed.message:
        typer.echo(f"failed: {failed.type}: {failed.message}")


SWEEP_COLUMNS = (("lr", "lr", "{:g}"), ("weight_decay", "weight decay", "{:g}"),
                  ("label_smoothing", "label smoothing", "{:g}"), ("val_accuracy", "val accuracy", "{:.4f}"),
                  ("val_loss", "val loss", "{:.4f}"), ("best_epoch", "best epoch", "{:.0f}"),
                  ("stopped_at", "stopped at", "{:.0f}"))


def sweep_table(stage):
    """A stage's sweep, one row per setting, the chosen one marked (it is the stage's result)."""
    from rich.table import Table

    table = Table(title=f"{stage.type} sweep: {len(stage.sweep)} settings, chosen by validation (*)")
    table.add_column("")
    for _, heading, _ in SWEEP_COLUMNS:
        table.add_column(heading, justify="right")
    for i, row in enumerate(stage.sweep):
        cells = [fmt.format(row[key]) if key != "stopped_at" or row[key] else "-" for key, _, fmt in SWEEP_COLUMNS]
        table.add_row("*" if i == stage.chosen else "", *cells, style="bold" if i == stage.chosen else None)
    return table


def runs_below(folder: str) -> dict[str, Any]:
    """The runs one level below `folder` (e.g. graft-runs/), by name: their ledgers."""
    from graft import storage
    from graft.ledger import LEDGER_FILE, DamagedLedger, Ledger

    base = folder.rstrip("/")
    runs = {}
    for uri in storage.list_dir(folder, recursive=True):
        name, _, rest = uri[len(base) + 1:].partition("/")
        if rest != LEDGER_FILE:
            continue
        try:
            ledger = Ledger.load(storage.join(base, name))
        except DamagedLedger as exc:  # the other runs are still listed
            typer.echo(f"error: {exc}", err=True)
            continue
        if ledger is not None:
            runs[name] = ledger
    return runs


def age(timestamp: str) -> str:
    """How long ago, as kubectl's AGE column says it (45s, 12m, 3h, 2d)."""
    from graft.ledger import seconds_since

    seconds = int(seconds_since(timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _best(ledger: Any) -> dict[str, Any]:
    """A run's best validation accuracy (and which stage), its held-out test accuracy, with their intervals:
    `best` in words, and `<accuracy>_interval` / `<accuracy>_n` fields where the split sizes are known."""
    # A stage trained on its own data set (Pretrain) is scored on that set's validation split, not the target's.
    scored = [(s.metrics["val_accuracy"], s.type) for s in ledger.stages
              if "val_accuracy" in s.metrics and s.type not in ledger.stage_splits]
    if not scored:
        return {"best": ""}
    value, stage = max(scored)
    metrics = ledger.stage(stage).metrics
    found = uncertainty.intervals(ledger, stage, metrics)
    words = {"val_accuracy": f"{value:.4g}", "test_accuracy": f"{metrics.get('test_accuracy', 0.0):.4g}"}
    words.update({k: uncertainty.text(v) for k, v in found.items()})
    best = f"val_accuracy={words['val_accuracy']} ({stage})"
    best += f", held-out test_accuracy={words['test_accuracy']}" if "test_accuracy" in metrics else ""
    fields = {f"{k}_{part}": x for k, v in found.items() for part, x in (("interval", [v.low, v.high]), ("n", v.n))}
    return {"best": best, **fields}


def print_runs(runs: dict[str, Any], output: str) -> None:
    """One line per run: name, state, stages done, best validation accuracy (and which stage), age."""
    rows = []
    for name, ledger in sorted(runs.items()):
        state = "Succeeded" if ledger.done else "Failed" if ledger.failed else ledger.current.state.value
        rows.append({"run": name, "state": state, "stages": ledger.progress(), **_best(ledger),
                     "age": age(ledger.updated_at), "updated_at": ledger.updated_at,
                     "warnings": uncertainty.warnings(ledger)})
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from graft.console import console

    table = Table(box=None)
    for col in ("run", "state", "stages", "best", "age"):
        table.add_column(col.upper(), overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("run", "state", "stages", "best", "age")))
    console().print(table)
