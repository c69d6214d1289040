"""Prometheus metrics of the operator: jobs by phase, reconcile errors, reconcile latency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Suspended", "Running", "Succeeded", "Failed")

JOBS = Gauge("graft_transferjobs", "TransferJobs known to the operator, by phase.", ["phase"])
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

_phases: dict[tuple[str, str], str] = {}
for _p in PHASES:
    JOBS.labels(phase=_p).set(0)


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record a job's phase (None forgets the job) and update the by-phase gauge."""
    key = (namespace, name)
    if phase is None:
        _phases.pop(key, None)
    else:
        _phases[key] = phase
    counts = dict.fromkeys(PHASES, 0)
    for p in _phases.values():
        counts[p] = counts.get(p, 0) + 1
    for p, n in counts.items():
        JOBS.labels(phase=p).set(n)


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
