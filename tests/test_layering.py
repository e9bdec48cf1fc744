"""The package's layering stays a drawing: no import cycle between its parts.

Each subpackage of ``mercato`` is one part, and so is each top-level module. Every import
counts, a function's lazy one and one under ``TYPE_CHECKING`` included: a role imports
downward (the shared names, config, the event model, the log, the store, ...), never back
up. The command-line root names role modules by string only (a lazy table), so it imports
none of them and stays out of every cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mercato"


def part(module: str) -> str:
    """``mercato.store.sql`` -> ``store``; ``mercato.config`` -> ``config``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "mercato"


def module_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[tuple[str, str], set[str]]:
    """(importing part, imported part) -> the module-level edges behind it."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = module_of(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = source.split(".")[: -node.level + (path.name == "__init__.py")]
                targets = [".".join([*base, node.module] if node.module else base)]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "mercato" and part(target) != part(source):
                    edges[(part(source), part(target))].add(f"{source} -> {target}")
    return edges


def cycles(edges: dict[tuple[str, str], set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_parts_of_the_package() -> None:
    edges = imports()
    assert len({a for a, _ in edges}) > 10  # the walk found the package
    problems = []
    for component in cycles(edges):
        inside = set(component)
        lines = sorted(
            line for (a, b), why in edges.items() if a in inside and b in inside for line in why
        )
        problems.append(" <-> ".join(component) + ":\n    " + "\n    ".join(lines))
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_the_check_finds_a_cycle() -> None:
    edges = {("a", "b"): {"a.x -> b.y"}, ("b", "c"): {"b.y -> c.z"}, ("c", "a"): {"c -> a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({("a", "b"): {"a -> b"}}) == []
