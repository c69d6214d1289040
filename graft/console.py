"""The rich Console the CLI prints tables with."""

from __future__ import annotations

import os
import sys

from rich.console import Console

#: Wide enough that no table row or message is ever folded in a pipe or log: grep must find whole paths.
_UNWRAPPED = 100_000


def console() -> Console:
    """A Console as wide as the terminal; in a pipe or a log, lines as long as their content, unwrapped and
    without ANSI codes (rich's 80 columns folded URIs mid-word, so grep missed them). COLUMNS still wins."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=_UNWRAPPED, soft_wrap=True, no_color=True, highlight=False)
