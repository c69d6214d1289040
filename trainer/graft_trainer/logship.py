"""The job's logs, written to its storage while it runs, so they outlive the Ray cluster (layout in
`graft.joblogs`; `graft logs` reads them).

Each process keeps its own file per stage: the driver (the stage's start and end, a failure with its traceback,
what the process logs) and each Ray Train worker (its epochs, warnings, a failure's traceback). A file is
uploaded whole (an S3 object cannot be appended to) every `INTERVAL` seconds while it grows, after every epoch and
when the stage ends, so a killed pod loses a few seconds of it at most. A rerun appends to what an earlier attempt
wrote. Whatever looks like a credential is masked before it is kept. A log that cannot be uploaded never fails the
stage: the next upload tries again.

Not captured: what native code writes straight to file descriptors 1 and 2 (NCCL, Ray's C++ core), and the Ray
Data actors of FrozenFeatures (their errors reach the driver's log through the driver).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime

from graft import joblogs, storage

#: Graft's own loggers, one per package (logger names follow module names): INFO and up from them is kept.
GRAFT_LOGGERS = ("graft", "graft_operator", "graft_trainer")

INTERVAL = 2.0
#: Bytes kept per file; past it the older half is cut, and a line says how much was cut.
CAP = 4 * 1024 * 1024

# Environment variables whose values are secrets by their names (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...).
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL", re.IGNORECASE)
_PATTERNS = (
    # AWS access key ids.
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "***"),
    # Authorization headers.
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)?\s*)[^\s'\",]+"), r"\1***"),
    # name=value / name: value where the name says secret, password, token or key.
    (re.compile(r"(?i)(\b[\w-]*(?:secret|passw(?:or)?d|token|api[_-]?key|access[_-]?key)[\w-]*[\"']?\s*[:=]\s*"
                r"[\"']?)[^\s'\",;&}]+"), r"\1***"),
    # Passwords in URLs (scheme://user:password@host).
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1***@"),
)


def secret_values(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of the environment's secret-named variables, longest first (so a value that contains another
    is masked whole)."""
    values = {v for k, v in environ.items() if _SECRET_NAME.search(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with the given secret values and anything shaped like a credential masked as `***`."""
    for value in secrets:
        text = text.replace(value, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def metrics_text(metrics: Mapping[str, object]) -> str:
    """`name=value, ...` in name order, numbers to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in sorted(metrics.items()))


def _stamp(seconds: float | None = None) -> str:
    """RFC 3339 in UTC with milliseconds: one clock for every line of every file."""
    moment = datetime.now(UTC) if seconds is None else datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _earlier(uri: str) -> str:
    """What an earlier attempt of this process wrote (a rerun appends to it)."""
    try:
        return storage.read_bytes(uri).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except storage.StorageError:
        return ""  # not readable now: this attempt's lines are kept, an earlier attempt's may be lost


class LogShipper:
    """One log file in storage, kept up to date from a background thread."""

    def __init__(self, uri: str, *, interval: float = INTERVAL, cap: int = CAP, secrets: list[str] | None = None):
        self.uri, self.interval, self.cap = uri, interval, cap
        self.secrets = secret_values() if secrets is None else secrets
        self._text = _earlier(uri)
        self._dirty = False
        self._lock = threading.Lock()  # guards _text and _dirty
        self._upload = threading.Lock()  # one upload at a time, so an older text never lands after a newer one
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self, text: str) -> None:
        if not text:
            return
        text = scrub(text, self.secrets)
        with self._lock:
            self._text += text
            if len(self._text) > self.cap:
                cut = len(self._text) - self.cap // 2
                self._text = f"[... {cut} characters cut: this log keeps its last {self.cap // 2} ...]\n" + \
                    self._text[cut:]
            self._dirty = True

    def line(self, message: str) -> None:
        """One timestamped line."""
        self.write(f"{_stamp()} {message}\n")

    def flush(self) -> None:
        """Upload the file if it changed since the last upload."""
        with self._upload:
            with self._lock:
                if not self._dirty:
                    return
                data, self._dirty = self._text.encode(), False
            try:
                storage.write_bytes(self.uri, data)
            except storage.StorageError:
                with self._lock:
                    self._dirty = True  # the next upload carries it

    def start(self) -> LogShipper:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.flush()

        self._thread = threading.Thread(target=loop, name="graft-logship", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()


class _Formatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _stamp(record.created)


class _Handler(logging.Handler):
    def __init__(self, shipper: LogShipper):
        super().__init__(logging.INFO)
        self.shipper = shipper
        self.setFormatter(_Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and not record.name.startswith("graft"):
            return  # Ray's INFO lines (every report, whole) would drown Graft's own
        try:
            self.shipper.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def capture(root: str, stage: str, name: str) -> Iterator[LogShipper]:
    """Keep `<root>/logs/<stage>/<name>.log` while the block runs: this process's log records (INFO and up from
    Graft, WARNING and up from the rest, Python warnings included). An exception leaving the block is written
    with its traceback. (Not print(): Ray's worker log handler writes to the same streams, so a copy of them
    would hold every record twice.)"""
    shipper = LogShipper(joblogs.log_uri(root, stage, name))
    shipper.line(f"--- {stage} {name}: started (pid {os.getpid()} on {socket.gethostname()})")
    root_logger, graft_loggers = logging.getLogger(), [logging.getLogger(name) for name in GRAFT_LOGGERS]
    handlers: list[logging.Handler] = [_Handler(shipper)]
    if not root_logger.handlers:
        # With no handler at all, Python prints WARNING and up to stderr (logging.lastResort); one handler of ours
        # would silence that, so keep it explicitly.
        handlers.append(logging.StreamHandler())
        handlers[-1].setLevel(logging.WARNING)
    graft_levels = [(logger, logger.level) for logger in graft_loggers]
    for logger in graft_loggers:
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    for h in handlers:
        root_logger.addHandler(h)
    logging.captureWarnings(True)
    shipper.start()
    try:
        yield shipper
    except BaseException:
        shipper.write(traceback.format_exc())
        raise
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            root_logger.removeHandler(h)
        for logger, level in graft_levels:
            logger.setLevel(level)
        shipper.close()
