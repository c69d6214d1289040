"""A real MLflow tracking server on 127.0.0.1 (`mlflow server`): SQLite backend store, artifacts on the moto S3
server (proxied by the tracking server, as `mlflow server --artifacts-destination` does in production)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support.s3 import TEST_CREDENTIALS, free_port, make_bucket

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


class MlflowServer:
    """`mlflow server` in its own session (it forks workers and a job consumer); `stop()` ends them all."""

    def __init__(self, workdir: Path, s3_endpoint: str, bucket: str):
        make_bucket(s3_endpoint, bucket)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = f"s3://{bucket}/mlflow"
        self.log = workdir / "mlflow-server.log"
        env = {**os.environ, **TEST_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
               "AWS_ENDPOINT_URL": s3_endpoint}
        cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination", self.artifacts]
        self.proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 180  # a cold start imports a lot: ~30 s on 2 busy cores
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:  # noqa: S310 (loopback)
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"mlflow server did not start:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)
