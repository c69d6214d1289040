"""The rich Console the CLI prints tables with."""

from __future__ import annotations

import os
import sys

from rich.console import Console


def console() -> Console:
    """A Console as wide as the terminal, or 160 columns when the output is a pipe or a log (rich's 80 would
    fold the summary table's URIs and metrics into unreadable columns). COLUMNS still wins."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)
