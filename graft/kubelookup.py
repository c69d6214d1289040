"""Finding a TransferJob's storage through the cluster, for commands that read it from a laptop (`graft logs -n`).

The kubeconfig is kubectl's (KUBECONFIG, else ~/.kube/config). The S3 keys are the user's own when the environment
has them (AWS_ACCESS_KEY_ID ...); otherwise they are read from the job's `spec.storage.credentialsSecret`, which
works where the user may read that Secret, as `kubectl get secret` would.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from graft import joblogs, storage
from graft.api.models import GROUP, KIND, PLURAL, VERSION


def _client():
    from lightkube import Client, KubeConfig

    try:
        return Client(KubeConfig.from_env())
    except Exception as exc:  # lightkube raises its own ConfigError, or OSError for an unreadable file
        raise LookupError(f"no usable kubeconfig (KUBECONFIG or ~/.kube/config): {exc}") from exc


def _get(client, resource, name: str, namespace: str, what: str) -> dict[str, Any]:
    from lightkube import ApiError

    try:
        return dict(client.get(resource, name, namespace=namespace))
    except ApiError as exc:
        if exc.status.code == 404:
            raise LookupError(f"{what} {namespace}/{name} not found") from None
        raise LookupError(f"{what} {namespace}/{name}: {exc.status.code} {exc.status.message}") from None
    except OSError as exc:
        raise LookupError(f"{what} {namespace}/{name}: the API server did not answer: {exc}") from None


def job_storage(namespace: str, name: str) -> tuple[str, storage.S3Options | None]:
    """The job root of TransferJob `namespace/name` (`<storage.uri>/<uid>`) and the S3 settings to read it."""
    from lightkube.generic_resource import create_namespaced_resource

    client = _client()
    tj = _get(client, create_namespaced_resource(GROUP, VERSION, KIND, PLURAL), name, namespace, "TransferJob")
    status, st = tj.get("status") or {}, (tj.get("spec") or {}).get("storage") or {}
    root = joblogs.root_of_logs(status["logsURI"]) if status.get("logsURI") else status.get("storageURI")
    if not root:
        raise LookupError(f"TransferJob {namespace}/{name} has not started yet: its status names no storage")
    if not storage.is_s3(root):
        return root, None
    keys: dict[str, str | None] = {}
    ref = st.get("credentialsSecret")
    if not os.environ.get("AWS_ACCESS_KEY_ID") and ref:
        secret = create_namespaced_resource("", "v1", "Secret", "secrets")
        data = _get(client, secret, ref["name"], namespace, "Secret").get("data") or {}
        wanted = ref.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID"), ref.get("secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")
        missing = [k for k in wanted if k not in data]
        if missing:
            raise LookupError(f"Secret {namespace}/{ref['name']} has no key(s) {', '.join(missing)}")
        keys = {"access_key_id": base64.b64decode(data[wanted[0]]).decode(),
                "secret_access_key": base64.b64decode(data[wanted[1]]).decode()}
    env = storage.env_s3_options()
    options = storage.S3Options(
        endpoint=st.get("endpoint") or env.endpoint, region=st.get("region") or env.region,
        access_key_id=keys.get("access_key_id", env.access_key_id),
        secret_access_key=keys.get("secret_access_key", env.secret_access_key),
        session_token=None if keys else env.session_token,
    )
    return root, options
