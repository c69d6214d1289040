"""Storage faults on gs://, as tests/storage/test_storage_faults.py has them on S3: a flaky GCS endpoint (503s with
the JSON API's error document and TCP resets, through a proxy in front of fake-gcs-server) is retried until every
write and read succeeds.

A silent GCS endpoint (accepts, never answers) is not tested here: measured once (docs/faults.md), the "no answer"
warning came within 10 s and the one-line error named the object and the endpoint, but only after 120 s with a 12 s
budget (google-cloud-cpp's own stall timeout, which pyarrow's GcsFileSystem does not expose), two minutes of CI for a
figure Graft does not set."""

from __future__ import annotations

from support.flaky_s3 import GCS_FAULTS, flaky_s3

from graft.ledger import Ledger
from graft.storage_backends import gcs


def test_a_flaky_gcs_endpoint_is_retried_until_every_write_and_read_succeeds(gcs_endpoint, gcs_bucket, monkeypatch,
                                                                             budget):
    budget(60)
    root = gcs_bucket + "/job"
    with flaky_s3(gcs_endpoint, fail=0.3, reset=0.05, seed=1, faults=GCS_FAULTS) as proxy:
        monkeypatch.setenv(gcs.EMULATOR_ENV, proxy.url)
        ledger = Ledger.create("job", "job", ["Head"])
        for epoch in range(1, 4):  # google-cloud-cpp backs off ~1 s and more per 503: 3 rounds, not S3's 20
            ledger.stages[0].epoch = epoch
            ledger.save(root)
            assert Ledger.load(root).stages[0].epoch == epoch
    print(f"{proxy.requests} requests, {proxy.failed} 503s, {proxy.reset} resets")
    assert proxy.failed + proxy.reset >= 5, f"the proxy injected only {proxy.failed} 503s and {proxy.reset} resets"

