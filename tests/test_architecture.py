"""The house rules of docs/ARCHITECTURE.md: no import cycles, top-level imports, file and library sizes."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("din_jax", "data_prep")
# Imported inside functions on purpose: optional packages (din_jax.plots needs matplotlib).
OPTIONAL = ("tqdm", "tensorboardX", "matplotlib", "pyarrow", "din_jax.plots")


def _modules(package):
    """``{module name: path}`` of every Python file under ``package``."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path):
    """``(module level, inside functions)``: the modules each import statement names, and what it takes."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    in_functions = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.Lambda))
        for node in ast.walk(function)
    }
    top, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = os.path.relpath(os.path.dirname(path), ROOT).split(os.sep)
                module = ".".join(base[: len(base) - node.level + 1] + ([module] if module else []))
            names = [module] + ["%s.%s" % (module, alias.name) for alias in node.names]
        else:
            continue
        (inner if id(node) in in_functions else top).update(names)
    return top, inner


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    modules = _modules(package)
    graph = {name: sorted(n for n in _imports(path)[0] if n in modules and n != name) for name, path in modules.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            raise AssertionError("import cycle: %s" % " -> ".join(trail[trail.index(name) :] + [name]))
        state[name] = "open"
        for other in graph[name]:
            visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_inside_functions_are_only_optional_packages(package):
    inner = {
        name: sorted(n for n in _imports(path)[1] if not n.startswith(OPTIONAL) and n != "din_jax")
        for name, path in _modules(package).items()
    }
    assert {name: found for name, found in inner.items() if found} == {}


def test_file_and_library_sizes():
    lines = {path: sum(1 for _ in open(path, encoding="utf-8")) for path in _modules("din_jax").values()}
    assert {os.path.relpath(p, ROOT): n for p, n in lines.items() if n > 500} == {}
    # Raised from 8,000 for packed batching (din_jax/history.py and the packed paths), to 9,000 for the step's NaN
    # guard, early stopping and code versions, then to 9,500 for dien, bst and mha (models/gru.py, dien.py, bst.py,
    # about 400 lines): deliberate steps.
    assert sum(lines.values()) <= 9500
    for name in ("train.py", "infer.py", "ablate.py", "benchmark.py", "plot.py"):
        path = os.path.join(ROOT, "experiments", name)
        assert sum(1 for _ in open(path, encoding="utf-8")) < 150, name
