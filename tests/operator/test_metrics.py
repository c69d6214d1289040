"""Operator metrics: jobs by phase, reconcile errors (not for invalid specs), latency."""

from __future__ import annotations

import kopf
import pytest
from graft.operator import metrics
from prometheus_client import REGISTRY


def _value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_jobs_by_phase_follow_each_job_and_forget_deleted_ones():
    metrics.set_phase("t", "a", "Running")
    metrics.set_phase("t", "b", "Running")
    before = _value("graft_transferjobs", phase="Running")
    metrics.set_phase("t", "a", "Succeeded")
    assert _value("graft_transferjobs", phase="Running") == before - 1
    metrics.set_phase("t", "b", None)
    metrics.set_phase("t", "a", None)
    assert _value("graft_transferjobs", phase="Running") == before - 2


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
