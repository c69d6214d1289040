"""Command-line options that `graft`'s own commands and the operator's (`graft_operator.cli`) share.

Its own module: the operator's commands are registered while `graft.cli` is still being imported."""

from __future__ import annotations

from typing import Annotated

import typer


def _pod_security_allow(values: list[str] | None) -> list[str]:
    """`--allow` names (repeatable, comma-separated), checked against the known exceptions."""
    from graft.api.podsecurity import parse_allow

    try:
        return sorted(parse_allow(values or []))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _trainer_image(value: str | None) -> str | None:
    """`--trainer-image`, checked as spec.image is (graft/api/models.py `_IMAGE`)."""
    from graft.api.models import image_problem

    if value is not None and (problem := image_problem(value)):
        raise typer.BadParameter(problem)
    return value


#: `--trainer-image`, as `graft render` and `graft operator` take it (the chart's `trainerImage`).
TrainerImageOption = Annotated[
    str | None,
    typer.Option("--trainer-image", callback=_trainer_image, metavar="IMAGE",
                 help="The Ray pods' image for TransferJobs that set no spec.image (e.g. a registry mirror). "
                      "Default: the image this Graft version was released with."),
]


#: `--allow`, as `graft validate`, `graft render` and `graft operator` take it.
AllowOption = Annotated[
    list[str] | None,
    typer.Option("--allow", callback=_pod_security_allow, metavar="EXCEPTION[,EXCEPTION]",
                 help="Pod security exceptions spec.pod may ask for, as the cluster's operator allows them (the "
                      "chart's podSecurity.allow): privileged, allowPrivilegeEscalation, capabilities, hostNetwork, "
                      "hostPID, hostIPC, hostPath, runAsRoot. Default: none (refused with the field path)."),
]
