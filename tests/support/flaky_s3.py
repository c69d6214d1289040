"""A flaky object store endpoint: an HTTP proxy on 127.0.0.1 in front of the moto server (or fake-gcs-server) that
answers a share of requests with 503 and drops another share of connections, and forwards the rest unchanged.

What it answers is what the store answers when it sheds load. S3 (`S3_FAULTS`): `503 Slow Down` with the S3 error
document (`<Error><Code>SlowDown</Code>...`), or `503 Service Unavailable` (`ServiceUnavailable`), per the S3 API
reference's "Error responses" page (docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html, "List of error
codes"). GCS (`GCS_FAULTS`): `503` with the JSON API's error document, reason `backendError`, per "HTTP status and
error codes for JSON" (cloud.google.com/storage/docs/json_api/v1/status-codes, "503 Service Unavailable"). A
dropped connection is a TCP reset after the request was read (SO_LINGER 0), as a load balancer losing a backend
gives. Requests are forwarded byte for byte (the Host header too, so a SigV4 signature stays valid), chunked bodies
included.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
             "<RequestId>graft-flaky-proxy</RequestId></Error>")
_GCS_ERROR = ('{{"error": {{"code": 503, "message": "{message}", "errors": [{{"message": "{message}", '
              '"domain": "global", "reason": "{code}"}}]}}}}')
#: (reason phrase, content type, body) of each 503 a store gives when it sheds load.
S3_FAULTS = (
    ("Slow Down", "application/xml", _S3_ERROR.format(code="SlowDown", message="Please reduce your request rate.")),
    ("Service Unavailable", "application/xml",
     _S3_ERROR.format(code="ServiceUnavailable", message="Service is unable to handle request.")),
)
GCS_FAULTS = (("Service Unavailable", "application/json; charset=UTF-8",
               _GCS_ERROR.format(code="backendError", message="Backend Error")),)
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}


class FlakyS3:
    """The proxy's URL and what it did: `requests`, `failed` (503s) and `reset` counts."""

    def __init__(self, url: str):
        self.url = url
        self.requests = self.failed = self.reset = 0
        self.lock = threading.Lock()


@contextmanager
def flaky_s3(upstream: str, fail: float = 0.3, reset: float = 0.05, seed: int = 0,
             faults: tuple[tuple[str, str, str], ...] = S3_FAULTS) -> Iterator[FlakyS3]:
    """Proxy `upstream` (the moto endpoint, or fake-gcs-server's with `faults=GCS_FAULTS`): a `fail` share of requests
    get a 503 (one of `faults`), a `reset` share a TCP reset."""
    target = urlparse(upstream)
    rng = random.Random(seed)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it; also answers `Expect: 100-continue`

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raw = b""
                while True:  # chunk-size line, data, CRLF ... then the last chunk, trailers and a blank line
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while (trailer := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                            raw += trailer
                        return raw + b"\r\n"
                    raw += self.rfile.read(size + 2)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._body()
            with proxy.lock:
                proxy.requests += 1
                roll = rng.random()
                if roll < reset:
                    proxy.reset += 1
                elif roll < reset + fail:
                    proxy.failed += 1
            if roll < reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if roll < reset + fail:
                return self._fail(rng.choice(faults))
            self._forward(body)

        def _fail(self, fault: tuple[str, str, str]) -> None:
            reason, content_type, body = fault
            data = b"" if self.command == "HEAD" else body.encode()
            self.send_response(503, reason)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _forward(self, body: bytes) -> None:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in self.headers.items():
                    if key.lower() not in _HOP:
                        conn.putheader(key, value)
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                if body:
                    conn.send(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP and (key.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy = FlakyS3(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, name="flaky-s3", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
