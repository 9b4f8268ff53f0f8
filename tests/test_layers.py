"""The package's layers, read from the source: imports run one way.

Every import counts, at module level or inside a function (also under ``TYPE_CHECKING``), and
so does ``importlib.import_module`` with a literal name. An import names its target module: ``from
.x import y`` is an edge to ``x.y`` when that is a module, else to ``x``. Importing ``a.b.c``
also runs the packages ``a`` and ``a.b``; that is not counted as an edge (a package's
``__init__`` re-exporting its children would otherwise make every package a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffuseg"

#: The command line: the only modules that may import `diffuseg.commands`.
CLI = ("diffuseg.cli", "diffuseg.__main__", "diffuseg.commands")
#: The library below evaluation, the demo and the command line.
LIBRARY = (
    "diffuseg._lazy",
    "diffuseg.backbone",
    "diffuseg.datasets",
    "diffuseg.devices",
    "diffuseg.dtypes",
    "diffuseg.engine",
    "diffuseg.imageio",
    "diffuseg.inspection",
    "diffuseg.labeling",
    "diffuseg.memory",
    "diffuseg.methods",
    "diffuseg.ops",
    "diffuseg.outputs",
    "diffuseg.plan",
    "diffuseg.segdiffusion",
    "diffuseg.multi",
    "diffuseg.segmenter",
    "diffuseg.segmenter_items",
    "diffuseg.sample",
    "diffuseg.settings",
    "diffuseg.synthetic",
    "diffuseg.types",
    "diffuseg.windowed",
)
#: What the library must not import.
ABOVE_LIBRARY = ("diffuseg.eval", "diffuseg.demo", "diffuseg.commands")
#: The layers, bottom first (README, "The house"): a module imports only its own layer and the
#: ones before it. `diffuseg` itself (the lazy public facade) stands outside them.
LAYERS = (
    (
        "diffuseg._version",
        "diffuseg._lazy",
        "diffuseg.settings",
        "diffuseg.ops",
        "diffuseg.imageio",
        "diffuseg.devices",
        "diffuseg.config_fields",
        "diffuseg.dtypes",
    ),
    ("diffuseg.sample", "diffuseg.types", "diffuseg.outputs"),
    ("diffuseg.backbone",),
    ("diffuseg.datasets", "diffuseg.synthetic"),
    ("diffuseg.labeling",),
    ("diffuseg.plan", "diffuseg.methods", "diffuseg.segdiffusion"),
    ("diffuseg.segmenter_items", "diffuseg.segmenter", "diffuseg.inspection", "diffuseg.memory", "diffuseg.windowed"),
    ("diffuseg.multi",),
    ("diffuseg.engine",),
    ("diffuseg.eval",),
    ("diffuseg.demo", "diffuseg.commands", "diffuseg.cli", "diffuseg.__main__"),
)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) of every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


def _targets(tree: ast.AST, module: str, package: bool, known: dict) -> Iterator[str]:
    """The package's modules that `tree` (the source of `module`) imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                yield f"{name}.{alias.name}" if f"{name}.{alias.name}" in known else name
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.args[0].value


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself excluded)."""
    known = _modules(root)
    graph = {}
    for module, (path, package) in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {t for t in _targets(tree, module, package, known) if t.split(".")[0] == root.name}
        graph[module] = {t for t in targets if t != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _edges(graph: dict[str, set[str]], source, target) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() if source(a) for b in targets if target(b))


def test_only_the_command_line_imports_commands(graph):
    bad = _edges(graph, lambda a: not _within(a, CLI), lambda b: _within(b, ("diffuseg.commands",)))
    assert bad == []


def test_the_library_imports_neither_eval_nor_demo_nor_commands(graph):
    bad = _edges(graph, lambda a: _within(a, LIBRARY), lambda b: _within(b, ABOVE_LIBRARY))
    assert bad == []


def test_data_access_sits_below_evaluation(graph):
    assert "diffuseg.datasets" in graph
    below = ("diffuseg.datasets",)
    above = ("diffuseg.eval", "diffuseg.engine", "diffuseg.labeling", "diffuseg.demo", "diffuseg.commands")
    assert _edges(graph, lambda a: _within(a, below), lambda b: _within(b, above)) == []


def _layer(module: str) -> int | None:
    return next((rank for rank, prefixes in enumerate(LAYERS) if _within(module, prefixes)), None)


def test_every_module_has_a_layer(graph):
    assert sorted(m for m in graph if m != "diffuseg" and _layer(m) is None) == []


def test_each_layer_imports_only_itself_and_the_layers_below(graph):
    bad = [
        f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
        for a, targets in sorted(graph.items())
        if a != "diffuseg"
        for b in sorted(targets)
        if _layer(b) is not None and _layer(b) > _layer(a)
    ]
    assert bad == []


def test_no_two_modules_import_each_other(graph):
    assert circles(graph) == []


def test_the_checks_see_function_level_imports_and_circles(tmp_path):
    """The walk itself: a function-level import, a relative import of a sibling module, and a
    circle of three."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n    return g\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("import importlib\nimportlib.import_module('pkg.sub.a')\n")
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub"] == {"pkg.sub.a"}
    assert circles(graph) == [["pkg.b", "pkg.sub.a", "pkg.sub.c"]]


def _report(root: Path) -> str:
    """The count of each rule's violations in the package at `root` (one line each)."""
    graph = import_graph(root)
    upward = {
        "modules outside the CLI importing diffuseg.commands": _edges(
            graph, lambda a: not _within(a, CLI), lambda b: _within(b, ("diffuseg.commands",))
        ),
        "library imports of eval, demo or commands": _edges(
            graph, lambda a: _within(a, LIBRARY), lambda b: _within(b, ABOVE_LIBRARY)
        ),
        "imports against the layer order": [
            f"{a} -> {b}"
            for a, targets in sorted(graph.items())
            if a != "diffuseg" and _layer(a) is not None
            for b in sorted(targets)
            if _layer(b) is not None and _layer(b) > _layer(a)
        ],
        "circles": [" <-> ".join(c) for c in circles(graph)],
    }
    lines = [f"{root}: {len(graph)} modules, {sum(map(len, graph.values()))} imports"]
    for rule, found in upward.items():
        lines.append(f"{rule}: {len(found)}" + "".join(f"\n    {f}" for f in found))
    return "\n".join(lines)


if __name__ == "__main__":  # python tests/test_layers.py [PACKAGE_DIR]: the counts, e.g. of an older checkout
    import sys

    print(_report(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE))
