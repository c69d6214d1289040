"""The kopf handlers of the Graft operator (`kopf run -m graft.operator.handlers` or `graft operator`).

Short by design: each one hands over to `reconcile.py`, where the steps live. Started jobs are followed by
one mirror loop (`reconcile.Supervisor`) rather than a daemon per job: see its docstring for why.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from graft.operator import builder, client, ledgers, metrics, reconcile

from graft.api.models import GROUP, PLURAL, VERSION

_HANDLER_BACKOFF = 5  # seconds between retries of a failed handler (kopf's default is 60)


class _QuietWatchHandlers(logging.Filter):
    """Drop kopf's "Handler 'x' succeeded." line for the watch-event handlers: one per event is noise."""

    _NOISE = ("Handler 'rayjob_event' succeeded.", "Handler 'transferjob_event' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self._NOISE


logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Operator settings: progress kept in graft.dev annotations, quiet Events, metrics endpoint, and the ledger
    read deadline (`graft operator --ledger-timeout`, passed in `memo`; the default under `kopf run`)."""
    client.configure(settings)
    reconcile.SUPERVISOR.configure(ledger_timeout=float(memo.get("ledger_timeout", ledgers.DEFAULT_TIMEOUT)))
    settings.persistence.finalizer = "graft.dev/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="graft.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="graft.dev", key="last-handled-configuration"
    )
    # Events come from explicit transitions only; kopf's per-handler "succeeded" messages would flood them.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 4]
    port = int(os.environ.get("GRAFT_METRICS_PORT", "8080"))
    if port:
        metrics.serve(port)
        logger.info(f"metrics at http://0.0.0.0:{port}/metrics")


@kopf.on.cleanup()
async def stop_following(**_: Any) -> None:
    """Stop the mirror loop when the operator exits."""
    await reconcile.SUPERVISOR.stop()


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_HANDLER_BACKOFF)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_HANDLER_BACKOFF)
async def start(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Validate the job, record its RayJob's name, create (or adopt) the ConfigMap and the RayJob."""
    with metrics.measured("create"):
        await reconcile.start(body, logger)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_HANDLER_BACKOFF)
async def spec_changed(body: kopf.Body, diff: kopf.Diff, logger: logging.Logger, **_: Any) -> None:
    """Suspend/resume, deadline and retry changes go to the RayJob; other changes after the start are refused."""
    with metrics.measured("update"):
        await reconcile.spec_changed(body, diff, logger)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def transferjob_event(event: kopf.RawEvent, **_: Any) -> None:
    """Feed every job's latest body to the mirror loop; keep the jobs-by-phase gauge in step."""
    obj = event["object"]
    meta = obj.get("metadata") or {}
    if event.get("type") == "DELETED":
        reconcile.forget(meta.get("uid", ""), meta.get("namespace", ""), meta.get("name", ""))
        return
    metrics.set_phase(meta.get("namespace", ""), meta.get("name", ""), (obj.get("status") or {}).get("phase"))
    reconcile.SUPERVISOR.observe(obj)


@kopf.on.event("ray.io", "v1", "rayjobs", labels={builder.LABEL_TRANSFERJOB: kopf.PRESENT})
async def rayjob_event(event: kopf.RawEvent, **_: Any) -> None:
    """A RayJob of ours changed: remember it and wake its TransferJob's mirror loop."""
    owner = reconcile.remember_rayjob(event.get("type"), event["object"])
    if owner:
        reconcile.wake(owner)
