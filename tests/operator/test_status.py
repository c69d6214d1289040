"""Status projection: RayJob status + ledger -> phase, conditions (as docs/operator.md lists them), kstatus,
transitions."""

from __future__ import annotations

import pytest

from graft.api.models import TransferJobStatus
from graft.api.validation import validate_spec
from graft_operator import status
from graft_operator.conditions import ConditionType

SPEC_RAW = {
    "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/w.pt"},
    "data": {"train": "builtin:digits"},
    "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
    "storage": {"uri": "s3://bucket/jobs"},
    "runPolicy": {"backoffLimit": 2, "activeDeadlineSeconds": 60},
}


def _spec(**policy):
    raw = {**SPEC_RAW, "runPolicy": {**SPEC_RAW["runPolicy"], **policy}}
    spec, problems = validate_spec(raw)
    assert not problems
    return spec


def _rj(jds=None, job_status=None, **extra):
    st = {k: v for k, v in {"jobDeploymentStatus": jds, "jobStatus": job_status, **extra}.items() if v is not None}
    return {"metadata": {"name": "rj"}, "status": st}


LEDGER_FAILED = {
    "stages": [{"type": "FrozenFeatures", "state": "Succeeded"},
               {"type": "Head", "state": "Failed", "message": "loss is NaN"}],
    "stage": "Head", "progress": "1/2", "modelURI": None,
}

STATE_CASES = [
    pytest.param(None, {}, None, ("Pending", "Creating"), id="rayjob-not-seen-yet"),
    pytest.param(_rj(), {}, None, ("Pending", "ClusterStarting"), id="created-no-status"),
    pytest.param(_rj("Initializing"), {}, None, ("Pending", "ClusterStarting"), id="initializing"),
    pytest.param(_rj("Initializing"), {}, ("Unschedulable", "pod x: 0/3 nodes"), ("Pending", "Unschedulable"),
                 id="initializing-unschedulable"),
    pytest.param(_rj("Running", "RUNNING"), {}, None, ("Running", "Running"), id="running"),
    pytest.param(_rj("Running", "PENDING"), {}, None, ("Running", "Running"), id="submitted-driver-starting"),
    pytest.param(_rj("Complete", "SUCCEEDED"), {}, None, ("Succeeded", "Succeeded"), id="complete"),
    pytest.param(_rj("Complete", "FAILED", failed=1), {"backoffLimit": 0}, None, ("Failed", "BackoffLimitExceeded"),
                 id="complete-but-job-failed"),
    pytest.param(_rj("Failed", "FAILED", reason="AppFailed", failed=3), {}, None, ("Failed", "BackoffLimitExceeded"),
                 id="retries-exhausted"),
    pytest.param(_rj("Failed", "RUNNING", reason="DeadlineExceeded", failed=1), {}, None,
                 ("Failed", "DeadlineExceeded"), id="deadline"),
    pytest.param(_rj("Failed", "FAILED", reason="SubmissionFailed"), {}, None, ("Failed", "SubmissionFailed"),
                 id="kuberay-reason-kept"),
    pytest.param(_rj("Retrying", "FAILED", failed=1), {}, None, ("Pending", "Retrying"), id="retrying"),
    pytest.param(_rj("New", failed=1), {}, None, ("Pending", "ClusterStarting"), id="new-attempt"),
    pytest.param(_rj("Suspending"), {"suspend": True}, None, ("Suspended", "Suspended"), id="suspending"),
    pytest.param(_rj("Suspended"), {"suspend": True}, None, ("Suspended", "Suspended"), id="suspended"),
    pytest.param(_rj(), {"suspend": True}, None, ("Suspended", "Suspended"), id="created-suspended"),
    pytest.param(_rj("Running", "RUNNING"), {"suspend": True}, None, ("Running", "Running"),
                 id="suspend-asked-still-running"),
    pytest.param({**_rj("Suspended"), "metadata": {"name": "rj", "labels": {"kueue.x-k8s.io/queue-name": "q"}}},
                 {}, None, ("Pending", "QueuedByKueue"), id="held-by-kueue"),
    pytest.param({**_rj("Suspended"), "metadata": {"name": "rj", "labels": {"kueue.x-k8s.io/queue-name": "q"}}},
                 {"suspend": True}, None, ("Suspended", "Suspended"), id="queued-and-user-suspended"),
    pytest.param({**_rj(), "metadata": {"name": "rj", "labels": {"kueue.x-k8s.io/queue-name": "q"}},
                  "spec": {"suspend": True}}, {}, None, ("Pending", "QueuedByKueue"),
                 id="suspended-by-kueue-webhook-before-any-status"),
    pytest.param({**_rj("Running", "RUNNING"), "metadata": {"name": "rj", "labels": {
        "kueue.x-k8s.io/queue-name": "q"}}, "spec": {"suspend": False}}, {}, None, ("Running", "Running"),
                 id="admitted-by-kueue"),
    pytest.param(_rj("Initializing"), {"suspend": True}, None, ("Pending", "ClusterStarting"),
                 id="suspend-asked-kuberay-not-caught-up"),
    pytest.param(_rj("Initializing", message="Secret s3 not found"), {}, None, ("Pending", "ClusterStarting"),
                 id="initializing-with-kuberay-message"),
]


