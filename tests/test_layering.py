"""The package-level import graph of partial_fc: no cycles between subpackages, and nothing
outside train/ imports partial_fc.train (the trainer sits on the top floor).

Every ``import``/``from ... import`` statement counts, also those inside functions (a lazy
import is still a dependency); string-named modules (``importlib.import_module`` in cli.py)
do not. A module maps to its top-level subpackage (``partial_fc/eval/roc.py`` -> ``eval``);
the files directly under ``partial_fc/`` are nodes of their own (``cli``, ``margins``, and
``partial_fc`` for ``__init__.py``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "partial_fc"


def _node(module: str) -> str:
    """Top-level subpackage (or top-level module) of a dotted ``partial_fc.*`` name."""
    parts = module.split(".")
    if len(parts) == 1:
        return "partial_fc"
    if (ROOT / parts[1]).is_dir() or (ROOT / f"{parts[1]}.py").is_file():
        return parts[1]
    return "partial_fc"  # ``from partial_fc import X`` where X is a name of __init__.py


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, name: str | None = None) -> set[str]:
    """Dotted partial_fc modules imported by ``path`` (relative imports resolved), ``path``
    being module ``name`` (default: its place under partial_fc/)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "partial_fc")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "partial_fc":
                continue
            # ``from partial_fc import eval`` names the subpackage eval, not __init__.py
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if (ROOT.parent / sub.replace(".", "/")).exists()
                          or (ROOT.parent / f"{sub.replace('.', '/')}.py").exists() else module)
    return found


def import_graph() -> dict[str, dict[str, set[str]]]:
    """{subpackage: {imported subpackage: {importing module, ...}}}, self-edges left out."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sorted(ROOT.rglob("*.py")):
        source = _node(_module_name(path))
        graph[source]  # every subpackage is a node, also one that imports nothing
        for module in _imports(path):
            target = _node(module)
            if target != source:
                graph[source][target].add(f"{_module_name(path)} -> {module}")
    return graph


def find_cycle(graph: dict[str, dict[str, set[str]]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, nodes in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _explain(graph: dict[str, dict[str, set[str]]], cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} ({sorted(graph[a][b])[0]})" for a, b in zip(cycle, cycle[1:]))


def test_finder_sees_cycles_and_lazy_and_relative_imports(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a three-node circle is found, a chain is not.
    assert find_cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {}}) is None
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom . import roc\nfrom ..data.formats import pairs\n\n"
                      "def f():\n    import partial_fc.train.verify\n    from partial_fc import eval\n")
    assert _imports(module, name="partial_fc.eval.m") == {
        "partial_fc.eval.roc", "partial_fc.data.formats.pairs", "partial_fc.train.verify", "partial_fc.eval"}
    assert {_node(m) for m in _imports(module, name="partial_fc.eval.m")} == {"eval", "data", "train"}


def test_graph_covers_the_known_floors() -> None:
    graph = import_graph()
    assert {"head", "comm", "data", "eval", "embed", "train", "metrics"} <= set(graph)
    assert "metrics" in graph["data"], "the raw-pixel baseline uses the shared k-fold protocol"
    assert "metrics" in graph["eval"]


def test_no_cycles_between_subpackages() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"package cycle {' -> '.join(cycle)}: {_explain(graph, cycle)}"


def test_nothing_outside_train_imports_train() -> None:
    graph = import_graph()
    users = {src: sorted(edges["train"]) for src, edges in graph.items() if "train" in edges}
    assert not users, f"only train/ may import partial_fc.train, found {users}"
