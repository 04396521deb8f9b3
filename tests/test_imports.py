"""The package's import structure: no import cycle between its modules (function-level imports
included, as they hide cycles rather than remove them), and ``import detr_panoptic_d2`` pulls in
no data generator but the embedded toy set's."""

import ast
import os
import subprocess
import sys

from tiny_toy import REPO

PACKAGES = ("detr_panoptic_d2", "detr_panoptic_runtime")


def _modules():
    for package in PACKAGES:
        for d, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    is_package = f == "__init__.py"
                    yield name.removesuffix(".__init__"), path, is_package


def _import_graph():
    """{module: set of the package's modules it imports}, an import of a package counted as one
    of its ``__init__``, ``from pkg import name`` also as one of ``pkg.name`` when that is a
    module."""
    modules = {name: (path, is_pkg) for name, path, is_pkg in _modules()}
    graph = {}
    for name, (path, is_pkg) in modules.items():
        base = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    source = f"{parent}.{node.module}" if node.module else parent
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 40
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how packages are built, and a
            # submodule importing a sibling through the package is not a cycle of the modules
            if nxt == node.rpartition(".")[0] or node == nxt.rpartition(".")[0]:
                continue
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_import_pulls_in_no_test_fixture():
    code = (
        "import sys, detr_panoptic_d2; "
        "print(sorted(m for m in sys.modules if m.startswith(('detr_panoptic', 'dataset_layouts')) "
        "and ('layout' in m or m.endswith(('scenes', 'toy_dataset')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert eval(out.strip().splitlines()[-1]) == [
        "detr_panoptic_d2.data.scenes",
        "detr_panoptic_d2.data.toy_dataset",
    ]