@pytest.mark.parametrize(("rayjob", "policy", "pending", "expected"), STATE_CASES)
def test_derive_state(rayjob, policy, pending, expected):
    state = status.derive_state(spec=_spec(**policy), rayjob=rayjob, ledger=None, pending=pending)
    assert (state.phase, state.reason) == expected
    assert state.message
    if rayjob is not None:  # what kopf's index keeps of a RayJob says the same
        fat = {**rayjob, "spec": {**rayjob.get("spec", {}), "entrypoint": "python -m trainer",
                                  "rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": []}}}}}}
        view = status.rayjob_view(fat)
        assert "rayClusterSpec" not in view["spec"] and "entrypoint" not in view["spec"]
        assert status.derive_state(spec=_spec(**policy), rayjob=view, ledger=None, pending=pending) == state


def test_failure_message_names_the_failed_stage_and_the_limit():
    state = status.derive_state(spec=_spec(), rayjob=_rj("Failed", "FAILED", failed=3), ledger=LEDGER_FAILED)
    assert "stage Head failed: loss is NaN" in state.message
    assert "backoffLimit is 2" in state.message


def test_success_message_claims_stage_results_only_from_a_ledger():
    done = {"stages": [{"type": "FrozenFeatures", "state": "Succeeded"}, {"type": "Head", "state": "Succeeded"}],
            "stage": None, "progress": "2/2", "modelURI": "s3://b/uid/model"}
    with_ledger = status.derive_state(spec=_spec(), rayjob=_rj("Complete", "SUCCEEDED"), ledger=done)
    assert with_ledger.message == "all stages succeeded; model at s3://b/uid/model"
    blind = status.derive_state(spec=_spec(), rayjob=_rj("Complete", "SUCCEEDED"), ledger=None)
    assert blind.phase == "Succeeded" and "no ledger was read" in blind.message
    assert "all stages" not in blind.message


# KubeRay's own words when the deadline passes (ray-operator/controllers/ray/rayjob_controller.go,
# checkActiveDeadlineAndUpdateStatusIfNeeded): reason DeadlineExceeded and this message.
KUBERAY_DEADLINE = "The RayJob has passed the activeDeadlineSeconds. StartTime: 2026-01-01T00:00:00Z. " \
    "ActiveDeadlineSeconds: 60"


@pytest.mark.parametrize(
    ("deadline", "rayjob", "expected"),
    [
        pytest.param(60, _rj("Failed", "RUNNING", reason="DeadlineExceeded", message=KUBERAY_DEADLINE),
                     status.State("Failed", "DeadlineExceeded",
                                  f"the job ran longer than activeDeadlineSeconds (60s); {KUBERAY_DEADLINE}"),
                     id="deadline-set"),
        pytest.param(None, _rj("Failed", "RUNNING", reason="DeadlineExceeded", message=KUBERAY_DEADLINE),
                     status.State("Failed", "DeadlineExceeded",
                                  "KubeRay ended the RayJob at a deadline (spec.runPolicy.activeDeadlineSeconds "
                                  f"is not set); {KUBERAY_DEADLINE}"),
                     id="no-deadline-set"),
        pytest.param(None, _rj("Failed", "RUNNING", reason="DeadlineExceeded"),
                     status.State("Failed", "DeadlineExceeded",
                                  "KubeRay ended the RayJob at a deadline (spec.runPolicy.activeDeadlineSeconds "
                                  "is not set)"),
                     id="no-deadline-set-no-kuberay-message"),
    ],
)
def test_deadline_message_names_the_deadline_only_when_one_is_set(deadline, rayjob, expected):
    spec = _spec(activeDeadlineSeconds=deadline)
    assert status.derive_state(spec=spec, rayjob=rayjob, ledger=None) == expected


