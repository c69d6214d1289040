"""`graft operator`, `graft render` and `graft rbac`: the control plane's commands.

kopf and the handlers are imported only when `graft operator` runs; `render` and `rbac` are pure.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from graft.cliopts import AllowOption, TrainerImageOption

#: What `graft render` uses when the manifest has no metadata.uid (the API server assigns one on create).
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def run_operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Serve this namespace (repeatable). Default: all namespaces."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Serve every namespace (needs the cluster-wide RBAC).")
    ] = False,
    metrics_port: Annotated[int, typer.Option(help="Prometheus /metrics port; 0 turns it off.")] = 8080,
    liveness_port: Annotated[int, typer.Option(help="Liveness probe port (/healthz).")] = 8081,
    ledger_timeout: Annotated[
        float,
        typer.Option(min=0.5, help="Seconds a ledger read may take; past that the job's status says the ledger "
                     "could not be read (its conditions never wait for storage)."),
    ] = 5.0,  # ledgers.DEFAULT_TIMEOUT (not imported here: it would load kopf for every graft command)
    allow: AllowOption = None,
    trainer_image: TrainerImageOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Run the operator: watch TransferJobs, run each as a KubeRay RayJob, mirror progress into its status.

    Connects with KUBECONFIG (or ~/.kube/config, or the in-cluster service account). Logs are JSON lines."""
    if namespace and all_namespaces:
        raise typer.BadParameter("give --namespace or --all-namespaces, not both", param_hint="--namespace")
    _check_cluster_config()
    import kopf

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.JSON, log_refkey="object")
    import graft_operator.handlers  # noqa: F401 (registers the handlers)

    settings = kopf.OperatorSettings()
    # Serving named namespaces under a namespaced Role: no cluster-wide CRD/namespace watches (the Role cannot
    # grant them); kopf discovers the resources once at startup instead. Set before kopf starts: its
    # observers read it before any startup handler runs.
    settings.scanning.disabled = bool(namespace)
    kopf.run(
        settings=settings,
        # read by the startup handler
        memo=kopf.Memo(ledger_timeout=ledger_timeout, metrics_port=metrics_port, pod_security_allow=allow or [],
                       trainer_image=trainer_image),
        standalone=True,
        clusterwide=not namespace,
        namespaces=list(namespace or []),
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz",
    )


def _check_cluster_config() -> None:
    """One line and exit 1 when there is no cluster to connect to: no in-cluster service account and no kubeconfig
    (kopf would log a traceback and retry every minute, forever)."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        KubeConfig.from_env()
    except ConfigError as exc:
        typer.echo(f"error: no Kubernetes cluster to connect to ({exc}); set KUBECONFIG, or run the operator in a pod "
                   "with a service account", err=True)
        raise typer.Exit(1) from None


def _load(file: Path) -> dict[str, Any]:
    from graft.api.validation import InvalidSpec, load_job

    name = str(file)
    try:
        text = sys.stdin.read() if name == "-" else file.read_text()
        job = load_job(text)
    except OSError as exc:
        typer.echo(f"{name}: (file): cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from exc
    except (InvalidSpec, yaml.YAMLError) as exc:
        problems = getattr(exc, "problems", None) or [exc]
        for p in problems:
            typer.echo(f"{name}: {p}", err=True)
        raise typer.Exit(1) from exc
    # What was written, not the defaults filled in: the operator gets the body as applied (a job with no spec.image
    # takes the operator's --trainer-image).
    return job.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)


def render(
    file: Annotated[Path, typer.Argument(help="A TransferJob manifest (YAML or JSON); - for stdin.")],
    uid: Annotated[
        str | None, typer.Option(help="The job's uid (default: metadata.uid, else a placeholder).")
    ] = None,
    allow: AllowOption = None,
    trainer_image: TrainerImageOption = None,
) -> None:
    """Print the RayJob the operator would create for a TransferJob (same builder, no cluster)."""
    from graft.api.validation import cluster_warnings, validate_for_cluster
    from graft_operator.builder import build_owned_rayjob, with_default_image

    doc = _load(file)
    meta = doc["metadata"]
    meta["uid"] = uid or meta.get("uid") or PLACEHOLDER_UID
    if meta["uid"] == PLACEHOLDER_UID:
        typer.echo(f"note: no metadata.uid; using {PLACEHOLDER_UID} (names carry a hash of the uid)", err=True)
    meta.setdefault("namespace", "default")
    spec, problems = validate_for_cluster(doc["spec"], allow or ())
    if spec is None:
        for p in problems:
            typer.echo(f"{file}: {p}", err=True)
        raise typer.Exit(1)
    for w in cluster_warnings(spec):
        typer.echo(f"{file}: warning: {w}", err=True)
    rayjob = build_owned_rayjob(doc, with_default_image(spec, trainer_image))
    typer.echo(yaml.safe_dump(rayjob, sort_keys=False, width=120), nl=False)


def rbac(
    namespaced: Annotated[
        bool, typer.Option("--namespaced", help="Only the rules a namespaced Role can grant.")
    ] = False,
) -> None:
    """Print the operator's RBAC policy rules as YAML (the chart's ClusterRole/Role is generated from them)."""
    from graft_operator.rbac import rules

    typer.echo(yaml.safe_dump(rules(namespaced=namespaced), sort_keys=False), nl=False)


def register(app: typer.Typer) -> None:
    """Add the operator's commands to the `graft` CLI."""
    app.command("operator")(run_operator)
    app.command()(render)
    app.command()(rbac)
