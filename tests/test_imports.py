"""Imports among circuitdag's modules run one way: the graph of ``import`` statements
between package modules, lazy ones inside functions and ``TYPE_CHECKING`` ones included,
and of module names in strings (``importlib.import_module("circuitdag.x")``, the plugin
registries' ``"circuitdag.x:Name"``, the package's lazy attribute table), has no circle."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "circuitdag"


@functools.cache
def _tree(path: Path) -> ast.Module:
    """``path`` parsed, once per test run (four tests read every module's syntax tree)."""
    return ast.parse(path.read_text(), str(path))


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, mods: dict[str, Path]) -> list[str]:
    """The package modules an import statement names (``from circuitdag.x import y``:
    ``circuitdag.x.y`` when that is a module, else ``circuitdag.x``). A parent package's
    ``__init__`` that Python runs on the way is not counted: it is not named."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative import
            here = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> nx.DiGraph:
    """A copy of :func:`_import_graph` (built once per test run; a test may change its copy)."""
    return _import_graph().copy()


@functools.cache
def _import_graph() -> nx.DiGraph:
    mods = _modules()
    graph = nx.DiGraph()
    for module, path in mods.items():
        graph.add_node(module)
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, path.name == "__init__.py", mods):
                    if target != module:
                        graph.add_edge(module, target)
        for named in _names_in_strings(_tree(path), mods):
            if named != module:
                graph.add_edge(module, named)
    return graph


def _names_in_strings(tree: ast.AST, mods: dict[str, Path]) -> set[str]:
    """Modules imported by name: ``"circuitdag.x:Name"`` anywhere (the plugin registries),
    ``"circuitdag.x"`` given to ``import_module`` or in a tuple (the package's lazy
    attribute table ``{"name": ("circuitdag.x", "name")}``)."""
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            named.add(node.value.partition(":")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            named.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
        elif isinstance(node, ast.Tuple):
            named.update(e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return {n for n in named if n != "circuitdag" and n in mods}


def test_the_graph_sees_lazy_imports():
    g = import_graph()
    assert g.has_edge("circuitdag.circuit", "circuitdag.render")  # inside Circuit.to_svg
    assert g.has_edge("circuitdag.cli.sweep", "circuitdag.sweep.study")  # inside cmd_sweep
    assert g.has_edge("circuitdag.sweep.study", "circuitdag.sweep.report")
    assert g.has_edge("circuitdag", "circuitdag._version")
    assert g.has_edge("circuitdag", "circuitdag.loading")  # a name in the lazy attribute table
    assert g.has_edge("circuitdag.algorithms", "circuitdag.algorithms.acdc")  # "circuitdag.algorithms.acdc:ACDC"


def test_no_import_circles():
    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert not cycles, "imports in a circle: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles[:10])


def test_nothing_imports_the_command_line():
    g = import_graph()
    cli = {m for m in g if m == "circuitdag.cli" or m.startswith("circuitdag.cli.")}
    assert sorted({m for c in cli for m in g.predecessors(c)} - cli) == []


def _fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (this one has imported everything); its stdout."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_circuitdag_is_lazy():
    """``import circuitdag`` imports no torch, TransformerLens or transformers; a public
    name imports its module on first use."""
    out = _fresh("import sys, circuitdag as cd\n"
                 "heavy = ('torch', 'transformer_lens', 'transformers', 'numpy')\n"
                 "print(sorted(m for m in heavy if m in sys.modules))\n"
                 "print(set(cd.__all__) <= set(dir(cd)))\n"
                 "print(cd.Circuit.__module__, 'numpy' in sys.modules)")  # fmt: skip
    assert out.split("\n")[:3] == ["[]", "True", "circuitdag.circuit True"]
    import circuitdag as cd

    assert all(getattr(cd, name) is not None for name in [*cd.__all__, "__version__"])


def test_cd_acdc_stays_the_function():
    """``cd.acdc`` is the function whichever module is imported first: no submodule is
    named ``acdc`` at the top of the package (the search is ``circuitdag.acdc_search``)."""
    import circuitdag as cd
    import circuitdag.acdc_search
    import circuitdag.algorithms.acdc

    assert callable(cd.acdc) and cd.acdc.__module__ == "circuitdag.discovery"
    for first in ("import circuitdag.algorithms.acdc, circuitdag.acdc_search",
                  "from circuitdag import acdc as _f; import circuitdag.algorithms.acdc"):  # fmt: skip
        out = _fresh(f"{first}\nimport circuitdag as cd\nprint(callable(cd.acdc), cd.acdc.__module__)")
        assert out.strip() == "True circuitdag.discovery"
    assert not (PACKAGE / "acdc.py").exists() and not (PACKAGE / "acdc").exists()


def test_modules_and_classes_stay_small() -> None:
    """One concept per module: no module over 500 lines, no class over 300 (issue 22)."""
    big = []
    for module, path in _modules().items():
        tree = _tree(path)
        n_lines = len(path.read_text().splitlines())
        if n_lines > 500:
            big.append(f"{module}: {n_lines} lines")
        big += [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"  # type: ignore[operator]
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300]  # type: ignore[operator]
    assert not big, "split these: " + "; ".join(big)