def _build(rayjob, current=None, ledger=None, now="2026-01-01T00:00:10Z", generation=2, **policy):
    spec = _spec(**policy)
    state = status.derive_state(spec=spec, rayjob=rayjob, ledger=ledger)
    return status.build_status(
        spec=spec, generation=generation, current=current, state=state, rayjob_name="rj", created=rayjob is not None,
        rayjob=rayjob, ledger=ledger, storage_uri="s3://bucket/jobs/uid", now=now,
    )


def _conds(st):
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_running_status_has_every_condition_and_kstatus_reconciling():
    st = _build(_rj("Running", "RUNNING", startTime="2026-01-01T00:00:05Z", dashboardURL="http://d:8265"))
    assert st["phase"] == "Running"
    assert _conds(st) == {
        "Created": ("True", "RayJobCreated"),
        "Running": ("True", "Running"),
        "Suspended": ("False", "NotSuspended"),
        "Succeeded": ("False", "NotSucceeded"),
        "Failed": ("False", "NotFailed"),
        "Reconciling": ("True", "Running"),
        "Stalled": ("False", "NotStalled"),
    }
    assert all(c["observedGeneration"] == 2 for c in st["conditions"])
    assert st["observedGeneration"] == 2
    assert (st["startTime"], st["dashboardURL"], st["attempts"]) == ("2026-01-01T00:00:05Z", "http://d:8265", 1)
    assert st["completionTime"] is None
    # before a ledger exists, every planned stage is listed as Pending
    assert st["stages"] == [{"type": "FrozenFeatures", "state": "Pending"}, {"type": "Head", "state": "Pending"}]
    assert st["progress"] == "0/2"
    # where the job writes, and where its logs are (they outlive the cluster: `graft logs`)
    assert (st["storageURI"], st["logsURI"]) == ("s3://bucket/jobs/uid", "s3://bucket/jobs/uid/logs")
    # the result fits the CRD's status schema (what the API server would keep)
    TransferJobStatus.model_validate(st)


@pytest.mark.parametrize(
    ("rayjob", "phase", "reconciling", "stalled"),
    [
        pytest.param(_rj("Initializing"), "Pending", ("True", "Pending"), ("False", "NotStalled"), id="pending"),
        pytest.param(_rj("Suspended"), "Suspended", ("False", "Suspended"), ("False", "NotStalled"), id="suspended"),
        pytest.param(_rj("Complete", "SUCCEEDED"), "Succeeded", ("False", "Succeeded"), ("False", "NotStalled"),
                     id="succeeded"),
        pytest.param(_rj("Failed", reason="DeadlineExceeded"), "Failed", ("False", "Failed"),
                     ("True", "DeadlineExceeded"), id="failed"),
    ],
)
def test_kstatus_conditions(rayjob, phase, reconciling, stalled):
    st = _build(rayjob, suspend=phase == "Suspended")
    assert st["phase"] == phase
    assert _conds(st)["Reconciling"] == reconciling
    assert _conds(st)["Stalled"] == stalled
    assert sum(c["status"] == "True" for c in st["conditions"] if c["type"] in ("Running", "Suspended", "Succeeded",
                                                                                "Failed")) <= 1


@pytest.mark.parametrize(
    ("true_types", "phase"),
    [
        pytest.param({"Failed", "Succeeded"}, "Failed", id="failed-wins"),
        pytest.param({"Succeeded", "Suspended"}, "Succeeded", id="succeeded-over-suspended"),
        pytest.param({"Suspended", "Running"}, "Suspended", id="suspended-over-running"),
        pytest.param({"Running", "Created"}, "Running", id="running"),
        pytest.param({"Created"}, "Pending", id="pending"),
    ],
)
def test_phase_is_derived_from_conditions(true_types, phase):
    conds = [{"type": t, "status": "True" if t in true_types else "False"} for t in ConditionType]
    assert status.phase_of(conds) == phase


