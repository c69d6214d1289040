"""`graft predict` and `graft evaluate`: the commands that use an exported model (`<storage>/<uid>/model`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _output_format(output: str) -> str:
    if output not in ("text", "json"):
        raise typer.BadParameter("must be 'text' or 'json'", param_hint="--output")
    return output


def predict(
    model: Annotated[str, typer.Argument(help="Exported model folder or URI (`<storage>/<uid>/model`).")],
    images: Annotated[list[str], typer.Argument(
        help="Image files, folders (every image file under them, recursively) or s3:// URIs of either.")],
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="How many classes to print per image.")] = 3,
    output: Annotated[str, typer.Option(
        "--output", "-o",
        help='text, or json: one JSON document, a list of {"image", "top": [{"label", "probability"}]} or '
        '{"image", "error"}.')] = "text",
) -> None:
    """Print the top classes with probabilities for each image. An unreadable image is reported with the reason
    (on stderr as text) and the rest go on; exit 1 at the end if any could not be read."""
    from graft.storage import StorageError
    from graft_trainer.errors import InputError
    from graft_trainer.export import predict as _predict

    output = _output_format(output)
    try:
        results = _predict(model, images, top)
    except (FileNotFoundError, InputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    failed = total = 0
    documents = []
    for result in results:  # text is printed as the batches finish; JSON is one document, at the end
        total += 1
        failed += result.error is not None
        if output == "json":
            documents.append(result.as_json())
        elif result.error is not None:
            typer.echo(f"error: {result.image}: {result.error}", err=True)
        else:
            typer.echo(f"{result.image}: " + "  ".join(f"{label} {p:.3f}" for label, p in result.top))
    if output == "json":
        typer.echo(json.dumps(documents, indent=2))
    if failed:
        typer.echo(f"{failed} of {total} image(s) could not be read", err=True)
        raise typer.Exit(1)


#: Above this many classes the text output leaves the confusion matrix to the PNG and the JSON.
MATRIX_TABLE_MAX = 20


def evaluate(
    model: Annotated[str, typer.Argument(help="Exported model folder or URI (`<storage>/<uid>/model`).")],
    data: Annotated[str, typer.Argument(
        help="Labelled images: an ImageFolder (local or s3://), builtin:NAME, a TransferJob manifest or a run folder "
        "(graft-runs/JOB): one of the job's splits, rebuilt as its run made them (see --split).")],
    split: Annotated[str | None, typer.Option(
        "--split", help="For a manifest or run folder: which of the job's splits to score: test, validation or "
        "train. Default: test when the job has a test split (data.test or data.testFraction), else validation "
        "(the split that chose the model: optimistic).")] = None,
    png: Annotated[str, typer.Option("--png", help="Where to write the confusion matrix PNG (a path or s3:// URI).")]
    = "confusion.png",
    output: Annotated[str, typer.Option("--output", "-o", help="text, or json: one JSON document.")] = "text",
) -> None:
    """Print the model's accuracy on DATA, per-class precision, recall and support, and the confusion matrix
    (rows: true class, columns: predicted), and write the matrix as a PNG. DATA's classes must be the model's."""
    from graft import storage
    from graft.api.validation import InvalidSpec
    from graft.ledger import DamagedLedger
    from graft.storage import StorageError
    from graft_trainer.errors import InputError
    from graft_trainer.evaluate import evaluate as _evaluate
    from graft_trainer.evaluate_job import check_split
    from graft_trainer.plot import plot_confusion

    output = _output_format(output)
    try:
        check_split(split)
    except InputError as exc:  # a usage error, said before anything is read
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        report = _evaluate(model, data, split=split).report()
    except InvalidSpec as exc:
        for problem in exc.problems:
            typer.echo(f"{data}: {problem}", err=True)
        raise typer.Exit(2) from exc
    except (FileNotFoundError, InputError, StorageError, DamagedLedger) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        storage.write_bytes(png, plot_confusion(report))
    except (OSError, StorageError) as exc:
        typer.echo(f"error: {png}: cannot write the confusion matrix: {exc}", err=True)
        raise typer.Exit(1) from exc
    report["png"] = png if storage.is_remote(png) else str(Path(png).expanduser().resolve())
    if output == "json":
        typer.echo(json.dumps(report, indent=2))
        return
    _print_evaluation(report)


def _print_evaluation(report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    from graft.console import console as make_console

    console = make_console()
    # Plain lines through typer, cells escaped: paths and class names are data, never rich markup.
    typer.echo(f"model: {report['model']}")
    typer.echo(f"data: {report['data']}")
    if report.get("split"):
        typer.echo(f"split: {report['split']}")
    interval = report["accuracy_interval"]
    within = f", 95% Wilson interval [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    typer.echo(f"accuracy: {report['accuracy']:.4f} ({report['correct']} of {report['images']} images){within}")
    for line in report["warnings"]:
        typer.echo(f"warning: {line}")
    per_class = Table(title="per class")
    for col in ("class", "precision", "recall", "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for c in report["classes"]:
        per_class.add_row(escape(c["label"]), f"{c['precision']:.3f}", f"{c['recall']:.3f}", str(c["support"]))
    console.print(per_class)
    labels = [c["label"] for c in report["classes"]]
    if len(labels) <= MATRIX_TABLE_MAX:
        matrix = Table(title="confusion matrix (rows: true class, columns: predicted)")
        matrix.add_column("true \\ predicted")
        for label in labels:
            matrix.add_column(escape(label), justify="right")
        for label, row in zip(labels, report["confusion_matrix"], strict=True):
            matrix.add_row(escape(label), *(str(n) for n in row))
        console.print(matrix)
    else:
        typer.echo(f"confusion matrix: {len(labels)} classes, too many for a table here (see the PNG, or -o json)")
    typer.echo(f"confusion matrix PNG: {report['png']}")
