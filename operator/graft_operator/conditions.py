"""The words of a TransferJob's status, named once: condition types, reasons, and KubeRay's states they come from.

KubeRay and Kubeflow Trainer keep these as named constants beside the setters that use them; string literals spread
over files drift apart (a reason spelt two ways is two reasons to `kubectl wait` and to alerting rules). Every value
is a `StrEnum`, so it is the plain string on the wire and compares equal to the string read back from the API server.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    """The conditions every started job carries (metav1.Condition `type`), and the ledger's own."""

    CREATED = "Created"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RECONCILING = "Reconciling"  # kstatus: the operator still works towards the desired state
    STALLED = "Stalled"  # kstatus: it no longer can
    #: Present once a ledger read has failed: False while reads fail (the progress fields are stale), True once one
    #: answers again. Absent (the API conventions' Unknown) while every read has answered.
    LEDGER_READABLE = "LedgerReadable"
    #: Present once a stage's result has a finding (`findings.py`): True, its reason the finding's kind (NotLearning).
    #: Absent while no stage has one.
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """Condition and transition reasons (one CamelCase word), and the Events' reasons."""

    # the job's own states
    CREATING = "Creating"
    CLUSTER_STARTING = "ClusterStarting"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    INVALID_SPEC = "InvalidSpec"
    # why it failed (KubeRay's own reason, when it gives one, is passed on as it is)
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    JOB_FAILED = "JobFailed"
    # why a created job waits (pending.py, and Kueue from the RayJob)
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    QUOTA_EXCEEDED = "QuotaExceeded"
    QUEUED_BY_KUEUE = "QueuedByKueue"
    # the conditions that say "not": Suspended/Succeeded/Failed/Stalled while false
    NOT_SUSPENDED = "NotSuspended"
    NOT_SUCCEEDED = "NotSucceeded"
    NOT_FAILED = "NotFailed"
    NOT_STALLED = "NotStalled"
    # the ledger's reads (LedgerReadable)
    LEDGER_READ = "LedgerRead"
    LEDGER_UNAVAILABLE = "LedgerUnavailable"
    LEDGER_DAMAGED = "LedgerDamaged"
    LEDGER_TIMEOUT = "LedgerTimeout"
    # the results' checks (findings.py): Degraded's reason, and Failed's when the job stopped for it
    NOT_LEARNING = "NotLearning"
    # Events
    RAYJOB_CREATED = "RayJobCreated"
    RAYJOB_RECREATED = "RayJobRecreated"
    RAYJOB_DELETED = "RayJobDeleted"
    IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
    STORAGE_NOT_SHARED = "StorageNotShared"


#: Reasons a job can wait on that a user can act on (set by `pending.py` from pods and events, or from Kueue's label).
PENDING_PROBLEMS = (Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_BACK_OFF, Reason.CONTAINER_CONFIG_ERROR,
                    Reason.QUOTA_EXCEEDED, Reason.QUEUED_BY_KUEUE)


class JobDeploymentStatus(StrEnum):
    """KubeRay's RayJob `status.jobDeploymentStatus` (ray-operator/apis/ray/v1/rayjob_types.go)."""

    NONE = ""  # not written yet
    NEW = "New"
    INITIALIZING = "Initializing"
    WAITING = "Waiting"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


JDS = JobDeploymentStatus
#: The RayJob's states while its cluster starts.
STARTING = (JDS.NONE, JDS.NEW, JDS.INITIALIZING, JDS.WAITING)
SUSPENDED = (JDS.SUSPENDING, JDS.SUSPENDED)
#: States in which the RayJob is done: its final ledger read is what the finished status waits for.
FINISHED = (JDS.COMPLETE, JDS.FAILED)
#: States in which no trainer of the RayJob has run yet (so no ledger of a new job can exist).
NOT_YET_RUN = STARTING + SUSPENDED
