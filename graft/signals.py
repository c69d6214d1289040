"""Signals held while a write is in flight, so that it either completes or never starts.

Kubernetes ends a pod with SIGTERM (preemption, eviction, Kueue suspension, node drain) and a user with Ctrl-C
(SIGINT). Python runs their handlers in the main thread between two bytecodes, as an exception raised wherever the
thread is: Ray's driver handler is `sys.exit(signum)` (ray/_private/worker.py, `init`), Python's SIGINT handler raises
KeyboardInterrupt. Inside an S3 write that exception leaves pyarrow's output stream, which then completes the upload
with whatever it was given so far (apache/arrow cpp/src/arrow/filesystem/s3fs.cc, `~ObjectOutputStream`: "Close
rather than Abort"; pyarrow exposes no abort): an empty object over the previous version. `held()` makes such a
signal wait until the write is over and then acts on it exactly as it would have.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HELD = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def held() -> Iterator[None]:
    """SIGTERM and SIGINT that arrive inside the block are handled when it ends, by the handlers in place before it.

    Only the main thread receives Python-level signal handlers, so elsewhere (Ray Train's worker thread, the log
    shipper) this does nothing: a signal raises no exception there. A second signal while held is held too:
    whoever must stop a hung write at once sends SIGKILL (as Kubernetes does after the grace period), which never
    completes an upload."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[tuple[int, FrameType | None]] = []
    previous = {}
    for signum in HELD:
        handler = signal.getsignal(signum)
        if handler is None:  # installed from C, not Python: cannot be put back, so leave it alone
            continue
        previous[signum] = handler
        signal.signal(signum, lambda s, frame: arrived.append((s, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in arrived[:1]:  # one is enough to act on: the first stops the process or raises
            _deliver(previous[signum], signum, frame)


def _deliver(handler, signum: int, frame: FrameType | None) -> None:
    """Act on a signal as `handler` (what `signal.getsignal` returned) would have when it arrived."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action (terminate), now that the handler is back
