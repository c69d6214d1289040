"""Reading a job's ledger from object storage with the credentials its spec names (contract 5).

The keys are read from the Secret in the job's namespace, kept in memory only, and never logged: they travel
inside `storage.S3Options`, whose repr hides them.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from graft.operator import client

from graft import storage
from graft.api.models import TransferJobSpec
from graft.ledger import Ledger, job_root

_SECRET_TTL = 60.0
_secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}


class LedgerUnavailable(RuntimeError):
    """The ledger could not be read; the message names the URI or Secret and the cause, never a key."""


async def _secret_data(namespace: str, name: str) -> dict[str, str]:
    cached = _secrets.get((namespace, name))
    if cached and time.monotonic() - cached[0] < _SECRET_TTL:
        return cached[1]
    body = await client.get(client.path("", "v1", "secrets", namespace, name))
    if body is None:
        raise LedgerUnavailable(f"Secret {namespace}/{name} (spec.storage.credentialsSecret) does not exist")
    data = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
    data.update(body.get("stringData") or {})
    _secrets[(namespace, name)] = (time.monotonic(), data)
    return data


async def s3_options(namespace: str, spec: TransferJobSpec) -> storage.S3Options | None:
    """Explicit S3 settings for a job's storage (None for local storage)."""
    st = spec.storage
    if st is None or not storage.is_s3(st.uri):
        return None
    key_id = secret_key = None
    ref = st.credentials_secret
    if ref is not None:
        data = await _secret_data(namespace, ref.name)
        missing = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data]
        if missing:
            raise LedgerUnavailable(f"Secret {namespace}/{ref.name} has no key(s) {', '.join(missing)}")
        key_id, secret_key = data[ref.access_key_id_key], data[ref.secret_access_key_key]
    return storage.S3Options(
        endpoint=st.endpoint, region=st.region, access_key_id=key_id, secret_access_key=secret_key
    )


def storage_root(spec: TransferJobSpec, uid: str) -> str | None:
    """`<storage.uri>/<uid>`: where the job writes."""
    return job_root(spec.storage.uri, uid) if spec.storage is not None else None


async def read(namespace: str, spec: TransferJobSpec, uid: str) -> dict[str, Any] | None:
    """The ledger's status projection (Ledger.to_status()), or None when the trainer has not written one yet."""
    root = storage_root(spec, uid)
    if root is None:
        return None
    options = await s3_options(namespace, spec)
    try:
        ledger = await asyncio.to_thread(Ledger.load, root, options)
    except storage.StorageError as exc:
        raise LedgerUnavailable(str(exc)) from None
    except ValueError as exc:  # a ledger that does not parse
        raise LedgerUnavailable(f"{Ledger.uri(root)}: unreadable ledger ({exc.__class__.__name__})") from None
    return ledger.to_status() if ledger is not None else None