def test_transition_time_kept_until_status_flips_and_unchanged_status_writes_nothing():
    first = _build(_rj("Running", "RUNNING"), now="2026-01-01T00:00:10Z")
    again = _build(_rj("Running", "RUNNING"), current=first, now="2026-01-01T00:05:00Z")
    assert status.status_patch(first, again) == {}
    done = _build(_rj("Complete", "SUCCEEDED", endTime="2026-01-01T00:06:00Z"), current=first,
                  now="2026-01-01T00:06:01Z")
    times = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert times["Created"] == "2026-01-01T00:00:10Z"  # still True: not a transition
    assert times["Succeeded"] == times["Running"] == "2026-01-01T00:06:01Z"
    assert done["completionTime"] == "2026-01-01T00:06:00Z"
    patch = status.status_patch(first, done)
    assert {"phase", "conditions", "reason", "message", "completionTime"} <= set(patch)
    assert "rayJobName" not in patch


def test_ledger_progress_is_mirrored_and_nan_metrics_dropped():
    ledger = {
        "stages": [
            {"type": "FrozenFeatures", "state": "Succeeded", "startTime": "t0", "endTime": "t1"},
            {"type": "Head", "state": "Running", "epoch": 3, "epochs": 10, "checkpoint": "s3://b/ck/3",
             "metrics": {"val_accuracy": 0.5, "train_loss": float("nan")}},
        ],
        "stage": "Head", "progress": "1/2", "modelURI": None,
    }
    st = _build(_rj("Running", "RUNNING"), ledger=ledger)
    assert st["stage"] == "Head" and st["progress"] == "1/2"
    assert st["stages"][1]["metrics"] == {"val_accuracy": 0.5}
    assert st["stages"][1]["checkpoint"] == "s3://b/ck/3"
    assert "stage Head running" in st["message"]


def test_the_model_and_its_serving_files_reach_the_status_and_stay():
    """The ledger the trainer writes after the export (issue 26) -> `status.model`, camelCase as the CRD declares;
    a later status built while the ledger is not readable keeps it."""
    from graft.ledger import Ledger

    led = Ledger.create("uid", "job", ["FrozenFeatures", "Head"])
    for s in led.stages:
        s.state = "Succeeded"
    led.model_uri = "s3://b/uid/model"
    led.serving = {"onnx": "s3://b/uid/model/triton/job/1/model.onnx", "tritonRepository": "s3://b/uid/model/triton",
                   "inferenceService": "s3://b/uid/model/inferenceservice.yaml", "servedName": "job"}
    done = _build(_rj("Complete", "SUCCEEDED"), ledger=led.to_status())
    assert done["model"] == {"uri": "s3://b/uid/model", **led.serving}
    assert done["modelURI"] == "s3://b/uid/model"
    later = _build(_rj("Complete", "SUCCEEDED"), current=done, ledger=None)
    assert later["model"] == done["model"]
    led.serving = None  # a model whose ONNX export failed: the folder, and no serving files claimed
    assert _build(_rj("Complete", "SUCCEEDED"), ledger=led.to_status())["model"] == {"uri": "s3://b/uid/model"}


@pytest.mark.parametrize(
    ("failed", "jds", "attempts"),
    [
        pytest.param(0, "Running", 1, id="first-attempt"),
        pytest.param(1, "Running", 2, id="second-attempt"),
        pytest.param(2, "Complete", 3, id="succeeded-on-third"),
        pytest.param(3, "Failed", 3, id="failed-after-three"),
    ],
)
def test_attempts_count(failed, jds, attempts):
    st = _build(_rj(jds, "SUCCEEDED" if jds == "Complete" else "RUNNING", failed=failed))
    assert st["attempts"] == attempts


