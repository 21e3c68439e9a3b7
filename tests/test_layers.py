"""The package imports downward only: no import circle, no import from a lower layer to a higher
one, and no import hidden inside a function except the listed ones (each with its reason).

Every module under ``src/crossdistill`` is parsed with ``ast`` (nothing is imported); every
in-package import, relative or absolute, at module level or inside a function, is an arrow of the
module graph. The layer table below is the one place that says which layer a module is in
(``docs/architecture.md`` explains it); a module takes the layer of its longest matching prefix.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "crossdistill"
PKG = "crossdistill"

#: layer (low → high) → module prefixes (relative to ``crossdistill``); a module may import its own
#: layer or any lower one
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    ("foundation", ("errors", "registry", "options", "phases", "matmul")),
    ("runtime", ("engine.defaults", "engine.device", "engine.distributed", "engine.checkpoint", "engine.sampler", "engine.rng")),
    ("parts", ("models", "data", "tasks", "views", "taps", "tokens", "teacher_runtime", "sides", "precision", "checks")),
    ("pieces", ("losses", "projectors")),
    ("methods", ("methods",)),
    ("config", ("config",)),
    ("distiller", ("distiller", "terms")),
    ("engine", ("engine",)),
    ("build", ("build", "teacher_cache")),
    ("commands", ("commands", "catalog")),
    ("cli", ("cli",)),
    ("lab", ("lab",)),
    ("package", ("",)),  # crossdistill/__init__.py: the public names
]

#: third-party modules that may be imported inside a function: optional, or heavy and needed by one
#: rarely used feature (so that importing the library stays light)
LOCAL_THIRD_PARTY = {
    "timm": "optional dependency (the timm adapter)",
    "matplotlib": "plots of the lab's reproductions only",
    "scipy": "NYUv2's .mat reader and the lab's rank correlation only",
    "h5py": "NYUv2's .h5 files only",
    "PIL": "image folders only",
    "torch.utils.tensorboard": "TensorBoard logging, off unless asked (and slow to import)",
    "tqdm": "the progress bar, only on a terminal",
    "transformers": "optional dependency",
    "safetensors": "optional dependency (.safetensors weights; the hf extra)",
}

#: in-package imports that may sit inside a function, each with its reason
LOCAL_IN_PACKAGE: Dict[Tuple[str, str], str] = {}


def _modules() -> Dict[str, Tuple[Path, bool]]:
    mods = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def _targets(mod: str, is_pkg: bool, node: ast.AST, mods: Iterable[str]) -> List[str]:
    """The in-package modules an import statement reads (the deepest existing module of each name)."""
    mods = set(mods)
    names: List[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name == PKG or a.name.startswith(PKG + ".")]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        elif node.module and (node.module == PKG or node.module.startswith(PKG + ".")):
            prefix = node.module
        else:
            return []
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
    out = []
    for n in names:
        while n not in mods and "." in n:
            n = n.rsplit(".", 1)[0]
        out.append(n)
    return out


def _third_party(node: ast.AST) -> List[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if not a.name.startswith(PKG)]
    if isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith(PKG):
        return [node.module or ""]
    return []


def import_graph(sources: Dict[str, Tuple[str, bool]]):
    """``(edges, local)`` of modules given as ``name → (source text, is_package)``: edges
    ``{importer: {imported}}``; local: ``(importer, imported, line)`` of imports inside functions
    (in-package names, and third-party ones prefixed ``ext:``)."""
    edges: Dict[str, Set[str]] = {m: set() for m in sources}
    local: List[Tuple[str, str, int]] = []

    def visit(mod: str, is_pkg: bool, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(mod, is_pkg, child, sources):
                    if target != mod:
                        edges[mod].add(target)
                    if in_function:
                        local.append((mod, target, child.lineno))
                if in_function:
                    local.extend((mod, "ext:" + name, child.lineno) for name in _third_party(child))
            visit(mod, is_pkg, child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.Lambda)))

    for mod, (text, is_pkg) in sources.items():
        visit(mod, is_pkg, ast.parse(text), False)
    return edges, local


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def layer_of(module: str) -> int:
    name = module[len(PKG) + 1:] if module.startswith(PKG + ".") else ""
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".") or p == "") and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def upward(edges: Dict[str, Set[str]]) -> List[str]:
    return sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                  for a, bs in edges.items() for b in bs if layer_of(b) > layer_of(a))


def bad_local(local: List[Tuple[str, str, int]]) -> List[str]:
    bad = []
    for mod, target, line in local:
        if target.startswith("ext:"):
            name = target[4:]
            if not any(name == p or name.startswith(p + ".") for p in LOCAL_THIRD_PARTY):
                bad.append(f"{mod}:{line} imports {name} inside a function")
        elif (mod, target) not in LOCAL_IN_PACKAGE:
            bad.append(f"{mod}:{line} imports {target} inside a function")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph({m: (f.read_text(), is_pkg) for m, (f, is_pkg) in _modules().items()})


def test_no_import_circle(graph):
    assert cycles(graph[0]) == []


def test_every_import_goes_down(graph):
    for module in graph[0]:
        layer_of(module)  # every module has a layer
    assert upward(graph[0]) == []


def test_imports_inside_functions_are_only_the_listed_ones(graph):
    assert bad_local(graph[1]) == []
    used = {(m, t) for m, t, _ in graph[1]}
    assert set(LOCAL_IN_PACKAGE) <= used, "a listed exception is no longer needed: remove it"


def test_the_library_never_imports_the_lab(graph):
    lab = f"{PKG}.lab"
    assert [a for a, bs in graph[0].items() if not a.startswith(lab) and any(b.startswith(lab) for b in bs)] == []


def test_the_checks_catch_what_they_should():
    """A synthetic package with an upward import, a circle and a hidden import: each is found."""
    sources = {
        "crossdistill": ("", True),
        "crossdistill.errors": ("from .methods import base\n", False),           # foundation → methods: up
        "crossdistill.methods": ("", True),
        "crossdistill.methods.base": ("from ..errors import X\n", False),         # closes a circle
        "crossdistill.taps": ("def f():\n    from crossdistill import errors\n    import numpy\n", False),
    }
    edges, local = import_graph(sources)
    assert cycles(edges) == [["crossdistill.errors", "crossdistill.methods.base"]]
    assert upward(edges) == ["crossdistill.errors (foundation) imports crossdistill.methods.base (methods)"]
    assert bad_local(local) == ["crossdistill.taps:2 imports crossdistill.errors inside a function",
                                "crossdistill.taps:3 imports numpy inside a function"]
