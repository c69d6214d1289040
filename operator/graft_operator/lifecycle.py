"""A TransferJob's start and its spec changes: the steps the kopf handlers in `handlers.py` hand over to.

Start: validate, then create (or adopt) the RayJob (a deterministic name), then write the status.
A spec change after the start: run-policy fields go to the RayJob, anything else is refused with a Warning Event.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from graft.api.models import TransferJobSpec
from graft.api.podsecurity import EXCEPTIONS
from graft.api.validation import cluster_warnings, validate_for_cluster
from graft.ledger import now
from graft_operator import builder, children, follow, status
from graft_operator.conditions import Reason
from graft_operator.memory import Memory, Standing, event, ref

Logger = logging.Logger | logging.LoggerAdapter


def _problems_text(problems: list[Any]) -> str:
    return "; ".join(str(p) for p in problems)


def allowed(mem: Memory, standing: Standing) -> frozenset[str] | dict[str, str]:
    """The pod security exceptions a job's spec is checked against: the operator's, until its RayJob exists. A
    RayJob made under them runs on (and is followed) after a restart with fewer: refusing it then would only stop
    its status."""
    return EXCEPTIONS if standing.started else mem.pod_security_allow


async def start(mem: Memory, body: Any, logger: Logger) -> None:
    """Run on create, on resume (operator restart) and when a not-yet-started job's spec changes."""
    standing = Standing.of(mem.known_status(body))
    spec, problems = validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})), allowed(mem, standing))
    if spec is None:
        await _refuse(mem, body, standing, _problems_text(problems), logger)
    elif standing is not Standing.FINISHED:  # a finished job (resumed after a restart): nothing to create again
        await _create(mem, body, spec, standing, logger)


async def _refuse(mem: Memory, body: Any, standing: Standing, message: str, logger: Logger) -> None:
    """An invalid spec: Failed/InvalidSpec, unless a RayJob was made from an earlier one (that one runs on)."""
    if standing.started:
        # The spec changed after the RayJob was made from it; that one runs on (see spec_changed).
        logger.warning(f"spec is no longer valid; the running job keeps its original spec: {message}")
        return
    await mem.write_status(body, status.invalid_status(message=message, generation=body["metadata"].get(
        "generation"), current=mem.known_status(body), now=now()))
    # Handled, not raised: the status and its Warning event are the verdict. A PermanentError would log the
    # user's mistake as an operator ERROR ("failed permanently"); the next spec change runs this again.
    logger.info(f"invalid spec: {message}")


async def _create(mem: Memory, body: Any, spec: TransferJobSpec, standing: Standing, logger: Logger) -> None:
    """Create (or adopt) the RayJob, then hand the job to the mirror loop, which writes the status that names it."""
    uid, _, name = ref(body)
    # The RayJob's name is not recorded in status before it is created (KubeRay's habit, for generated names): it is
    # a function of the job's name and uid, so a retry after a crash at any point finds the same name and adopts
    # what it finds (409), and the first status write, after the create, names it. One API request less per job.
    rj_name = mem.known_status(body).get("rayJobName") if standing.started else builder.rayjob_name(name, uid)
    if not standing.started:
        warnings = cluster_warnings(spec)
        if warnings:  # one Event for them all: each is an API request, and they say the same kind of thing
            event(body, "Warning", Reason.STORAGE_NOT_SHARED, "; ".join(map(str, warnings)))
    rayjob, created = await children.create_rayjob(mem, body, spec)
    if created:
        event(body, "Normal", Reason.RAYJOB_CREATED, f"created RayJob {rj_name}")
        logger.info(f"created RayJob {rj_name}")
    else:
        logger.info(f"adopted existing RayJob {rj_name}")
    assert mem.supervisor is not None
    if created and not standing.started:
        # The first status write waits (briefly) for KubeRay's first status of the RayJob: see follow_new.
        mem.supervisor.follow_new(copy.deepcopy(dict(body)), rayjob)
        return
    await follow.sync(mem, body, spec, mem.supervisor.follower(uid), rayjob=rayjob)
    mem.supervisor.observe(copy.deepcopy(dict(body)))


async def spec_changed(mem: Memory, body: Any, diff: Any, logger: Logger) -> None:
    """Apply run-policy changes to the RayJob; refuse changes to anything else once the job has started."""
    uid, namespace, _ = ref(body)
    current = mem.known_status(body)
    standing = Standing.of(current)
    if not standing.started:
        await start(mem, body, logger)
        return
    paths = [tuple(d[1]) for d in diff]
    immutable = sorted({".".join(("spec", *p)) if p else "spec" for p in paths if not p or p[0] != "runPolicy"})
    spec, problems = validate_for_cluster(copy.deepcopy(dict(body.get("spec") or {})), allowed(mem, standing))
    override = None
    if immutable:
        message = (
            f"{', '.join(immutable)} cannot change after the job started; the change is ignored and the job runs "
            "on as it started. To run the new spec, create a new TransferJob (or delete and re-create this one)."
        )
        event(body, "Warning", Reason.IMMUTABLE_FIELD_CHANGED, message)
        logger.info(message)  # info: kopf posts warnings as Events, and this one has its own
        override = (Reason.IMMUTABLE_FIELD_CHANGED, message)
    if spec is None:
        logger.warning(f"spec change not applied, it is invalid: {_problems_text(problems)}")
        return
    patched = None
    if any(p and p[0] == "runPolicy" for p in paths) and standing is not Standing.FINISHED:
        rj_name, change = current["rayJobName"], builder.runpolicy_patch(spec)
        patched = await mem.api.merge_patch("RayJob", rj_name, namespace, change)
        if patched is not None:
            logger.info(f"run policy applied to RayJob {rj_name}: {change['spec']}")
    assert mem.supervisor is not None
    await follow.sync(mem, body, spec, mem.supervisor.follower(uid), override=override, rayjob=patched)
    mem.supervisor.kick(uid)
