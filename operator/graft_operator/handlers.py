"""The kopf handlers of the Graft operator (`kopf run -m graft_operator.handlers` or `graft operator`).

Short by design: each one hands over to `lifecycle.py` (start, spec changes) or the mirror loop (`supervisor.py`,
one loop for all started jobs rather than a daemon per job: see its docstring for why). What the operator
remembers lives in kopf's `memo` (`memo.graft`, a `memory.Memory`) and in kopf's indexes below.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from graft.api.models import GROUP, PLURAL, VERSION
from graft_operator import builder, client, ledgers, lifecycle, metrics
from graft_operator.memory import Memory
from graft_operator.relists import Relists
from graft_operator.status import rayjob_view
from graft_operator.supervisor import Supervisor

_HANDLER_BACKOFF = 5  # seconds between retries of a failed handler (kopf's default is 60)
OURS = {builder.LABEL_TRANSFERJOB: kopf.PRESENT}


class _QuietWatchHandlers(logging.Filter):
    """Drop kopf's "Handler 'x' succeeded." line for the watch-event handlers: one per event is noise."""

    _NOISE = ("Handler 'rayjob_event' succeeded.", "Handler 'transferjob_event' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self._NOISE


logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())


# The index functions are coroutines: kopf runs a plain function in its thread pool, a hop (executor submit, context
# copy, wake-up) per watch event that cost about a tenth of the operator's CPU in a burst (py-spy, issue 16).
@kopf.index("ray.io", "v1", "rayjobs", labels=OURS)
async def rayjobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Our RayJobs as the watch last saw them, by (namespace, name): what the operator reads of them."""
    return {(namespace, name): rayjob_view(body)}


@kopf.index(GROUP, VERSION, PLURAL)
async def jobs_by_phase(status: kopf.Status, uid: str, **_: Any) -> dict[str | None, str]:
    """TransferJobs (their uids) by phase, for the graft_transferjobs gauge."""
    return {status.get("phase"): uid}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, rayjobs: kopf.Index,
                    jobs_by_phase: kopf.Index, **_: Any) -> None:
    """Operator settings: progress kept in graft.dev annotations, quiet Events, the metrics endpoint; and the
    operator's memory in `memo.graft`, with `graft operator`'s options from `memo` (defaults under `kopf run`)."""
    settings.persistence.finalizer = "graft.dev/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="graft.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="graft.dev", key="last-handled-configuration"
    )
    # Events come from explicit transitions only; kopf's per-handler "succeeded" messages would flood them.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 4]
    mem = Memory(client.Kube(), memo.get("ledger_timeout", ledgers.DEFAULT_TIMEOUT), rayjobs=rayjobs,
                 pod_security_allow=frozenset(memo.get("pod_security_allow", ())),
                 trainer_image=memo.get("trainer_image"))
    # The mirror loop and the relist sweep are kopf's `memo` too: the handlers below are what drive them, while the
    # steps they call get only the loop's small `memory.Mirror` face.
    mem.supervisor = memo.supervisor = Supervisor(mem)
    memo.relists = Relists(mem)
    memo.graft = mem
    metrics.count_phases(jobs_by_phase, mem.gone)
    # Under `kopf run` no metrics endpoint: its command line has no way to choose the port.
    if port := memo.get("metrics_port", 0):
        metrics.serve(port)
        logger.info(f"metrics at http://0.0.0.0:{port}/metrics")


@kopf.on.cleanup()
async def stop_following(memo: kopf.Memo, **_: Any) -> None:
    """Stop the mirror loop and the ledger reads, close the API client."""
    mem: Memory = memo.graft
    await memo.supervisor.stop()
    await memo.relists.stop()
    await mem.reads.close()
    await mem.api.close()


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_HANDLER_BACKOFF)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_HANDLER_BACKOFF)
async def start(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Validate the job, create (or adopt) its RayJob, write the status that names it."""
    with metrics.measured("create"):
        try:
            await lifecycle.start(memo.graft, body, logger)
        finally:
            memo.supervisor.created(body["metadata"]["uid"])


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_HANDLER_BACKOFF)
async def spec_changed(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Suspend/resume, deadline and retry changes go to the RayJob; other changes after the start are refused."""
    with metrics.measured("update"):
        await lifecycle.spec_changed(memo.graft, body, diff, logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def transferjob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Feed every job's latest body to the mirror loop."""
    obj = event["object"]
    again = memo.relists.event(event.get("type"), obj)
    if event.get("type") == "DELETED":
        memo.graft.forget(obj["metadata"]["uid"])
        return
    if again:  # listed again after a lost watch: kopf's index of RayJobs may keep one deleted meanwhile
        memo.supervisor.relisted(obj["metadata"]["uid"])
    memo.supervisor.observe(obj)


@kopf.on.event("ray.io", "v1", "rayjobs", labels=OURS)
async def rayjob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A RayJob of ours changed: wake its TransferJob's mirror loop (kopf's index above already has it)."""
    refs = event["object"].get("metadata", {}).get("ownerReferences") or []
    owner = next((r.get("uid") for r in refs if r.get("kind") == "TransferJob"), None)
    if owner:
        memo.supervisor.kick(owner)
