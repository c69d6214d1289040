"""Where a job's state lives (`<storage>/<uid>`), the storage settings its driver process uses, and its lease: light
(no torch), so that `graft run` takes the job's lease, or is refused, before it loads the trainer."""

from __future__ import annotations

from pathlib import Path

from graft import lease, storage
from graft.api.models import TransferJob
from graft.ledger import job_root
from graft_trainer.errors import InputError


def job_uid(job: TransferJob) -> str:
    """The job's identity in storage: its Kubernetes UID, or its name for a local run without one."""
    uid = job.metadata.uid or job.metadata.name
    if not uid:
        raise InputError("metadata", "the job needs metadata.uid or metadata.name")
    return uid


def resolve_root(job: TransferJob, storage_uri: str | None) -> str:
    """The job root: `<spec.storage.uri or --storage>/<uid>`."""
    base = job.spec.storage.uri if job.spec.storage else storage_uri
    if not base:
        raise InputError("spec.storage.uri", "no storage given (set spec.storage.uri or pass --storage)")
    return job_root(absolute(base), job_uid(job))


def absolute(uri: str | None) -> str | None:
    """A local path made absolute: Ray workers run in their own working directory."""
    if not uri or uri == "hub" or "://" in uri or uri.startswith(("builtin:", "torchvision:")):
        return uri
    return str(Path(uri).expanduser().resolve())


def apply_storage_env(job: TransferJob) -> None:
    """Point this process's storage operations (and through `storage.worker_env`, Ray's workers) at the job's
    endpoint and region, with the job's retry budget; keys come only from the environment."""
    st = job.spec.storage
    storage.configure(st.retry_seconds if st else storage.DEFAULT_RETRY_SECONDS)
    storage.use_endpoint(st.endpoint if st else None, st.region if st else None, st.uri if st else "")


def take_lease(job: TransferJob, storage_uri: str | None, force: bool = False, wait: float = 0.0) -> lease.Lease:
    """The job's lease (graft/lease.py): LeaseHeld when another driver keeps it for `wait` seconds, InputError when
    the job names no storage."""
    root = resolve_root(job, storage_uri)
    apply_storage_env(job)
    return lease.acquire(root, job.metadata.name or job_uid(job), force=force, wait=wait)
