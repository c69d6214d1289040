"""Prometheus metrics of the operator: jobs by phase, reconcile errors, reconcile latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from graft.api.models import Phase

PHASES = tuple(Phase)  # Pending, Suspended, Running, Succeeded, Failed

RECONCILE_ERRORS = Counter(
    "graft_reconcile_errors_total", "Reconciliations that raised an error, by handler.", ["handler"]
)
RECONCILE_SECONDS = Histogram(
    "graft_reconcile_duration_seconds",
    "Time one reconciliation took, by handler.",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_WRITES = Counter("graft_status_writes_total", "TransferJob status patches written (only on change).")
LEDGER_READS_OVERDUE = Gauge(
    "graft_ledger_reads_overdue",
    "Ledger reads past their deadline whose thread has not ended yet (a storage endpoint that does not answer).",
)


class _JobsByPhase(Collector):
    """graft_transferjobs{phase}: counted at scrape time from kopf's index of the jobs by phase."""

    def __init__(self) -> None:
        self.index: Any = None  # handlers.jobs_by_phase, handed over by the startup handler
        self.gone: set[str] = set()  # jobs the index keeps but that were deleted while the watch was lost

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("graft_transferjobs", "TransferJobs known to the operator, by phase.",
                                   labels=["phase"])
        for phase in PHASES:
            jobs = self.index.get(phase, ()) if self.index is not None else ()
            family.add_metric([phase], len([uid for uid in jobs if uid not in self.gone]))
        yield family


_JOBS = _JobsByPhase()
REGISTRY.register(_JOBS)


def count_phases(index: Any, gone: set[str] | None = None) -> None:
    """Count the jobs-by-phase gauge from this kopf index ({phase: uid} per TransferJob), leaving out the uids in
    `gone` (kopf keeps a job deleted while its watch was lost in its index: see relists.py)."""
    _JOBS.index, _JOBS.gone = index, gone if gone is not None else set()


@contextmanager
def measured(handler: str) -> Iterator[None]:
    """Time a reconciliation and count it as an error when it raises (kopf's retry exceptions included)."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        import kopf

        # A PermanentError (a child that belongs to another controller) is a verdict, not an operator error.
        if not isinstance(exc, kopf.PermanentError):
            RECONCILE_ERRORS.labels(handler=handler).inc()
        raise
    finally:
        RECONCILE_SECONDS.labels(handler=handler).observe(time.perf_counter() - start)


def serve(port: int) -> None:
    """Serve /metrics on 0.0.0.0:<port> from a background thread."""
    start_http_server(port, addr="0.0.0.0")  # noqa: S104 (scraped from inside the cluster)
