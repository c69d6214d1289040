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


def check_fit(uri: str, arch: str, own: dict, given: dict) -> None:
    """Raise an InputError naming the missing and unexpected keys and the wrong shapes when the state dict `given`
    does not fit a model whose own state dict is `own` (the first five of each, then how many more)."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong = [f"{k} {tuple(given[k].shape)} != {tuple(own[k].shape)}"
             for k in sorted(set(own) & set(given)) if own[k].shape != given[k].shape]
    problems = [(what, keys) for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                                ("wrong shapes", wrong)) if keys]
    if problems:
        detail = "; ".join(f"{what}: {', '.join(keys[:5])}{f' and {len(keys) - 5} more' if len(keys) > 5 else ''}"
                           for what, keys in problems)
        raise InputError(uri, f"weights do not fit backbone {arch} ({detail})")


def _chain(exc: BaseException):
    """The exception and everything it wraps: causes, contexts, and Ray Train's worker and controller failures."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # Ray Train wraps worker errors: WorkerGroupError.worker_failures, ControllerError.controller_failure,
        # RayTaskError.cause.
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            stack.extend(failures.values())
        for attr in ("controller_failure", "cause", "__cause__", "__context__"):
            stack.append(getattr(e, attr, None))


#: What running out of memory raises: Python's MemoryError, torch's (CUDA) OutOfMemoryError, Ray's
#: OutOfMemoryError (its memory monitor killed a worker); matched by name so that neither is imported here.
_OOM_TYPES = ("MemoryError", "OutOfMemoryError")


def out_of_memory(exc: BaseException, stage_index: int, spec) -> str | None:
    """One line in Graft's words when a stage ran out of memory (host or GPU), naming the fields that size it;
    None for any other failure."""
    for e in _chain(exc):
        if type(e).__name__ in _OOM_TYPES or "out of memory" in str(e).lower():
            gpu = "cuda" in f"{type(e).__module__} {e}".lower()
            batch = getattr(spec.stages[stage_index], "batch_size", None)
            smaller = f"lower spec.data.imageSize ({spec.data.image_size})"
            if batch:
                smaller += f" or spec.stages[{stage_index}].batchSize ({batch})"
            if gpu:
                return f"a GPU ran out of memory: {smaller}, or use a GPU with more memory"
            return (f"a worker ran out of memory: {smaller}, or give each worker more with spec.workers.memory "
                    f"({spec.workers.memory})")
    return None


def user_message(exc: BaseException) -> str:
    """One line for the ledger: the innermost Graft/storage error if there is one, else the exception."""
    from graft.storage import StorageError

    for e in _chain(exc):
        if isinstance(e, InputError | StorageError):
            return str(e)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()
