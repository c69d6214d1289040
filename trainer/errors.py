"""Errors the trainer reports to the user: each names the URI (or field) at fault and the cause."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input found at run time (data, weights): names the URI and what is wrong with it."""

    def __init__(self, uri: str, cause: str):
        self.uri = uri
        self.cause = cause
        super().__init__(f"{uri}: {cause}")

    def __reduce__(self):
        # Ray pickles worker exceptions back to the driver; keep (uri, cause) intact.
        return (self.__class__, (self.uri, self.cause))


def user_message(exc: BaseException) -> str:
    """One line for the ledger: the innermost Graft/storage error if there is one, else the exception."""
    from graft.storage import StorageError

    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, InputError | StorageError):
            return str(e)
        # Ray Train wraps worker errors: WorkerGroupError.worker_failures, ControllerError.controller_failure,
        # RayTaskError.cause.
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        for attr in ("controller_failure", "cause", "__cause__", "__context__"):
            stack.append(getattr(e, attr, None))
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()
