"""A SIGTERM landing inside a write leaves the previous object whole: the ledger and checkpoints on moto S3 and local
storage, with the handler Ray installs in every driver.

`ray.init()` installs `sigterm_handler(signum, frame): sys.exit(signum)` in the driver's main thread
(ray/_private/worker.py, `init`), so SIGTERM (preemption, eviction, Kueue suspension, node drain) becomes a
`SystemExit` raised wherever the driver is. pyarrow's S3 output stream completes its upload when it is closed, also
from the `with` block an exception leaves and from its destructor (apache/arrow cpp/src/arrow/filesystem/s3fs.cc,
`~ObjectOutputStream`: "Close rather than Abort"), so a SIGTERM right after the stream opened used to commit an
empty object over the old one (19 of 46 trials on moto S3 before the fix).

Each trial is a fresh process that writes the same object over and over (every version valid and recognisable)
and is sent a real SIGTERM at a random moment; the object must then be one whole version.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from graft import storage

TRIALS = 40

# The writer: Ray's own SIGTERM handler (copied from ray/_private/worker.py `init`, so no Ray start-up per trial),
# then writes until killed. `ledger` saves a real Ledger; `checkpoint` writes a state.pt-sized body (larger than
# pyarrow's 10 MB part, so the upload is multipart) the way StoredSession and models.save_tensors do.
_WRITER = r"""
import signal, sys
def sigterm_handler(signum, frame):
    sys.exit(signum)
signal.signal(signal.SIGTERM, sigterm_handler)
from graft import storage
from graft.ledger import Ledger
kind, root = sys.argv[1], sys.argv[2]
ledger = Ledger.create("job-uid", "job", ["Head"])
print("ready", flush=True)
n = 0
while True:
    n += 1
    if kind == "ledger":
        ledger.stages[0].epoch = n
        ledger.save(root)
    else:
        head = f"version {n:08d}\n".encode()
        storage.write_bytes(storage.join(root, "state.pt"), head + bytes(12 * 1024 * 1024) + head)
"""


def _check(kind: str, root: str) -> str | None:
    """What is wrong with the object after a trial, or None when it is one whole version (or was never written)."""
    name = "ledger.json" if kind == "ledger" else "state.pt"
    try:
        data = storage.read_bytes(storage.join(root, name))
    except FileNotFoundError:
        return None  # killed before the first write completed: nothing was there to lose
    if kind == "ledger":
        try:
            json.loads(data)
        except ValueError:
            return f"{len(data)} bytes, not JSON"
        return None
    head, tail = data[:17], data[-17:]
    if len(data) != 12 * 1024 * 1024 + 34 or head != tail:
        return f"{len(data)} bytes, starts {head!r}"
    return None


def _trial(kind: str, root: str, env: dict[str, str], seed: int) -> tuple[str | None, bool]:
    """One writer process SIGTERMed after a random delay: (damage found, whether it was still running)."""
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, kind, root], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(random.Random(seed).uniform(0.05, 0.6))
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return _check(kind, root), alive


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["s3", "local"])
@pytest.mark.parametrize("kind", ["ledger", "checkpoint"])
def test_sigterm_inside_writes_never_leaves_an_empty_or_partial_object(kind, backend, request, tmp_path, monkeypatch):
    import os

    if backend == "s3":
        base = request.getfixturevalue("s3_bucket")
    else:
        base = str(tmp_path)
    env = {**os.environ}
    roots = [storage.join(base, f"trial-{i}") for i in range(TRIALS)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _trial(kind, roots[i], env, i), range(TRIALS)))
    damaged = [f"trial {i}: {damage}" for i, (damage, _) in enumerate(results) if damage]
    signalled = sum(alive for _, alive in results)
    assert signalled == TRIALS, f"only {signalled} of {TRIALS} writers were still running when signalled"
    assert not damaged, f"{len(damaged)} of {TRIALS} SIGTERMs left a damaged {kind}:\n" + "\n".join(damaged)
