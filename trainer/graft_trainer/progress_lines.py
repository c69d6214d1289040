"""`graft run`'s progress when stdout is not a terminal (CI, `tee`, a log file): one plain line per finished epoch
of each stage, from the ledger's per-epoch history, and one when a stage ends. Progress bars redraw in place, so in
a pipe rich shows them only once, at the end: a job of minutes printed nothing until it finished."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

#: How often the ledger is read (the bars read it as often).
POLL_S = 0.5
#: The per-epoch figures a line shows (the history also holds throughput, settings counts, resume marks).
_SHOWN = ("train_loss", "val_accuracy", "val_loss")
_ENDED = ("Succeeded", "Failed", "Skipped")


def epoch_line(stage: str, entry: dict[str, float], epochs: int | None, elapsed: str) -> str:
    """`Pretrain  epoch 3/15  train_loss=0.812 val_accuracy=0.911 val_loss=0.402  0:04`."""
    figures = " ".join(f"{k}={entry[k]:.3f}" for k in _SHOWN if k in entry)
    total = f"/{epochs}" if epochs else ""
    return f"{stage:<15} epoch {int(entry['epoch'])}{total}  {figures}  {elapsed}".rstrip()


class LedgerPoller:
    """Reads the ledger every `POLL_S` while the job runs (workers write it after every epoch) and hands each
    version read to `show`; once more at the end. A subclass shows it: bars on a terminal, lines elsewhere."""

    def __init__(self, root: str):
        self.root = root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def show(self, ledger: Any) -> None:
        raise NotImplementedError

    def update(self) -> None:
        from graft.ledger import Ledger

        try:
            ledger = Ledger.load(self.root)
        except Exception:  # a half-visible write on some stores; the next poll sees it
            return
        if ledger is not None:
            self.show(ledger)

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            self.update()

    def __enter__(self) -> LedgerPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.update()


class LinesWatcher(LedgerPoller):
    """Prints what is new since the last poll, each line once: the epochs a stage finished (all of them, however
    many ended between two polls) and a stage's end. `metrics_text(ledger, rec)` and `stage_time(rec)` format as the
    summary table does."""

    def __init__(self, root: str, console: Any, metrics_text: Callable[[Any, Any], str],
                 stage_time: Callable[[Any], str]):
        super().__init__(root)
        self.console, self.metrics_text, self.stage_time = console, metrics_text, stage_time
        self._printed: dict[str, int] = {}  # stage -> last epoch said
        self._ended: set[str] = set()

    def show(self, ledger: Any) -> None:
        for rec in ledger.stages:
            self._say(ledger, rec)

    def _say(self, ledger: Any, rec: Any) -> None:
        last = self._printed.get(rec.type, 0)
        for entry in rec.history:
            epoch = int(entry.get("epoch", 0))
            if epoch > last:
                self._print(epoch_line(rec.type, entry, rec.epochs, self.stage_time(rec)))
                last = epoch
        self._printed[rec.type] = last
        state = rec.state.value
        if state in _ENDED and rec.type not in self._ended and (rec.start_time or state != "Skipped"):
            self._ended.add(rec.type)
            metrics = self.metrics_text(ledger, rec)
            self._print(f"{rec.type:<15} {state.lower()} in {self.stage_time(rec)}" + (f": {metrics}" if metrics
                                                                                        else ""))

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> LinesWatcher:
        self.update()  # a resumed job's earlier epochs, said once at the start (the bars show them too)
        super().__enter__()
        return self
