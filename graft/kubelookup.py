"""Finding a TransferJob's storage through the cluster, for commands that read it from a laptop (`graft logs -n`).

The kubeconfig is kubectl's (KUBECONFIG, else ~/.kube/config). The S3 keys are the user's own when the environment
has them (AWS_ACCESS_KEY_ID ...); otherwise they are read from the job's `spec.storage.credentialsSecret`, which
works where the user may read that Secret, as `kubectl get secret` would.
"""

from __future__ import annotations

import base64
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


def job_storage(namespace: str, name: str) -> tuple[str, Any]:
    """The job root of TransferJob `namespace/name` (`<storage.uri>/<uid>`) and the settings to read it (its
    storage scheme's: S3Options, GcsOptions; None for local storage)."""
    from lightkube.generic_resource import create_namespaced_resource

    client = _client()
    tj = _get(client, create_namespaced_resource(GROUP, VERSION, KIND, PLURAL), name, namespace, "TransferJob")
    status, st = tj.get("status") or {}, (tj.get("spec") or {}).get("storage") or {}
    root = joblogs.root_of_logs(status["logsURI"]) if status.get("logsURI") else status.get("storageURI")
    if not root:
        raise LookupError(f"TransferJob {namespace}/{name} has not started yet: its status names no storage")
    backend = storage.backend(root)
    if not backend.remote:
        return root, None
    keys: dict[str, str] | None = None
    ref = st.get("credentialsSecret")
    wanted = backend.secret_keys(ref) if ref else {}
    if wanted and not backend.env_credentials():
        secret = create_namespaced_resource("", "v1", "Secret", "secrets")
        data = _get(client, secret, ref["name"], namespace, "Secret").get("data") or {}
        missing = [k for k in wanted.values() if k not in data]
        if missing:
            raise LookupError(f"Secret {namespace}/{ref['name']} has no key(s) {', '.join(missing)}")
        keys = {role: base64.b64decode(data[key]).decode() for role, key in wanted.items()}
    return root, backend.options(st.get("endpoint"), st.get("region"), keys, from_env=True)
