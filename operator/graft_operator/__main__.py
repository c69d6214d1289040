"""`python -m graft_operator ARGS` runs the operator as `graft operator ARGS` does (for images or venvs without the
console script)."""

from __future__ import annotations

import typer

from graft_operator.cli import run_operator

if __name__ == "__main__":
    typer.run(run_operator)
