"""The operator's shape (issue 15): public clients only, no per-object state in module globals, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [p for d in ("graft", "operator", "trainer") for p in sorted((ROOT / d).rglob("*.py"))]
OPERATOR = sorted((ROOT / "operator" / "graft_operator").glob("*.py"))
#: What used to be reconcile.py, split by job; none may grow back into a 500-line module.
RECONCILE_SUCCESSORS = ("lifecycle.py", "children.py", "follow.py", "supervisor.py", "memory.py")


def _imports(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", PRODUCTION, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_kopf_module_is_imported(path):
    private = [n for n in _imports(ast.parse(path.read_text())) if n.startswith("kopf._")]
    assert not private, f"{path.relative_to(ROOT)} imports kopf internals (kopf's docs: _cogs is not API): {private}"


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict | ast.Set | ast.List | ast.DictComp | ast.SetComp | ast.ListComp):
        return True
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in (
        "dict", "set", "list", "defaultdict", "OrderedDict", "WeakValueDictionary", "WeakKeyDictionary")


@pytest.mark.parametrize("path", OPERATOR, ids=lambda p: p.name)
def test_no_module_level_mutable_state_in_the_operator(path):
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names = [t.id for t in targets if isinstance(t, ast.Name)]
        # An UPPER_CASE name is a constant by PEP 8 (client.KINDS, rbac.RULES); anything else is state.
        if names and _mutable(node.value) and not all(n.isupper() for n in names):
            found.append(f"{path.name}:{node.lineno} {', '.join(names)}")
    assert not found, f"per-object state belongs in kopf's memo or an index, not module globals: {found}"


@pytest.mark.parametrize("name", RECONCILE_SUCCESSORS)
def test_the_operator_steps_stay_small(name):
    lines = len((ROOT / "operator" / "graft_operator" / name).read_text().splitlines())
    assert lines <= 250, f"operator/{name} has {lines} lines (250 at most: split it by job)"


def _operator_imports(path: Path) -> set[str]:
    """The operator modules `path` imports, anywhere in it: `if TYPE_CHECKING:` blocks and function bodies count (a
    cycle hidden from the interpreter is still one to a reader, a type checker and a dependency graph)."""
    names = {p.stem for p in OPERATOR}
    found = set()
    for name in _imports(ast.parse(path.read_text())):
        parts = name.split(".")
        if parts[:2] == ["graft", "operator"] and len(parts) > 2 and parts[2] in names:
            found.add(parts[2])
    return found - {path.stem}


def test_the_operator_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _operator_imports(p) for p in OPERATOR}
    cycles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*path[path.index(dep):], node, dep]))
            elif dep not in state:
                walk(dep, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    assert not cycles, f"import cycles in operator/: {cycles}"


@pytest.mark.parametrize("path", OPERATOR, ids=lambda p: p.name)
def test_operator_modules_and_functions_stay_small(path):
    text = path.read_text()
    lines = len(text.splitlines())
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60]
    assert lines <= 400 and not long, f"operator/{path.name}: {lines} lines (400 at most), functions over 60: {long}"
