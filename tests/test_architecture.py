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
          "dpprof.errors", "dpprof.version")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], package: Path = PACKAGE) -> set[str]:
    """The modules of ``package`` that ``path`` imports, as written: ``import a.b.c`` and ``from a.b import c``
    (``c`` a module) count as ``a.b.c`` only. Python runs ``a`` and ``a.b``'s ``__init__`` on the way (the
    implicit parent-package imports), which no source line asks for; ``from a.b import name`` with ``name``
    defined in ``a/b/__init__.py`` is a real use of that ``__init__`` and counts as ``a.b``."""
    name = module_name(path, package)
    parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = parent.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in out if m.split(".")[0] == package.name}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    return {m: {i for i in imports_of(p, set(files), package) if i in files and i != m} for m, p in files.items()}


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
    assert sorted(f"{m} imports {i}" for m in LEAVES for i in g[m] if i not in LEAVES) == []


#: Known cycle edges, each to be removed with its cause (the test fails when one no longer exists). None now: the
#: collector read ``__version__`` from ``dpprof/__init__.py``, whose lazy ``__getattr__`` imports the Python API
#: (``dpprof.collect.api``), which imported them; the version lives in the leaf ``dpprof.version``.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


def test_no_import_cycles() -> None:
    g = graph()
    assert sorted(e for e in KNOWN_CYCLE_EDGES if e[1] not in g[e[0]]) == []  # no stale allowance
    assert cycles({m: {i for i in deps if (m, i) not in KNOWN_CYCLE_EDGES} for m, deps in g.items()}) == []


def test_the_checks_see_what_they_check() -> None:
    g = {"dpprof.analyze.a": {"dpprof.report.b"}, "dpprof.report.b": {"dpprof.analyze.a"}, "dpprof.x": set()}
    assert layering_violations(g) == ["dpprof.analyze.a imports dpprof.report.b"]
    assert cycles(g) == [["dpprof.analyze.a", "dpprof.report.b"]]
    real = graph()
    assert "dpprof.analyze.model" in real["dpprof.analyze.pipeline"]
    assert "dpprof.collect.api" in real["dpprof"]  # the lazy one in dpprof.__getattr__


def test_a_cycle_through_a_package_init_is_seen(tmp_path: Path) -> None:
    """A package whose ``__init__`` lazily imports a submodule that uses a name of that ``__init__``: a cycle.
    The implicit parent-package imports (``from pkg.sub import api``, ``import pkg.sub.api``) are not edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("HELPER = 1\n\n\ndef __getattr__(name):\n    from pkg.sub.api import session\n"
                                     "    return session\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "api.py").write_text("from pkg import HELPER\n\nsession = HELPER\n")
    (pkg / "sub" / "other.py").write_text("import pkg.sub.api\nfrom pkg.sub import api\nfrom . import api as a2\n")
    g = graph(pkg)
    assert g["pkg"] == {"pkg.sub.api"} and g["pkg.sub.api"] == {"pkg"} and g["pkg.sub.other"] == {"pkg.sub.api"}
    assert cycles(g) == [["pkg", "pkg.sub.api"]]


def test_strategy_labels_are_the_vocabulary() -> None:
    """``analyze/strategy.py`` labels only what ``vocabulary`` defines (ANALYSIS_STRATEGIES, DP_MODES), every one
    of them; what ``profile`` runs is a subset of what the analysis can label."""
    from dpprof import vocabulary as V

    tree = ast.parse((PACKAGE / "analyze" / "strategy.py").read_text(encoding="utf-8"))
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    strategies: set[str] = set()
    modes: set[str | None] = set()
    for ret in (n for n in ast.walk(funcs["detect"]) if isinstance(n, ast.Return)):
        assert isinstance(ret.value, ast.Tuple), ast.unparse(ret)
        label, mode = ret.value.elts[:2]
        assert isinstance(label, ast.Constant) and isinstance(mode, ast.Constant), ast.unparse(ret)
        strategies.add(label.value)
        modes.add(mode.value)
    combined = {n.value.value for n in ast.walk(funcs["combine"])
                if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant)}
    assert combined == {"unknown"}
    assert strategies == set(V.ANALYSIS_STRATEGIES)
    assert modes - {None} == set(V.DP_MODES) and {V.dp_mode_of(n) for n in (0, 1, 2)} == set(V.DP_MODES)
    assert set(V.PROFILE_STRATEGIES) <= set(V.ANALYSIS_STRATEGIES)
    assert set(V.COLLECTIVE_STRATEGIES) <= set(V.ANALYSIS_STRATEGIES) and set(V.STRATEGY_NAMES) == set(
        V.ANALYSIS_STRATEGIES)
