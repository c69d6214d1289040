"""`graft run` (the embedded default: the whole job on this machine) and the trainer's part of `graft validate
--check-data`; `graft predict` and `graft evaluate` are in `model_cli.py`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from graft_trainer import model_cli
from graft_trainer.progress_lines import LedgerPoller, LinesWatcher

DEFAULT_RUNS = "./graft-runs"


def _fmt_metrics(metrics: dict[str, float], found: dict | None = None) -> str:
    """The headline metrics; a finished stage's are its best epoch's (the one its result keeps), and say so.
    `found`: the accuracies' intervals (`graft.uncertainty.intervals`), shown beside them."""
    from graft.uncertainty import metric_text

    found = found or {}
    keys = [k for k in ("val_accuracy", "val_loss", "train_loss") if k in metrics]
    text = ", ".join(metric_text(k, metrics[k], found) for k in keys)
    text = f"best epoch {int(metrics['best_epoch'])}: {text}" if "best_epoch" in metrics and text else text
    # The held-out test score is said apart: it chose nothing, the validation figures chose the checkpoint.
    test = ", ".join(metric_text(k, metrics[k], found) for k in ("test_accuracy", "test_loss") if k in metrics)
    return f"{text}; held-out {test}" if test else text


def _stage_metrics(ledger, rec) -> str:
    """A stage's headline metrics with the intervals of its accuracies."""
    from graft.uncertainty import intervals

    return _fmt_metrics(rec.metrics, intervals(ledger, rec.type, rec.metrics))


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


