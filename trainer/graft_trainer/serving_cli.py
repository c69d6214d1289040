"""`graft serve` and `graft export`: serve a job's ONNX model locally, or write the serving files (ONNX, Triton
repository, InferenceService) for a model folder that has none."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft import storage


def resolve_model(target: str) -> str:
    """The model folder a MODEL_OR_RUN argument names: a model folder itself (it holds model.json), or a run
    folder (`<storage>/<uid>`, its ledger's model). FileNotFoundError says which it is not."""
    from graft.ledger import Ledger

    if storage.exists(storage.join(target, "model.json")):
        return target
    ledger = Ledger.load(target)
    if ledger is None:
        raise FileNotFoundError(f"{target}: neither a model folder (model.json) nor a run folder (ledger.json)")
    if not ledger.model_uri:
        raise FileNotFoundError(f"{target}: this run has no exported model yet (see: graft status)")
    return ledger.model_uri


def serve(
    model: Annotated[str, typer.Argument(metavar="MODEL_OR_RUN", help="Exported model folder or URI "
                                         "(`<storage>/<uid>/model`), or the run folder (`<storage>/<uid>`).")],
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; 0.0.0.0 for other machines.")]
    = "127.0.0.1",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="onnxruntime threads (default: all "
                                                "cores).")] = None,
) -> None:
    """Serve the model's ONNX graph locally with the Open Inference Protocol (KServe v2 REST).

    On onnxruntime: GET
    /v2/health/ready, GET /v2/models/NAME, POST /v2/models/NAME/infer. A client written against it works unchanged
    against the InferenceService the job wrote (KServe's Triton runtime). Send uint8 RGB pixels [N, 3, S, S],
    resized as model.json's preprocessing says; the graph normalises them itself."""
    import uvicorn

    from graft.storage import StorageError
    from graft_trainer.errors import InputError
    from graft_trainer.serve_app import load_served, make_app
    from graft_trainer.serving import NoOnnx

    try:
        served = load_served(resolve_model(model), threads)
    except (NoOnnx, FileNotFoundError, InputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    import socket

    # The socket is bound here, before the line is printed: the line names the real port (--port 0: any free one)
    # and a client that reads it finds the server listening.
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc
    bound = sock.getsockname()[1]
    typer.echo(f"serving {served.name} on http://{host}:{bound}/v2/models/{served.name}/infer "
               f"(input {served.input.name} {served.input.datatype} {served.input.shape}, "
               f"at most {served.max_batch} a request)")
    config = uvicorn.Config(make_app(served), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


def export_command(
    model: Annotated[str, typer.Argument(metavar="MODEL_OR_RUN", help="Exported model folder or URI, or the run "
                                         "folder.")],
    job: Annotated[Path | None, typer.Option("--job", help="The TransferJob manifest: the InferenceService gets "
                                             "its namespace and storage credentials Secret.")] = None,
) -> None:
    """Write the ONNX model, Triton model repository and KServe InferenceService for a model folder.

    Jobs write them themselves since serving support; this makes them for an older folder, or again."""
    from graft.api.validation import InvalidSpec, load_job
    from graft.storage import StorageError
    from graft_trainer.errors import InputError
    from graft_trainer.serving import export_serving

    try:
        loaded = load_job(job.read_text(encoding="utf-8")) if job else None
        uri = resolve_model(model)
        served = export_serving(uri, loaded)
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    except InvalidSpec as exc:
        for problem in exc.problems:
            typer.echo(f"{job}: {problem}", err=True)
        raise typer.Exit(2) from exc
    except (InputError, StorageError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"ONNX model and Triton repository: {served['storageUri']}")
    typer.echo(f"InferenceService: {served['inferenceServiceUri']}   (kubectl apply -f it)")
    for note in served["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"try it here: graft serve {uri}")
