"""Operator metrics: jobs by phase, reconcile errors (not for invalid specs), latency."""

from __future__ import annotations

import kopf
import pytest
from prometheus_client import REGISTRY

from graft_operator import metrics


def _value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_jobs_by_phase_are_counted_from_the_index_at_scrape_time():
    # kopf's index (handlers.jobs_by_phase): phase -> the jobs in it; kopf drops a deleted job from it.
    index = {"Running": ["a", "b"], "Succeeded": ["c"]}
    metrics.count_phases(index)
    assert [_value("graft_transferjobs", phase=p) for p in metrics.PHASES] == [0, 0, 2, 1, 0]
    index["Running"].remove("a")
    index["Failed"] = ["a"]
    assert [_value("graft_transferjobs", phase=p) for p in metrics.PHASES] == [0, 0, 1, 1, 1]


def test_errors_and_latency_are_counted_but_an_invalid_spec_is_not_an_error():
    errors = _value("graft_reconcile_errors_total", handler="test")
    count = _value("graft_reconcile_duration_seconds_count", handler="test")
    with metrics.measured("test"):
        pass
    with pytest.raises(RuntimeError), metrics.measured("test"):
        raise RuntimeError("boom")
    with pytest.raises(kopf.PermanentError), metrics.measured("test"):
        raise kopf.PermanentError("RayJob exists and belongs to another controller")
    assert _value("graft_reconcile_errors_total", handler="test") == errors + 1
    assert _value("graft_reconcile_duration_seconds_count", handler="test") == count + 3
