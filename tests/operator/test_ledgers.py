"""The operator reads a job's ledger from S3 with the keys from the Secret its spec names (contract 5)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from graft.operator import client, ledgers

from graft import storage
from graft.api.models import StageState
from graft.api.validation import validate_spec
from graft.ledger import Ledger, job_root

KEY_ID, SECRET = "AKIDOPERATORTEST", "operator-secret-value"


def _spec(uri, endpoint):
    raw = {
        "model": {"backbone": "smallcnn", "numClasses": 10, "weights": "s3://models/w.pt"},
        "data": {"train": "builtin:digits"},
        "stages": [{"type": "FrozenFeatures"}, {"type": "Head"}],
        "storage": {"uri": uri, "endpoint": endpoint, "credentialsSecret": {"name": "s3-creds", "accessKeyIdKey": "id",
                                                                             "secretAccessKeyKey": "key"}},
    }
    spec, problems = validate_spec(raw)
    assert not problems
    return spec


@pytest.fixture()
def secrets(monkeypatch):
    """The API's Secrets, as the operator's client would GET them."""
    store: dict[str, dict] = {}
    calls: list[str] = []

    async def fake_get(url, **_):
        calls.append(url)
        return store.get(url)

    monkeypatch.setattr(client, "get", fake_get)
    ledgers._secrets.clear()
    return store, calls


def _put_secret(store, name, data):
    url = client.path("", "v1", "secrets", "ml", name)
    store[url] = {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_reads_the_ledger_with_explicit_settings_not_the_environment(s3_endpoint, s3_bucket, secrets, monkeypatch):
    store, calls = secrets
    uid = "job-uid-1"
    ledger = Ledger.create(uid, "demo", ["FrozenFeatures", "Head"])
    ledger.stages[0].state = StageState.SUCCEEDED
    ledger.save(job_root(f"{s3_bucket}/jobs", uid))  # written as the trainer would, with its env
    # The operator's own environment knows nothing of this store: only the spec and the Secret do.
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    _put_secret(store, "s3-creds", {"id": KEY_ID, "key": SECRET})
    spec = _spec(f"{s3_bucket}/jobs", s3_endpoint)
    projected = asyncio.run(ledgers.read("ml", spec, uid))
    assert projected["progress"] == "1/2"
    assert [s["state"] for s in projected["stages"]] == ["Succeeded", "Pending"]
    # the Secret is read once and cached, not on every poll
    asyncio.run(ledgers.read("ml", spec, uid))
    assert len(calls) == 1


def test_no_ledger_yet_is_not_an_error(s3_endpoint, s3_bucket, secrets):
    _put_secret(secrets[0], "s3-creds", {"id": KEY_ID, "key": SECRET})
    assert asyncio.run(ledgers.read("ml", _spec(f"{s3_bucket}/jobs", s3_endpoint), "never-ran")) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(None, "Secret ml/s3-creds (spec.storage.credentialsSecret) does not exist", id="no-secret"),
        pytest.param({"id": KEY_ID}, "Secret ml/s3-creds has no key(s) key", id="missing-key"),
    ],
)
def test_secret_problems_are_named_without_values(secrets, data, expected):
    if data is not None:
        _put_secret(secrets[0], "s3-creds", data)
    with pytest.raises(ledgers.LedgerUnavailable) as err:
        asyncio.run(ledgers.read("ml", _spec("s3://bucket/jobs", "http://127.0.0.1:1"), "uid"))
    assert str(err.value) == expected
    assert KEY_ID not in str(err.value)


def test_unreachable_store_names_the_uri_and_never_the_keys(secrets):
    _put_secret(secrets[0], "s3-creds", {"id": KEY_ID, "key": SECRET})
    with pytest.raises(ledgers.LedgerUnavailable) as err:
        asyncio.run(ledgers.read("ml", _spec("s3://bucket/jobs", "http://127.0.0.1:9"), "uid"))
    assert "s3://bucket/jobs/uid/ledger.json" in str(err.value)
    assert SECRET not in str(err.value) and KEY_ID not in str(err.value)


def test_options_repr_hides_keys():
    text = repr(storage.S3Options(endpoint="http://e", access_key_id=KEY_ID, secret_access_key=SECRET))
    assert KEY_ID not in text and SECRET not in text and "http://e" in text
