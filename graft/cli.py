"""The `graft` command line.

The foundation commands live here; the trainer (`graft.trainer.cli`) and the operator
(`graft.operator.cli`) register theirs through a `register(app)` function, importing their heavy
dependencies (torch, Ray, kopf) only when one of their commands runs.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from graft import __version__

app = typer.Typer(
    name="graft",
    help="Graft: transfer learning as a Kubernetes resource. Validate, run and operate TransferJobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Graft: transfer learning as a Kubernetes resource."""


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Manifests (YAML or JSON, multi-document allowed); - for stdin.")],
) -> None:
    """Check TransferJob manifests. Prints `FILE: field.path: reason` per problem; exit 1 if any."""
    from graft.api.validation import validate_stream

    bad = 0
    for file in files:
        name = "(stdin)" if str(file) == "-" else str(file)
        try:
            text = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            typer.echo(f"{name}: (file): cannot read: {reason}")
            bad += 1
            continue
        documents, problems = validate_stream(text)
        for index, problem in problems:
            # Documents are numbered from 0 (as `yq` and kubectl's error messages do) when a file has several.
            where = f"{name}[{index}]" if documents > 1 else name
            typer.echo(f"{where}: {problem}")
        bad += bool(problems)
    if bad:
        typer.echo(f"{bad} of {len(files)} file(s) invalid", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(files)} file(s) valid", err=True)


@app.command()
def crd() -> None:
    """Print the TransferJob CustomResourceDefinition (apply it with `graft crd | kubectl apply -f -`)."""
    from graft.api.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


@app.command()
def status(
    run: Annotated[str, typer.Argument(help="A run folder, or a job's storage URI `<storage.uri>/<uid>`.")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
) -> None:
    """Print a job's ledger: stage states, epochs, metrics, checkpoints."""
    from graft.ledger import Ledger
    from graft.storage import StorageError

    if output not in ("table", "json"):
        raise typer.BadParameter("must be 'table' or 'json'", param_hint="--output")
    try:
        ledger = Ledger.load(run)
    except StorageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if ledger is None:
        typer.echo(f"error: {run}: no ledger.json here (not a Graft run folder or job URI)", err=True)
        raise typer.Exit(1)
    if output == "json":
        typer.echo(json.dumps(ledger.model_dump(mode="json"), indent=2))
        return
    from rich.table import Table

    from graft.console import console

    table = Table(title=f"{ledger.job_name or ledger.job_uid}  ({ledger.progress()} stages)")
    for col in ("stage", "state", "epoch", "metrics", "checkpoint"):
        table.add_column(col, overflow="fold")
    for s in ledger.stages:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(s.metrics.items()))
        epoch = f"{s.epoch}/{s.epochs}" if s.epochs else str(s.epoch or "")
        table.add_row(s.type, s.state.value, epoch, metrics, s.checkpoint or s.output or "")
    console().print(table)
    if ledger.model_uri:
        typer.echo(f"model: {ledger.model_uri}")
    failed = ledger.failed
    if failed and failed.message:
        typer.echo(f"failed: {failed.type}: {failed.message}")


def _register_plugins() -> None:
    for module in ("graft.trainer.cli", "graft.operator.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


_register_plugins()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
