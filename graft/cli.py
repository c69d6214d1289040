"""The `graft` command line.

The foundation commands live here; the trainer (`graft_trainer.cli`) and the operator
(`graft_operator.cli`) register theirs through a `register(app)` function, importing their heavy
dependencies (torch, Ray, kopf) only when one of their commands runs. A plugin module may also offer hooks
that a foundation command calls by name (`_plugin_hook`): `validate --check-data` runs the trainer's
`check_data`, so this module never imports the trainer itself.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from graft import __version__, statusview, uncertainty
from graft.cliopts import AllowOption

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
    cluster: Annotated[
        bool,
        typer.Option("--cluster", help="Also apply the rules of a cluster, as the operator and `graft render` do: "
                     "spec.storage required; local data, weights and storage paths warned about "
                     "(`FILE: warning: field.path: reason`, exit 0 when warnings are all)."),
    ] = False,
    allow: AllowOption = None,
    check_data: Annotated[
        bool,
        typer.Option("--check-data", help="Also run the input checks `graft run` makes before its first stage, "
                     "without training: data listed, class counts against numClasses, images decoded (a sample of "
                     "a set too large for a worker's memory), weights loaded (`FILE: check-data: stage S: reason`). "
                     "Reads the data and weights (S3 too); needs the trainer; starts no Ray."),
    ] = False,
) -> None:
    """Check TransferJob manifests. Prints `FILE: field.path: reason` per problem; exit 1 if any."""
    from graft.api.validation import validate_stream, validate_stream_for_cluster

    data_check = _plugin_hook("check_data") if check_data else None
    if check_data and data_check is None:
        typer.echo("error: --check-data needs the trainer (graft_trainer), which is not installed", err=True)
        raise typer.Exit(2)
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
        if cluster:
            documents, problems, warnings = validate_stream_for_cluster(text, allow or ())
        else:
            (documents, problems), warnings = validate_stream(text, allow or ()), []
        findings = [(i, str(p)) for i, p in problems] + [(i, f"warning: {w}") for i, w in warnings]
        failed = bool(problems)
        if data_check is not None and not failed:
            data_problems = _check_data(data_check, text)
            findings += data_problems
            failed = any(not line.startswith("check-data: warning: ") for _, line in data_problems)
        for index, line in sorted(findings, key=lambda f: f[0]):
            # Documents are numbered from 0 (as `yq` and kubectl's error messages do) when a file has several.
            where = f"{name}[{index}]" if documents > 1 else name
            typer.echo(f"{where}: {line}")
        bad += failed
    if bad:
        typer.echo(f"{bad} of {len(files)} file(s) invalid", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(files)} file(s) valid" + (" for a cluster" if cluster else "")
               + (", inputs checked" if check_data else ""), err=True)


def _check_data(check: Callable[[Any], list[str]], text: str) -> list[tuple[int, str]]:
    """(document index, `check-data: ...` line) for every input problem of the (valid) TransferJobs in `text`."""
    from graft.api.validation import parse_stream, validate_document

    found = []
    for index, doc in enumerate(parse_stream(text)[0]):
        job, _ = validate_document(doc)
        try:
            lines = check(job)
        except ModuleNotFoundError as exc:  # the trainer is there, its dependencies (torch) are not
            typer.echo(f"error: --check-data needs the trainer's dependencies: {exc}", err=True)
            raise typer.Exit(2) from exc
        found += [(index, f"check-data: {line}") for line in lines]
    return found


def _plugin_hook(name: str) -> Callable[..., Any] | None:
    """A function a plugin module offers besides its commands, or None when no installed plugin has one.

    The core never imports the trainer (it needs torch) but `validate --check-data` must run the trainer's
    input checks: the trainer's plugin module (`graft_trainer.cli`, already imported by `_register_plugins`)
    offers them as `check_data(job) -> [problem lines]`, found here by name."""
    for module in PLUGINS:
        hook = getattr(sys.modules.get(module), name, None)
        if hook is not None:
            return hook
    return None


@app.command()
def crd() -> None:
    """Print the TransferJob CustomResourceDefinition (apply it with `graft crd | kubectl apply -f -`)."""
    from graft.api.crd import crd_yaml

    typer.echo(crd_yaml(), nl=False)


@app.command()
def status(
    run: Annotated[str, typer.Argument(
        help="A run folder, or a job's storage URI `<storage.uri>/<uid>`; a folder of runs lists them.")],
    output: Annotated[str, typer.Option("--output", "-o", help="table or json")] = "table",
) -> None:
    """Print a job's ledger: stage states, epochs, metrics, checkpoints. On a folder of runs (graft-runs/), list
    them: name, state, stages done, best validation accuracy, age."""
    from graft.ledger import DamagedLedger, Ledger
    from graft.storage import StorageError

    if output not in ("table", "json"):
        raise typer.BadParameter("must be 'table' or 'json'", param_hint="--output")
    try:
        ledger = Ledger.load(run)
    except StorageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except DamagedLedger as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if ledger is not None and ledger.recovered:
        typer.echo(f"warning: {ledger.recovered}", err=True)
    if ledger is None:
        runs = statusview.runs_below(run)
        if runs:
            statusview.print_runs(runs, output)
            return
        typer.echo(f"error: {run}: no ledger.json here or one folder below (not a Graft run folder, a folder "
                   "of runs, or a job URI)", err=True)
        raise typer.Exit(1)
    if output == "json":
        typer.echo(json.dumps(uncertainty.annotate(ledger.model_dump(mode="json"), ledger), indent=2))
        return
    statusview.print_ledger(ledger, run)


def _log_chunks(root: str, options: Any, ledger: Any, stage: str | None, worker: int | None, follow: bool):
    """`graft logs`' (file, text) pairs: every log file once, or with `follow` each new piece until the job has
    finished or failed. No file to print: one line saying what was looked for, exit 1."""
    from graft import joblogs
    from graft.ledger import DamagedLedger, Ledger

    order = [s.type for s in ledger.stages] if ledger else None

    def files() -> list:
        return joblogs.find(root, stage=stage, worker=worker, order=order, options=options)

    if follow:
        def finished() -> bool:
            try:
                now = Ledger.load(root, options)
            except DamagedLedger:
                return False  # a writer may be about to recover it; `graft status` says what is wrong
            return now is not None and (now.done or now.failed is not None)

        return joblogs.follow(files, finished, options=options)
    found = files()
    if not found:
        what = " ".join(x for x in (f"stage {stage}" if stage else "", f"worker {worker}"
                                    if worker is not None else "") if x)
        typer.echo(f"error: no logs{' of ' + what if what else ''} in {joblogs.logs_uri(root)}"
                   + ("" if ledger else " (and no ledger.json: is this a job's storage URI?)"), err=True)
        raise typer.Exit(1)
    return ((f, joblogs.read(f, options)) for f in found)


@app.command()
def logs(
    target: Annotated[str, typer.Argument(
        metavar="RUN_OR_URI", help="A run folder, a job's storage URI `<storage.uri>/<uid>` (or its logs/ folder); "
        "with -n, the TransferJob's name.")],
    namespace: Annotated[str | None, typer.Option(
        "--namespace", "-n", help="Find the job's storage through the TransferJob RUN_OR_URI in this namespace "
        "(kubeconfig as kubectl's); S3 keys from the environment, else from the job's credentials Secret.")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage's logs.")] = None,
    worker: Annotated[int | None, typer.Option("--worker", help="Only this Ray Train worker's logs (its rank).")
                      ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the logs grow, until the job "
                                         "has finished or failed.")] = False,
) -> None:
    """Print a job's logs from its storage: each stage's driver and Ray Train workers, kept after the Ray cluster
    is gone. Several files are printed one after the other, each line prefixed with `STAGE/PROCESS | `."""
    from graft import joblogs
    from graft.ledger import DamagedLedger, Ledger
    from graft.storage import StorageError

    options = None
    try:
        if namespace is not None:
            from graft.kubelookup import job_storage

            root, options = job_storage(namespace, target)
        else:
            root = joblogs.job_root_of(target)
        try:
            ledger = Ledger.load(root, options)
        except DamagedLedger as exc:  # the logs are still there to read; the ledger only orders them
            typer.echo(f"warning: {exc}", err=True)
            ledger = None
        chunks = _log_chunks(root, options, ledger, stage, worker, follow)
        prefixed = not (stage and worker is not None)
        for f, text in chunks:
            if prefixed:
                text = "".join(f"{f.label} | {line}" for line in text.splitlines(keepends=True))
            typer.echo(text, nl=not text.endswith("\n"))
    except (StorageError, LookupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


#: The Head sweep table's columns: (row key, heading, format).
#: Modules that add commands (`register(app)`) and may offer hooks (`_plugin_hook`), when installed.
PLUGINS = ("graft_trainer.cli", "graft_operator.cli")


def _register_plugins() -> None:
    for module in PLUGINS:
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