class _ProgressWatcher(LedgerPoller):
    """One progress bar per stage, from the ledger (`LedgerPoller`)."""

    def __init__(self, root: str, stage_types: list[str], console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        super().__init__(root)
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

    def show(self, ledger) -> None:
        for rec in ledger.stages:
            task = self.tasks.get(rec.type)
            if task is None:
                continue
            self.progress.update(
                task,
                total=rec.epochs or 1,
                completed=rec.epoch or 0,
                state=rec.state.value,
                metrics=_stage_metrics(ledger, rec),
                time=_stage_time(rec),
            )

    def __enter__(self):
        self.progress.start()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.progress.stop()


def _summary(ledger, console) -> None:
    from rich.table import Table

    from graft.uncertainty import warnings

    table = Table(title=f"{ledger.job_name or ledger.job_uid}: {ledger.progress()} stages")
    for col in ("stage", "state", "time", "epochs", "metrics", "checkpoint"):
        table.add_column(col, overflow="fold")
    for rec in ledger.stages:
        seconds = f"{rec.seconds:.1f}s" if rec.seconds is not None else ""
        epochs = f"{rec.epoch}/{rec.epochs}" if rec.epochs else ""
        table.add_row(
            rec.type, rec.state.value, seconds, epochs, _stage_metrics(ledger, rec), rec.checkpoint or rec.output or ""
        )
    console.print(table)
    if ledger.splits:
        console.print("intervals: 95% Wilson, from the split sizes (" + ", ".join(
            f"{k} {n}" for k, n in ledger.splits.items()) + ")", markup=False, highlight=False)
    for rec in ledger.stages:
        if rec.stop and rec.stop.startswith("early stop"):
            console.print(f"{rec.type}: {rec.stop}", markup=False)
    for line in warnings(ledger):
        console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    for rec in ledger.stages:  # the learning check's findings (graft_trainer/learning.py): never a quiet success
        if rec.finding:
            console.print(f"{rec.type} {rec.finding['message']}", style="bold red", markup=False, soft_wrap=True)


def run(
    file: Annotated[Path, typer.Argument(help="TransferJob manifest (YAML or JSON).")],
    storage: Annotated[
        str, typer.Option("--storage", help="Storage root when the manifest names none (local folder, s3:// or gs://).")
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
    from graft.console import console as make_console

    console = make_console()
    job = _load(file)
    driver = _prepared_driver(job, file, storage, verbose, restart, from_stage, force_takeover, console)
    if _finished_before(driver.prepare()):
        driver.release_lease()
        console.print(f"nothing to do: all {len(job.spec.stages)} stages already succeeded and the model is exported "
                      f"(graft run {file} --restart runs the job again)", markup=False, highlight=False, soft_wrap=True)
        _show_results(driver.root, console)
        raise typer.Exit(0)
    code = _run_shown(driver, [s.type for s in job.spec.stages], console, verbose)
    _show_results(driver.root, console)
    _shutdown_ray()
    raise typer.Exit(code)


def _finished_before(ledger) -> bool:
    """Whether the ledger this run continues has nothing left to do: every stage succeeded (or was skipped), the
    model is exported, and tracking (if any) has logged everything."""
    tracked = ledger.tracking is None or ledger.tracking.state == "Succeeded"
    return bool(ledger.done and ledger.model_uri and tracked)


def _load(file: Path):
    """The manifest's TransferJob; a file that cannot be read or is invalid exits 2, naming it."""
    from graft.api.validation import InvalidSpec, load_job

    try:
        return load_job(file.read_text())
    except OSError as exc:
        typer.echo(f"error: {file}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from exc
    except InvalidSpec as exc:
        for problem in exc.problems:
            typer.echo(f"{file}: {problem}", err=True)
        raise typer.Exit(2) from exc


def _prepared_driver(job, file: Path, storage: str, verbose: bool, restart: bool, from_stage: str | None,
                     force_takeover: bool, console):
    """The job's driver, holding its lease, with the ledger it continues decided: a refusal (lease held, spec
    changed, bad --from-stage) exits 2 and a storage or ledger failure 1, in one line."""
    from graft.lease import LeaseHeld
    from graft.ledger import DamagedLedger
    from graft.storage import StorageError
    from graft_trainer.errors import InputError
    from graft_trainer.jobroot import take_lease

    try:  # before torch is loaded: a refusal comes in seconds
        held = take_lease(job, storage, force_takeover)
    except (InputError, LeaseHeld, StorageError) as exc:
        typer.echo(f"error: {exc}".replace("--force-takeover", f"`graft run {file} --force-takeover`"), err=True)
        raise typer.Exit(1 if isinstance(exc, StorageError) else 2) from exc
    from graft_trainer.driver import Driver, SpecChanged

    try:
        driver = Driver(job, storage, log_to_driver=verbose, restart=restart, from_stage=from_stage, held=held)
    except InputError as exc:
        held.release()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console.print(f"run folder: {driver.root}")
    try:
        driver.prepare()
    except (SpecChanged, StorageError, DamagedLedger) as exc:
        driver.release_lease()
        if isinstance(exc, SpecChanged):
            line = f"{exc}".replace("  --from-stage", f"  graft run {file} --from-stage").replace(
                "  --restart", f"  graft run {file} --restart")
        else:
            line = exc.line(f"run graft run {file} --restart") if isinstance(exc, DamagedLedger) else f"{exc}"
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2 if isinstance(exc, SpecChanged) else 1) from exc
    return driver


def _run_shown(driver, stage_types: list[str], console, verbose: bool) -> int:
    """Run the job under the progress bars: 0, or 1 when it failed (said in one line). Ctrl-C or SIGTERM leaves it
    resumable and exits at once with the signal's code; a lost lease exits 1, showing nothing of the ledger."""
    from graft.lease import LeaseLost
    from graft.ledger import DamagedLedger
    from graft.storage import StorageError
    from graft_trainer import stopping
    from graft_trainer.driver import StageFailed
    from graft_trainer.errors import InputError

    native = None if verbose else _native_output_to(driver.root)
    stopping.install()
    try:
        with (_ProgressWatcher(driver.root, stage_types, console) if console.is_terminal
              else LinesWatcher(driver.root, console, _stage_metrics, _stage_time)):
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
        return 1
    return 0


def _show_results(root: str, console) -> None:
    """The run's summary table, curves, model, export choice, tracking and logs, from its ledger."""
    from graft import joblogs
    from graft.ledger import DamagedLedger, Ledger
    from graft_trainer.plot import write_plot

    try:
        ledger = Ledger.load(root)
    except DamagedLedger:
        return  # said already
    if ledger is None:
        return
    _summary(ledger, console)
    for line in ledger.leakage or []:
        console.print(f"warning: leakage: {line}", markup=False, highlight=False, soft_wrap=True)
    try:
        console.print(f"curves: {write_plot(ledger, root)}")
    except Exception as exc:  # the plot is a convenience; never fail a finished run for it
        console.print(f"[yellow]could not write the plot[/]: {exc}")
    if ledger.model_uri:
        console.print(f"model: {ledger.model_uri}   (try: graft predict {ledger.model_uri} IMAGE...)")
        if ledger.export and ledger.export.get("stage"):
            console.print(f"exported: {ledger.export['stage']}: {ledger.export['reason']}", markup=False)
        if ledger.export and ledger.export.get("warning"):
            console.print(f"warning: exported although {ledger.export['warning']} (spec.checks.learning.action: "
                          "Warn)", style="bold red", markup=False, soft_wrap=True)
    if ledger.tracking:
        console.print(ledger.tracking.describe(), highlight=False, markup=False)
    if line := joblogs.pointer(root):
        console.print(line, highlight=False, markup=False)


def _native_output_to(root: str) -> Path:
    """Send what is written straight to file descriptor 2 (Ray's C++ parts: the driver's core worker logs at
    ERROR level things that are no error for Graft, e.g. "constructor arguments in the object store and
    max_restarts > 0" for every Ray Data actor pool) to `ray.log` in the run folder, so it cannot land in the
    middle of the progress bars. Python's own stderr (Graft's messages, real errors) stays on the terminal."""
    import os
    import tempfile

    from graft import storage

    folder = Path(root) if not storage.is_remote(root) else Path(tempfile.mkdtemp(prefix="graft-run-"))
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


def check_data(job) -> list[str]:
    """The input checks a run makes before its first stage (listing, class counts against numClasses, decoding or
    a sample of it, weights), for `graft validate --check-data`: one line per stage whose inputs fail; when none
    does, a `warning: ` line per leakage between splits (graft_trainer/leakage.py, whatever the data's size).
    graft/cli.py finds this function by name on the plugin module, as the core cannot import the trainer (torch).
    Reads the data and weights; trains nothing, writes nothing, starts no Ray."""
    from graft_trainer.driver import Driver
    from graft_trainer.errors import InputError
    from graft_trainer.executors import LocalExecutor

    try:
        driver = Driver(job, DEFAULT_RUNS, executor=LocalExecutor())
    except InputError as exc:
        return [str(exc)]
    problems = [f"stage {stage}: {message}" for stage, message in driver.input_problems()]
    if problems:
        return problems
    from graft_trainer import leakage

    return [f"warning: leakage: {line}" for line in leakage.job_findings(driver.context, job.spec) or []]


def register(app: typer.Typer) -> None:
    """Add the trainer's commands to the `graft` CLI."""
    app.command(name="run")(run)
    app.command(name="predict")(model_cli.predict)
    app.command(name="evaluate")(model_cli.evaluate)
    from graft_trainer.serving_cli import export_command, serve  # typer and graft.storage only: no torch

    app.command(name="export")(export_command)
    app.command(name="serve")(serve)
