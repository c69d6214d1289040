"""What kopf's listing again does not say: which TransferJobs went while its watch was away.

When a watch cannot resume (the API server answers `410 Gone`, "too old resource version", e.g. after it restarted:
k8s.io/apiserver pkg/storage/cacher/watch_cache.go), kopf lists the resource again and streams on from the list
(kopf/_cogs/clients/watching.py, `continuous_watch`: "410 Gone ... we must restart watching"). Unlike client-go's
informers, whose relist reports the objects missing from the new list as deleted (tools/cache/reflector.go ->
DeltaFIFO.Replace), kopf hands its handlers and indexes only what the list has: a job deleted while the watch was
away is never seen deleted. This notices a listing (a `None` event for a job seen before) and, once it has been
quiet for a moment, asks the API server about the jobs it did not show; those that are gone are forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from graft_operator import client
from graft_operator.memory import Memory

log = logging.getLogger("graft_operator")

#: A listing's events come one after another; once none has come for this long it is over.
QUIET_SECONDS = 2.0


class Relists:
    """Per operator process: when each job was last shown by the watch, and the sweep after a listing."""

    def __init__(self, mem: Memory) -> None:
        self.mem = mem
        self.shown: dict[str, tuple[float, str, str]] = {}  # uid -> (when, namespace, name) of its latest event
        self.since = 0.0  # when the listing being swept began
        self.last = 0.0  # its latest event
        self._sweep: asyncio.Task | None = None

    def event(self, kind: str | None, body: Any) -> bool:
        """A TransferJob watch event; True when it is part of a listing again (the watch had been lost)."""
        meta = body["metadata"]
        uid, t = meta["uid"], asyncio.get_running_loop().time()
        if kind == "DELETED":
            self.shown.pop(uid, None)
            return False
        again = kind is None and uid in self.shown
        self.shown[uid] = (t, meta.get("namespace") or "", meta["name"])
        if again:
            if self._sweep is None or self._sweep.done():
                self.since = t
                self._sweep = asyncio.get_running_loop().create_task(self._run(), name="graft-relist-sweep")
            self.last = t
        return again

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while (wait := self.last + QUIET_SECONDS - loop.time()) > 0:
            await asyncio.sleep(wait)
        unshown = [(uid, ns, name) for uid, (t, ns, name) in self.shown.items() if t < self.since]
        for uid, namespace, name in unshown:
            try:
                found = await self.mem.api.get("TransferJob", name, namespace)
            except client.Errors as exc:  # the next listing tries again
                log.warning(f"cannot check TransferJob {namespace}/{name} after the watch was lost: {exc}")
                continue
            if found is None or found["metadata"]["uid"] != uid:
                log.info(f"TransferJob {namespace}/{name} was deleted while the watch was lost: no longer followed")
                self.shown.pop(uid, None)
                self.mem.gone.add(uid)
                self.mem.forget(uid)

    async def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
