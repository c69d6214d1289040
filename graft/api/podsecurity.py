"""Pod security exceptions: what `spec.pod` may ask for only where the cluster's operator allows it.

By default a TransferJob's pods stay restricted (Pod Security Standards' "restricted" profile: non-root, no privilege
escalation, every capability dropped, no host namespaces or hostPath). A cluster that needs more (a dataset on the
nodes' disks, a debugger) allows the exceptions by name: `graft operator --allow hostPath` (the chart's
`podSecurity.allow`), and `graft validate --allow hostPath` checks a spec against that policy.

Not CEL rules in the CRD: the API server cannot know which exceptions this cluster's operator allows, so the operator
(and `graft validate`) refuse them, as Failed/InvalidSpec with the field path.
"""

from __future__ import annotations

from collections.abc import Iterable

from graft.api.models import TransferJobSpec

#: Each exception by name (the names of Kubernetes' own fields where one field is meant), with what it gives the pods.
EXCEPTIONS = {
    "privileged": "a privileged container has every device and capability of the node (root on the node)",
    "allowPrivilegeEscalation": "lets processes gain more privileges than their parent (setuid binaries)",
    "capabilities": "added capabilities widen what the container may do to the node (all are dropped by default)",
    "hostNetwork": "the node's network namespace: the pods see and bind the node's interfaces",
    "hostPID": "the node's process namespace: the pods see (and may signal) every process on the node",
    "hostIPC": "the node's IPC namespace: the pods share memory with every process on the node",
    "hostPath": "a hostPath volume reads and writes the node's own filesystem",
    "runAsRoot": "root in the container (runAsUser 0 / runAsNonRoot false)",
}


def parse_allow(values: Iterable[str]) -> frozenset[str]:
    """The exception names of `--allow` options (each comma-separated); ValueError naming an unknown one."""
    names = {n.strip() for v in values for n in v.split(",") if n.strip()}
    unknown = sorted(names - set(EXCEPTIONS))
    if unknown:
        raise ValueError(f"unknown pod security exception {unknown[0]!r}; allowed: {', '.join(EXCEPTIONS)}")
    return frozenset(names)


def requested(spec: TransferJobSpec) -> list[tuple[str, str]]:
    """(exception, field path) for every exception the spec asks for, in field order."""
    pod, found = spec.pod, []
    csc, sc = pod.container_security_context, pod.security_context
    if csc.privileged:
        found.append(("privileged", "spec.pod.containerSecurityContext.privileged"))
    if csc.allow_privilege_escalation:
        found.append(("allowPrivilegeEscalation", "spec.pod.containerSecurityContext.allowPrivilegeEscalation"))
    if csc.capabilities.add:
        found.append(("capabilities", "spec.pod.containerSecurityContext.capabilities.add"))
    for name, on in (("hostNetwork", pod.host_network), ("hostPID", pod.host_pid), ("hostIPC", pod.host_ipc)):
        if on:
            found.append((name, f"spec.pod.{name}"))
    found += [("hostPath", f"spec.pod.volumes[{i}].hostPath") for i, v in enumerate(pod.volumes) if "hostPath" in v]
    if sc.run_as_user == 0:
        found.append(("runAsRoot", "spec.pod.securityContext.runAsUser"))
    if sc.run_as_non_root is False:
        found.append(("runAsRoot", "spec.pod.securityContext.runAsNonRoot"))
    return found


def refusals(spec: TransferJobSpec, allow: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(field path, why) for every exception the spec asks for that `allow` does not name."""
    allowed = set(allow)
    return [(path, f"{EXCEPTIONS[name]}; refused unless the operator allows {name!r} (the chart's podSecurity.allow; "
                   f"`graft validate --allow {name}` checks against it)")
            for name, path in requested(spec) if name not in allowed]
