"""`graft run` (the embedded default: the whole job on this machine), `graft predict` and `graft evaluate`."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

DEFAULT_RUNS = "./graft-runs"


def _fmt_metrics(metrics: dict[str, float]) -> str:
    """The headline metrics; a finished stage's are its best epoch's (the one its result keeps), and say so."""
    keys = [k for k in ("val_accuracy", "val_loss", "train_loss") if k in metrics]
    text = ", ".join(f"{k}={metrics[k]:.3f}" for k in keys)
    text = f"best epoch {int(metrics['best_epoch'])}: {text}" if "best_epoch" in metrics and text else text
    # The held-out test score is said apart: it chose nothing, the validation figures chose the checkpoint.
    test = ", ".join(f"{k}={metrics[k]:.3f}" for k in ("test_accuracy", "test_loss") if k in metrics)
    return f"{text}; held-out {test}" if test else text


def _stage_time(rec) -> str:
    """The stage's own time: its recorded seconds once finished, else the time since it started."""
    from graft.ledger import seconds_since

    seconds = rec.seconds if rec.state.value != "Running" else None
    if seconds is None and rec.start_time:
        seconds = seconds_since(rec.start_time)
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class _ProgressWatcher:
    """Polls the ledger (workers write it after every epoch) and drives one progress bar per stage."""

    def __init__(self, root: str, stage_types: list[str], console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.root = root
        self.progress = Progress(
            TextColumn("{task.description:<15}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[time]:>6}"),  # the stage's own time (rich's elapsed counts from the run's start)
            TextColumn("{task.fields[state]:<9} {task.fields[metrics]}"),
            console=console,
        )
        self.tasks = {t: self.progress.add_task(t, total=None, state="Pending", metrics="", time="")
                      for t in stage_types}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def update(self) -> None:
        from graft.ledger import Ledger

        try:
            ledger = Ledger.load(self.root)
        except Exception:  # a half-visible write on some stores; the next poll sees it
            return
        if ledger is None:
            return
        for rec in ledger.stages:
            task = self.tasks.get(rec.type)
            if task is None:
                continue
            self.progress.update(
                task,
                total=rec.epochs or 1,
                completed=rec.epoch or 0,
                state=rec.state.value,
                metrics=_fmt_metrics(rec.metrics),
                time=_stage_time(rec),
            )

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.update()

    def __enter__(self):
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        self.update()
        self.progress.stop()


def _summary(ledger, console) -> None:
    from rich.table import Table

    table = Table(title=f"{ledger.job_name or ledger.job_uid}: {ledger.progress()} stages")
    for col in ("stage", "state", "time", "epochs", "metrics", "checkpoint"):
        table.add_column(col, overflow="fold")
    for rec in ledger.stages:
        seconds = f"{rec.seconds:.1f}s" if rec.seconds is not None else ""
        epochs = f"{rec.epoch}/{rec.epochs}" if rec.epochs else ""
        table.add_row(
            rec.type, rec.state.value, seconds, epochs, _fmt_metrics(rec.metrics), rec.checkpoint or rec.output or ""
        )
    console.print(table)
    for rec in ledger.stages:
        if rec.stop and rec.stop.startswith("early stop"):
            console.print(f"{rec.type}: {rec.stop}", markup=False)


def run(
    file: Annotated[Path, typer.Argument(help="TransferJob manifest (YAML or JSON).")],
    storage: Annotated[
        str, typer.Option("--storage", help="Storage root when the manifest names none (local folder or s3://).")
    ] = DEFAULT_RUNS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own output (worker logs, Ray Data, "
                                          "its C++ logs); without it they go to ray.log in the run folder.")] = False,
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over: a new run of this job that reuses no earlier result.")
    ] = False,
    from_stage: Annotated[
        str | None,
        typer.Option("--from-stage", metavar="STAGE", help="Rerun this stage and the ones after it, keeping the "
                     "earlier stages' results (e.g. after changing its settings)."),
    ] = None,
    force_takeover: Annotated[bool, typer.Option("--force-takeover", help="Take the job from the driver holding its "
                              "lease (lease.json); that driver stops at its next ledger write.")] = False,
) -> None:
    """Run a TransferJob on this machine (local Ray). Ctrl-C leaves it resumable: run the same command again.

    A rerun of a job whose spec changed what finished stages depend on is refused (exit 2), naming the changed
    fields; --from-stage or --restart say what to do with the earlier results. A job another driver runs is refused
    (exit 2), naming it."""
    from graft.api.validation import InvalidSpec, load_job
    from graft.console import console as make_console

    console = make_console()
    try:
        job = load_job(file.read_text())
    except OSError as exc:
        typer.echo(f"error: {file}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    except InvalidSpec as exc:
        for problem in exc.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(2) from exc

    from graft.trainer import stopping
    from graft.trainer.errors import InputError
    from graft.trainer.jobroot import take_lease

    from graft.lease import LeaseHeld, LeaseLost
    from graft.ledger import DamagedLedger
    from graft.storage import StorageError

    try:  # before torch is loaded: a refusal comes in seconds
        held = take_lease(job, storage, force_takeover)
    except (InputError, LeaseHeld, StorageError) as exc:
        typer.echo(f"error: {exc}".replace("--force-takeover", f"`graft run {file} --force-takeover`"), err=True)
        raise typer.Exit(1 if isinstance(exc, StorageError) else 2) from exc
    from graft.trainer.driver import Driver, SpecChanged, StageFailed
    from graft.trainer.plot import write_plot

    try:
        driver = Driver(job, storage, log_to_driver=verbose, restart=restart, from_stage=from_stage, held=held)
    except InputError as exc:
        held.release()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console.print(f"run folder: {driver.root}")
    try:
        driver.prepare()
    except SpecChanged as exc:
        driver.release_lease()
        typer.echo(f"error: {exc}".replace("  --from-stage", f"  graft run {file} --from-stage").replace(
            "  --restart", f"  graft run {file} --restart"), err=True)
        raise typer.Exit(2) from exc
    except StorageError as exc:
        driver.release_lease()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except DamagedLedger as exc:
        driver.release_lease()
        typer.echo(f"error: {exc.line(f'run graft run {file} --restart')}", err=True)
        raise typer.Exit(1) from exc
    native = None if verbose else _native_output_to(driver.root)
    stopping.install()
    code = 0
    try:
        with _ProgressWatcher(driver.root, [s.type for s in job.spec.stages], console):
            driver.run()
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C or SIGTERM: the stage stays Running, resumable
        signum = stopping.signal_of(exc)
        if signum is None:
            raise
        console.print(f"[yellow]interrupted[/]: {stopping.resumable_line(driver.root, signum)}", soft_wrap=True)
        stopping.exit_now(stopping.exit_code(signum))
    except LeaseLost as exc:  # the job is another driver's now: show nothing of its ledger, write nothing
        typer.echo(f"error: {exc}", err=True)
        _shutdown_ray()
        raise typer.Exit(1) from exc
    except (StageFailed, InputError, StorageError, DamagedLedger) as exc:
        from rich.markup import escape

        # escape: a path may hold "[...]"; soft_wrap: one line, whole, so grep finds the path
        console.print(f"[red]error[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        if native is not None:
            console.print(f"Ray's own output: {native}")
        code = 1
    from graft import joblogs
    from graft.ledger import Ledger

    try:
        ledger = Ledger.load(driver.root)
    except DamagedLedger:
        ledger = None  # said above
    if ledger is not None:
        _summary(ledger, console)
        try:
            console.print(f"curves: {write_plot(ledger, driver.root)}")
        except Exception as exc:  # the plot is a convenience; never fail a finished run for it
            console.print(f"[yellow]could not write the plot[/]: {exc}")
        if ledger.model_uri:
            console.print(f"model: {ledger.model_uri}   (try: graft predict {ledger.model_uri} IMAGE...)")
            if ledger.export:
                console.print(f"exported: {ledger.export['stage']}: {ledger.export['reason']}", markup=False)
        if ledger.tracking:
            console.print(ledger.tracking.describe(), highlight=False, markup=False)
        if line := joblogs.pointer(driver.root):
            console.print(line, highlight=False, markup=False)
    _shutdown_ray()
    raise typer.Exit(code)


def _native_output_to(root: str) -> Path:
    """Send what is written straight to file descriptor 2 (Ray's C++ parts: the driver's core worker logs at
    ERROR level things that are no error for Graft, e.g. "constructor arguments in the object store and
    max_restarts > 0" for every Ray Data actor pool) to `ray.log` in the run folder, so it cannot land in the
    middle of the progress bars. Python's own stderr (Graft's messages, real errors) stays on the terminal."""
    import os
    import tempfile

    from graft import storage

    folder = Path(root) if not storage.is_s3(root) else Path(tempfile.mkdtemp(prefix="graft-run-"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only or full storage: the first ledger write says so, in one line naming the path
        folder = Path(tempfile.mkdtemp(prefix="graft-run-"))
    path = folder / "ray.log"
    sys.stderr.flush()
    terminal = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace")
    return path


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


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
    from graft.trainer.errors import InputError
    from graft.trainer.export import predict as _predict

    from graft.storage import StorageError

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
        help="Labelled images: an ImageFolder (local or s3://), builtin:NAME, or a TransferJob manifest (its "
        "validation set: data.validation, or the split of data.train its run held out).")],
    png: Annotated[str, typer.Option("--png", help="Where to write the confusion matrix PNG (a path or s3:// URI).")]
    = "confusion.png",
    output: Annotated[str, typer.Option("--output", "-o", help="text, or json: one JSON document.")] = "text",
) -> None:
    """Print the model's accuracy on DATA, per-class precision, recall and support, and the confusion matrix
    (rows: true class, columns: predicted), and write the matrix as a PNG. DATA's classes must be the model's."""
    from graft.trainer.errors import InputError
    from graft.trainer.evaluate import evaluate as _evaluate
    from graft.trainer.plot import plot_confusion

    from graft import storage
    from graft.api.validation import InvalidSpec
    from graft.storage import StorageError

    output = _output_format(output)
    try:
        report = _evaluate(model, data).report()
    except InvalidSpec as exc:
        for problem in exc.problems:
            typer.echo(f"{data}: {problem}", err=True)
        raise typer.Exit(2) from exc
    except (FileNotFoundError, InputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        storage.write_bytes(png, plot_confusion(report))
    except (OSError, StorageError) as exc:
        typer.echo(f"error: {png}: cannot write the confusion matrix: {exc}", err=True)
        raise typer.Exit(1) from exc
    report["png"] = png if storage.is_s3(png) else str(Path(png).expanduser().resolve())
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
    typer.echo(f"accuracy: {report['accuracy']:.4f} ({report['correct']} of {report['images']} images)")
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


def check_data(job) -> list[str]:
    """The input checks a run makes before its first stage (listing, class counts against numClasses, decoding or
    a sample of it, weights), for `graft validate --check-data`: one line per stage whose inputs fail. graft/cli.py
    finds this function by name on the plugin module, as the core cannot import the trainer (torch). Reads the
    data and weights; trains nothing, writes nothing, starts no Ray."""
    from graft.trainer.driver import Driver
    from graft.trainer.errors import InputError
    from graft.trainer.executors import LocalExecutor

    try:
        driver = Driver(job, DEFAULT_RUNS, executor=LocalExecutor())
    except InputError as exc:
        return [str(exc)]
    return [f"stage {stage}: {message}" for stage, message in driver.input_problems()]


def register(app: typer.Typer) -> None:
    """Add the trainer's commands to the `graft` CLI."""
    app.command(name="run")(run)
    app.command(name="predict")(predict)
    app.command(name="evaluate")(evaluate)
    from graft.trainer.serving_cli import export_command, serve  # typer and graft.storage only: no torch

    app.command(name="export")(export_command)
    app.command(name="serve")(serve)
