"""Imports run one way: no module of lpa's imports itself back through others (function-local imports
count: they may keep start-up light, never hide a loop), and the analysis side never reaches the torch
side. An `ast` walk of every module; nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lpa_core", "lpa_cli", "analyzers")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, anywhere in its body, resolved to the longest known name
    (``from pkg import mod`` counts as an import of ``pkg.mod`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            candidates = subs or [base]
        else:
            continue
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on.add(child)
                work.append((child, iter(sorted(g[child]))))
            elif child in on:
                low[v] = min(low[v], index[child])
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_analysis_side_never_imports_the_torch_side():
    g = graph()
    up = sorted(f"{m} -> {d}" for m, deps in g.items() if m.startswith("analyzers") for d in deps if d.startswith("lpa_cli"))
    assert up == []
    for path in (ROOT / "analyzers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "torch" or n.startswith("torch.") for n in names), path


# The sub-packages from the bottom up (docs/design.md opens with this map). A module may import its
# own layer and those below it, never one above. The first prefix that matches a module names its layer.
LAYERS = [
    ("kernel", ("lpa_core",)),
    ("analysis", ("analyzers",)),
    ("settings", ("lpa_cli.config", "lpa_cli.registry", "lpa_cli.runtime", "lpa_cli.allocator")),
    ("formats", ("lpa_cli.formats",)),
    ("data", ("lpa_cli.data",)),
    ("models", ("lpa_cli.models",)),
    ("training", ("lpa_cli.training",)),
    ("serving", ("lpa_cli.serving",)),
    ("integrations", ("lpa_cli.integrations",)),
    ("workflows", ("lpa_cli.workflows",)),
    ("commands", ("lpa_cli.commands", "lpa_cli.app", "lpa_cli.__main__")),
]
PACKAGE_ROOT = "lpa_cli"  # lpa_cli/__init__.py: the version and the lazy public API, below everything that imports it


def layer_of(module: str) -> int:
    if module == PACKAGE_ROOT:
        return 2
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_imports_never_run_up_a_layer():
    g = graph()
    up = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})"
                for m, deps in g.items() for d in deps if layer_of(d) > layer_of(m))
    assert up == []


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("lpa_cli.formats.checkpoint") < layer_of("lpa_cli.models.open") < layer_of("lpa_cli.commands.train")
    assert layer_of("lpa_core.errors") < layer_of("analyzers.compare") < layer_of("lpa_cli.config")


def test_no_module_over_400_lines_and_no_function_over_80():
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long_modules == [] and long_functions == []
