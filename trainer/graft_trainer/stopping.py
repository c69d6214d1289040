"""How the driver stops when it is told to: SIGTERM (Kubernetes: preemption, eviction, Kueue suspension, node drain)
or SIGINT (Ctrl-C) end it with a stated exit code and a line saying where the job resumes, never a traceback or a
SIGABRT.

Both signals raise `Stopped` in the main thread. A write in flight finishes first (`graft.signals.held`), the
stage stays Running in the ledger, so the next attempt resumes it from its latest checkpoint. The process then ends
with `os._exit` after Ray is shut down: an ordinary interpreter exit ran pyarrow's and Ray's C++ teardown while their
threads were still busy, and ended in SIGABRT (exit 134) in 4 of 4 trials.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from graft.ledger import Ledger

_log = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """The driver was told to stop by a signal; the job is left resumable."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


#: The signal that last reached our handler: Ray Train's fit() catches a KeyboardInterrupt raised inside it (ours
#: included) and ends its run as aborted, so the exception that comes out need not say which signal it was.
_received: int | None = None


def _stop(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    raise Stopped(signum)


#: The read end of the pipe the interpreter writes each signal's number to as it arrives (`signal.set_wakeup_fd`),
#: whichever Python handler then runs and whatever becomes of its exception.
_arrived: int | None = None


def install() -> None:
    """SIGTERM and SIGINT raise `Stopped` from now on. Called at start and again after `ray.init()`, which installs
    its own SIGTERM handler (`sys.exit(signum)`, ray/_private/worker.py) while it starts Ray.

    A handler's exception can be lost: raised while the main thread runs a finaliser or a callback, it is printed
    as "Exception ignored in ..." and the code goes on (seen in the kill storm: a driver SIGTERMed while `ray.init`
    ran trained to the end and exited 0). So every arrival is also recorded below the handlers, and `check()` at
    the driver's safe points stops a driver whose stop was lost."""
    global _arrived, _previous_hook
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if sys.unraisablehook is not _unraisable:
        _previous_hook = sys.unraisablehook
        sys.unraisablehook = _unraisable
    if _arrived is None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        _arrived = read


_previous_hook = sys.unraisablehook


def _unraisable(hook: Any) -> None:  # sys.UnraisableHookArgs
    """A stop lost inside a finaliser or callback is said in one line, not as the interpreter's "Exception ignored"
    traceback: `check()` stops the driver at its next safe point. Every other unraisable exception goes to the
    hook that was in place."""
    signum = signal_of(hook.exc_value) if hook.exc_value is not None else None
    if signum is not None:
        _log.warning("a %s arrived inside %s and could not stop the driver there; it stops at its next safe point",
                     signal.Signals(signum).name, _describe(hook.object))
        return
    _previous_hook(hook)


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return name.replace("<locals>.", "")


def check() -> None:
    """Raise `Stopped` for a SIGTERM or SIGINT that arrived but whose exception did not stop the driver. Called
    where the driver goes on to new work (Ray started, a stage starting), never while a stop is under way."""
    global _received
    if _arrived is None:
        return
    numbers = b""
    while True:  # every number written since the last look (other signals' too: only these two count)
        try:
            chunk = os.read(_arrived, 4096)
        except BlockingIOError:
            break
        numbers += chunk
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signum in numbers:
            _log.warning("a %s arrived but its stop was lost; stopping now", signal.Signals(signum).name)
            _received = signum
            raise Stopped(signum)


def signal_of(exc: BaseException) -> int | None:
    """The signal that stopped the run, or None when `exc` is no stop: a `Stopped` in the exception's chain, Ray's
    own SIGTERM handler's `SystemExit(15)` (a SIGTERM that came while Ray had its handler in place), or any other
    KeyboardInterrupt (Ray Train turns Ctrl-C into its abort, which `executors.fit` raises as one): SIGINT."""
    if _received is not None and isinstance(exc, KeyboardInterrupt | SystemExit):
        return _received
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, Stopped):
            return seen.signum
        if isinstance(seen, SystemExit) and seen.code == signal.SIGTERM:
            return signal.SIGTERM
        seen = seen.__cause__ or seen.__context__
    return signal.SIGINT if isinstance(exc, KeyboardInterrupt) else None


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT)."""
    return 128 + signum


def resumable_line(root: str | None, signum: int) -> str:
    """`stopped by SIGTERM: resumable from stage X, epoch N of M (...)`; where the ledger cannot be read, just that
    it stopped."""
    name = signal.Signals(signum).name
    if root is None:
        return f"stopped by {name} before the job started"
    try:
        ledger = Ledger.load(root)
    except Exception:  # storage down too: the line must still come
        ledger = None
    current = ledger.current if ledger is not None else None
    if current is None:
        return f"stopped by {name}: nothing recorded yet in {root}"
    if ledger.done:
        return f"stopped by {name}: every stage had finished ({root})"
    where = f"stage {current.type}" + (f", epoch {current.epoch} of {current.epochs}" if current.epoch else "")
    return f"stopped by {name}: resumable from {where}; run the same command to resume ({root})"


def exit_now(code: int) -> None:
    """Shut Ray down and end the process with `code`, skipping the interpreter's teardown (see the docstring)."""
    try:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()
    except BaseException as exc:  # a second signal, or Ray already half gone: exit all the same
        _log.debug("ray.shutdown() at exit: %s", exc)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
