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


#: `--allow`, as `graft validate`, `graft render` and `graft operator` take it.
AllowOption = Annotated[
    list[str] | None,
    typer.Option("--allow", callback=_pod_security_allow, metavar="EXCEPTION[,EXCEPTION]",
                 help="Pod security exceptions spec.pod may ask for, as the cluster's operator allows them (the "
                      "chart's podSecurity.allow): privileged, allowPrivilegeEscalation, capabilities, hostNetwork, "
                      "hostPID, hostIPC, hostPath, runAsRoot. Default: none (refused with the field path)."),
]
