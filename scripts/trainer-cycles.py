"""Import cycles among trainer/*.py, every `import` counted: module level, under `if TYPE_CHECKING:` and inside
functions alike. Prints each cycle found and exits 1, or says there is none.

    python scripts/trainer-cycles.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "graft_trainer"
FOLDER = Path(__file__).resolve().parent.parent / "trainer"


def edges(path: Path, modules: set[str]) -> set[str]:
    """The trainer modules `path` imports, by any `import` statement anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith(PACKAGE + "."):
                short = name[len(PACKAGE) + 1:].split(".")[0]
                if short in modules:
                    found.add(short)
    found.discard(path.stem)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = {p.stem: p for p in FOLDER.glob("*.py")}
    graph = {name: edges(path, set(files)) for name, path in files.items()}
    found = cycles(graph)
    for part in found:
        print("import cycle among trainer modules:", ", ".join(part))
    if not found:
        print(f"no import cycle among {len(files)} trainer modules")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