def test_reason_and_message_only_change_at_transitions():
    first = _build(_rj("Running", "RUNNING"))
    refused = {**first, "reason": "ImmutableFieldChanged", "message": "spec.stages cannot change"}
    later = _build(_rj("Running", "RUNNING"), current=refused, ledger={**LEDGER_FAILED, "stages": []})
    assert (later["reason"], later["message"]) == ("ImmutableFieldChanged", "spec.stages cannot change")
    done = _build(_rj("Complete", "SUCCEEDED"), current=refused)
    assert done["reason"] == "Succeeded"


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        pytest.param({}, {"phase": "Pending", "reason": "ClusterStarting", "message": "m"}, None,
                     id="the-first-status-right-after-rayjob-created-is-silent"),
        pytest.param({}, {"phase": "Pending", "reason": "Creating", "message": "m"}, None, id="creating-is-silent"),
        pytest.param({"phase": "Pending", "reason": "Creating"}, {"phase": "Pending", "reason": "ClusterStarting",
                                                                  "message": "m"}, None,
                     id="cluster-starting-right-after-rayjob-created-is-silent"),
        pytest.param({"phase": "Pending", "reason": "Retrying"}, {"phase": "Pending", "reason": "ClusterStarting",
                                                                  "message": "m"},
                     ("Normal", "ClusterStarting", "m"), id="a-new-attempt-starting-is-said"),
        pytest.param({"phase": "Pending", "reason": "Creating"}, {"phase": "Pending", "reason": "Creating"}, None,
                     id="no-change"),
        pytest.param({"phase": "Running", "reason": "Running"}, {"phase": "Failed", "reason": "DeadlineExceeded",
                                                                 "message": "m"},
                     ("Warning", "DeadlineExceeded", "m"), id="failure-warns"),
        pytest.param({"phase": "Pending", "reason": "ClusterStarting"},
                     {"phase": "Pending", "reason": "Unschedulable", "message": "m"},
                     ("Warning", "Unschedulable", "m"), id="pending-problem-warns"),
    ],
)
def test_transition_events(before, after, expected):
    assert status.transition(before, after) == expected


def test_invalid_status():
    st = status.invalid_status(message="spec.storage: required", generation=1, current=None, now="t")
    assert st["phase"] == "Failed" and st["reason"] == "InvalidSpec"
    assert _conds(st)["Stalled"] == ("True", "InvalidSpec")
    assert _conds(st)["Created"] == ("False", "InvalidSpec")
    TransferJobStatus.model_validate(st)


LEDGER_FALSE = {"type": "LedgerReadable", "status": "False", "reason": "LedgerTimeout", "message": "no answer in 5 s",
                "lastTransitionTime": "t0", "observedGeneration": 1}


@pytest.mark.parametrize(
    ("current", "problem", "answered", "expected"),
    [
        pytest.param({}, None, True, None, id="reads-never-failed-no-condition"),
        pytest.param({}, ("LedgerTimeout", "no answer in 5 s"), False,
                     {"type": "LedgerReadable", "status": "False", "reason": "LedgerTimeout",
                      "message": "no answer in 5 s"}, id="reads-fail"),
        pytest.param({"conditions": [LEDGER_FALSE]}, None, False,
                     {"type": "LedgerReadable", "status": "False", "reason": "LedgerTimeout",
                      "message": "no answer in 5 s"}, id="no-answer-yet-stays-false"),
        pytest.param({"conditions": [LEDGER_FALSE]}, None, True,
                     {"type": "LedgerReadable", "status": "True", "reason": "LedgerRead",
                      "message": "the ledger answered again; stage progress is current"}, id="answers-again"),
    ],
)
def test_ledger_condition(current, problem, answered, expected):
    assert status.ledger_condition(current, problem=problem, answered=answered) == expected


def test_the_last_projection_stays_until_a_read_answers():
    # What the status showed before (e.g. before an operator restart, whose first look has read nothing yet).
    shown = _build(_rj("Running", "RUNNING"), ledger=LEDGER_FAILED)
    again = _build(_rj("Running", "RUNNING"), current=shown, ledger=None)
    assert ({k: again[k] for k in ("stage", "progress", "stages")}
            == {"stage": "Head", "progress": "1/2", "stages": LEDGER_FAILED["stages"]})


def test_the_mlflow_run_and_model_version_come_from_the_ledger_and_stay_while_reads_fail():
    tracked = {**LEDGER_FAILED, "tracking": {"state": "Succeeded", "trackingURI": "http://mlflow:5000",
                                             "experimentID": "1", "runID": "abc123", "registeredModel": "flowers",
                                             "modelVersion": "4"}}
    shown = _build(_rj("Running", "RUNNING"), ledger=tracked)
    assert shown["tracking"] == tracked["tracking"]
    again = _build(_rj("Running", "RUNNING"), current=shown, ledger=None)
    assert again["tracking"] == tracked["tracking"]
    assert _build(_rj("Running", "RUNNING"), ledger=LEDGER_FAILED)["tracking"] is None
