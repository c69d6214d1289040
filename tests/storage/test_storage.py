"""Storage and ledger round trips against a real S3 protocol server (moto on 127.0.0.1), a real GCS emulator
(fake-gcs-server on 127.0.0.1) and a local folder."""

from __future__ import annotations

import json
import threading

import pytest
from support.storage_files import download_dir, upload_dir

from graft import storage
from graft.api.models import StageState
from graft.ledger import Ledger, job_root

#: The object stores by scheme: the fixture that starts each one's server, and the one that makes a bucket there.
STORES = {"s3": ("s3_endpoint", "s3_bucket"), "gs": ("gcs_endpoint", "gcs_bucket")}


@pytest.fixture(params=["local", "s3", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue(STORES[request.param][1]) + "/prefix"


@pytest.fixture(params=list(STORES))
def scheme(request):
    """An object store's scheme, its server running."""
    request.getfixturevalue(STORES[request.param][0])
    return request.param


def test_bytes_json_and_listing_round_trip(root):
    storage.write_bytes(storage.join(root, "a", "b.bin"), b"\x00\x01payload")
    storage.write_json(storage.join(root, "c.json"), {"x": [1, 2]})
    assert storage.read_bytes(storage.join(root, "a", "b.bin")) == b"\x00\x01payload"
    assert storage.read_json(storage.join(root, "c.json")) == {"x": [1, 2]}
    assert storage.exists(storage.join(root, "c.json"))
    assert not storage.exists(storage.join(root, "nope.json"))
    assert storage.list_dir(root, recursive=True) == sorted(
        [storage.join(root, "a", "b.bin"), storage.join(root, "c.json")]
    )


def test_dir_upload_and_download(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.txt").write_text("1")
    (src / "sub" / "two.txt").write_text("2")
    upload_dir(src, storage.join(root, "ckpt"))
    out = download_dir(storage.join(root, "ckpt"), tmp_path / "out")
    assert (out / "one.txt").read_text() == "1" and (out / "sub" / "two.txt").read_text() == "2"


def test_missing_object_is_file_not_found_naming_the_uri(root):
    uri = storage.join(root, "missing", "ledger.json")
    with pytest.raises(FileNotFoundError, match=r"missing/ledger\.json"):
        storage.read_bytes(uri)
    assert Ledger.load(storage.join(root, "missing")) is None


def test_missing_bucket_names_uri_and_cause(scheme):
    uri = f"{scheme}://graft-no-such-bucket-x1/job/ledger.json"
    with pytest.raises(storage.StorageError) as info:
        storage.write_bytes(uri, b"x")
    assert str(info.value).startswith(f"{uri}: ")
    assert "bucket" in info.value.cause, info.value.cause


def test_reading_from_a_missing_bucket_is_an_error_not_an_empty_job(scheme):
    uri = f"{scheme}://graft-no-such-bucket-x2/job"
    with pytest.raises(storage.StorageError) as info:
        Ledger.load(uri)
    assert str(info.value) == f"{uri}/ledger.json: bucket does not exist"


@pytest.mark.parametrize(("bucket", "variable"), [("s3_bucket", "AWS_ENDPOINT_URL"),
                                                  ("gcs_bucket", "STORAGE_EMULATOR_HOST")], ids=["s3", "gs"])
def test_unreachable_endpoint_names_uri_and_cause(bucket, variable, request, monkeypatch):
    """A wrong endpoint (nothing listens on the discard port) fails with the URI and the cause (after the retry
    budget, here 2 s: a refused connection is retried like any dropped one)."""
    uri = f"{request.getfixturevalue(bucket)}/x.json"
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    storage.configure(2)
    try:
        with pytest.raises(storage.StorageError) as info:
            storage.read_bytes(uri)
    finally:
        storage.configure(storage.DEFAULT_RETRY_SECONDS)
    assert info.value.uri == uri and str(info.value).startswith(f"{uri}: ")
    assert info.value.cause


def test_local_write_is_atomic_no_temp_files_left(tmp_path):
    uri = str(tmp_path / "j" / "ledger.json")
    for i in range(20):
        storage.write_json(uri, {"i": i})
    assert [p.name for p in (tmp_path / "j").iterdir()] == ["ledger.json"]


def _ledger(uid: str) -> Ledger:
    return Ledger.create(uid, "job", ["FrozenFeatures", "Head", "FullFineTune"])


def test_ledger_round_trip_and_status_projection(root):
    jr = job_root(root, "uid-123")
    led = _ledger("uid-123")
    led.stages[0].state = StageState.SUCCEEDED
    led.stages[1].state = StageState.RUNNING
    led.stages[1].epoch, led.stages[1].epochs = 3, 10
    led.stages[1].metrics = {"val_accuracy": 0.5}
    led.save(jr)
    back = Ledger.load(jr)
    assert back is not None and back.model_dump(exclude={"updated_at"}) == led.model_dump(exclude={"updated_at"})
    status = back.to_status()
    assert status["stage"] == "Head" and status["progress"] == "1/3"
    assert status["stages"][1] == {
        "type": "Head", "state": "Running", "epoch": 3, "epochs": 10, "metrics": {"val_accuracy": 0.5},
    }


def test_concurrent_reader_never_sees_a_partial_ledger(root):
    """A writer rewrites a large ledger many times; a reader polling all the while only ever sees whole,
    valid versions, and the epochs it sees never go backwards."""
    jr = job_root(root, "uid-race")
    led = _ledger("uid-race")
    led.stages[0].history = [{"loss": float(i), "acc": i / 1000} for i in range(2000)]  # ~100 KB documents
    led.save(jr)
    writes = 60 if storage.is_remote(root) else 300
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read_loop() -> None:
        while not done.is_set():
            try:
                raw = storage.read_bytes(Ledger.uri(jr))
                current = Ledger.model_validate(json.loads(raw))
            except BaseException as exc:  # any failure is the finding
                errors.append(exc)
                return
            seen.append(current.stages[0].epoch)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(1, writes + 1):
            led.stages[0].epoch = i
            # Every version longer than the last, as a growing history makes it: a reader that sized its
            # read by the previous version would get this one cut short.
            led.stages[0].history.append({"loss": float(i), "acc": 0.5})
            led.save(jr)
    finally:
        done.set()
        reader.join(60)
    assert not errors, errors[0]
    assert len(seen) >= 5, "the reader hardly ran; the test proved nothing"
    assert seen == sorted(seen)
    assert Ledger.load(jr).stages[0].epoch == writes


def test_gs_writes_land_in_the_emulators_bucket(gcs_endpoint, gcs_bucket):
    """What graft.storage writes to gs:// is in the bucket as the emulator's own JSON API lists it (not a local
    folder named `gs:`), and what is put there by that API is read back."""
    from support.gcs import object_names

    storage.write_json(f"{gcs_bucket}/jobs/uid/ledger.json", {"ok": True})
    bucket = gcs_bucket[len("gs://"):]
    assert object_names(gcs_endpoint, bucket, "jobs/") == {"jobs/uid/ledger.json"}
    assert storage.list_dir(f"{gcs_bucket}/jobs", recursive=True) == [f"{gcs_bucket}/jobs/uid/ledger.json"]
