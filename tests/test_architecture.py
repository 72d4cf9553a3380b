"""The shape of the house (docs/architecture.md), checked on the source: who may import whom, and no cycles.

Every import counts, wherever it is written: at module level, inside a function (dpprof imports lazily to keep
start-up fast) and under ``if TYPE_CHECKING`` (a type-only import is still a dependency: move the type instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dpprof"
#: Stages that must not depend on the ones after them (collect -> run dir -> trace -> analyze -> report).
LOWER = ("dpprof.trace", "dpprof.analyze")
UPPER = ("dpprof.report", "dpprof.collect", "dpprof.commands", "dpprof.cli", "dpprof.perfetto")
#: Modules any stage may import: they import only each other.
LEAVES = ("dpprof.vocabulary", "dpprof.manifest", "dpprof.rundir", "dpprof.schema", "dpprof.fileio", "dpprof.term",
          "dpprof.errors")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The dpprof modules ``path`` imports (``from a.b import c`` counts as ``a.b.c`` when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] == "dpprof"}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in files and i != m} for m, p in files.items()}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layering_violations(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, deps in g.items() if _under(m, LOWER)
                  for i in deps if _under(i, UPPER))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_lower_stages_do_not_import_upper_ones() -> None:
    assert layering_violations(graph()) == []


def test_leaves_import_only_leaves() -> None:
    g = graph()
    assert sorted(f"{m} imports {i}" for m in LEAVES for i in g[m] if i not in LEAVES and i != "dpprof") == []


def test_no_import_cycles() -> None:
    # a package's __init__ re-exporting from its own modules is not a cycle of dependencies
    g = {m: {i for i in deps if not (m.startswith(i + ".") and i in g_init)} for m, deps in graph().items()
         for g_init in [_packages()]}
    assert cycles(g) == []


def _packages() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def test_the_checks_see_what_they_check() -> None:
    g = {"dpprof.analyze.a": {"dpprof.report.b"}, "dpprof.report.b": {"dpprof.analyze.a"}, "dpprof.x": set()}
    assert layering_violations(g) == ["dpprof.analyze.a imports dpprof.report.b"]
    assert cycles(g) == [["dpprof.analyze.a", "dpprof.report.b"]]
    assert "dpprof.analyze.model" in graph()["dpprof.analyze.pipeline"]
