"""The KServe InferenceService that serves a job's Triton repository, and the ServiceAccount that gives KServe's
storage initializer the job's S3 credentials. Pure builders: plain dicts, no cluster access.

How KServe finds S3 credentials (kserve/kserve `pkg/credentials/service_account_credentials.go`,
`pkg/credentials/s3/s3_secret.go`, `s3_service_account.go`, `s3/utils.go`): the predictor's
`serviceAccountName` names a ServiceAccount; every Secret in its `secrets` list holding the configured key names
(`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` by default, the `credentials.s3` block of the
`inferenceservice-config` ConfigMap) becomes the storage initializer's AWS variables, and the `serving.kserve.io/
s3-endpoint`, `s3-usehttps` and `s3-region` annotations (on the Secret or on the ServiceAccount) its endpoint and
region. The job's Secret is used as it is: the ServiceAccount carries the annotations, so nothing of the user's
Secret has to change.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from graft import storage

API_VERSION = "serving.kserve.io/v1beta1"
#: KServe's Triton ClusterServingRuntime (config/runtimes/kserve-tritonserver.yaml), which lists `onnx` version 1.
RUNTIME = "kserve-tritonserver"
#: KServe's default S3 key names (inferenceservice-config `credentials.s3`); other names need the cluster's
#: ConfigMap changed, which the manifest cannot do.
KSERVE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def storage_uri(repository: str) -> str:
    """`storageUri` of a repository: the S3 URI as it is, a local folder as `file://` (for a cluster, copy it
    to a bucket or a PVC first; KServe's storage initializer reads `file://` inside its own container)."""
    if storage.is_remote(repository):  # KServe's storage initializer reads s3:// and gs:// itself
        return repository
    from pathlib import Path

    return Path(repository.removeprefix("file://")).resolve().as_uri()


def service_account_name(name: str) -> str:
    return f"{name}-kserve-storage"


def build_service_account(name: str, namespace: str | None, secret: str, endpoint: str | None,
                          region: str | None) -> dict[str, Any]:
    """The ServiceAccount whose Secret and annotations KServe turns into the storage initializer's S3 settings."""
    annotations: dict[str, str] = {}
    if endpoint:
        parts = urlsplit(endpoint)
        annotations["serving.kserve.io/s3-endpoint"] = parts.netloc + parts.path.rstrip("/")
        annotations["serving.kserve.io/s3-usehttps"] = "1" if parts.scheme == "https" else "0"
    if region:
        annotations["serving.kserve.io/s3-region"] = region
    metadata: dict[str, Any] = {"name": service_account_name(name), "labels": {"app.kubernetes.io/managed-by": "graft"}}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "secrets": [{"name": secret}]}


def build_inference_service(name: str, namespace: str | None, uri: str, service_account: str | None = None,
                            job: dict[str, str] | None = None) -> dict[str, Any]:
    """An InferenceService serving the Triton repository at `uri` (an ONNX model, v2 protocol)."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "graft"}}
    if namespace:
        metadata["namespace"] = namespace
    if job:
        metadata["annotations"] = {f"graft.dev/job-{k}": v for k, v in job.items() if v}
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": "onnx", "version": "1"},
            "runtime": RUNTIME,
            "protocolVersion": "v2",
            "storageUri": uri,
        },
    }
    if service_account:
        predictor["serviceAccountName"] = service_account
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


def documents(name: str, repository: str, job: Any | None = None, job_ids: dict[str, str] | None = None
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifest's documents (a ServiceAccount when the `job`'s storage has a credentials Secret, then the
    InferenceService) for the repository, and notes for the user (what the manifest cannot do itself).
    `job_ids`: model.json's `job` block (name, uid), kept as annotations."""
    notes: list[str] = []
    namespace = secret = endpoint = region = None
    if job is not None:
        namespace = job.metadata.namespace
        st = job.spec.storage
        if st is not None:
            endpoint, region = st.endpoint, st.region
            if st.credentials_secret is not None:
                secret = st.credentials_secret.name
                keys = (st.credentials_secret.access_key_id_key, st.credentials_secret.secret_access_key_key)
                if keys != KSERVE_KEYS:
                    notes.append(f"Secret {secret} keeps its keys as {keys[0]}/{keys[1]}; KServe reads "
                                 f"{KSERVE_KEYS[0]}/{KSERVE_KEYS[1]} unless its inferenceservice-config says otherwise")
    if not storage.is_remote(repository):
        notes.append("storageUri is a local folder: copy it to a bucket or PVC the cluster reads, and change "
                     "storageUri to that")
    docs: list[dict[str, Any]] = []
    if secret:
        docs.append(build_service_account(name, namespace, secret, endpoint, region))
    docs.append(build_inference_service(name, namespace, storage_uri(repository),
                                        service_account_name(name) if secret else None,
                                        {k: str(v) for k, v in (job_ids or {}).items()}))
    return docs, notes
