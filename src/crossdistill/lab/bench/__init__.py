"""``crossdistill bench NAME [key=value ...] [--quick]``: speed and memory, as ratios measured in one run.

One file per benchmark in this package; a module ``bench/<name>.py`` *is* the benchmark ``<name>``
(``common.py``, the shared code, and files starting with ``_`` are not benchmarks). Each module defines

- ``DEFAULTS``: its options and their defaults (``out`` is where the JSON goes),
- ``QUICK``: the options ``--quick`` changes (fewer steps: a smoke test, not a measurement),
- ``CHOICES`` (optional): the allowed values of text options,
- ``run(options, print_fn) -> dict``: measure, print a table, write the JSON, return the result.

The shared timer, option parser and memory probes are in :mod:`crossdistill.lab.bench.common`.
``crossdistill bench all`` runs every benchmark; each gets the given options it knows (an option
that no benchmark knows is an error).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, List, Sequence

from ...errors import ConfigError
from .common import parse_overrides, resolve_options

__all__ = ["names", "load", "run_bench", "parse_overrides"]

#: modules of this package that are shared code, not benchmarks
SHARED = ("common",)


def names() -> List[str]:
    """The benchmarks, from the files of this package (nothing is imported to list them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name not in SHARED)


def load(name: str):
    if name not in names():
        raise ConfigError(f"unknown benchmark '{name}': valid choices: {', '.join(names() + ['all'])}")
    return importlib.import_module(f"{__name__}.{name}")


def options(name: str, given: Dict[str, Any], quick: bool = False) -> Dict[str, Any]:
    mod = load(name)
    return resolve_options(name, mod.DEFAULTS, given, getattr(mod, "QUICK", {}), quick, getattr(mod, "CHOICES", {}))


def run_bench(what: str, overrides: Sequence[str], quick: bool = False,
              print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    """Run one benchmark (or ``all``) with ``key=value`` overrides; returns ``{name: result}``."""
    given = parse_overrides(overrides)
    todo = names() if what == "all" else [what]
    mods = {name: load(name) for name in todo}
    if what == "all":
        known = {k for m in mods.values() for k in m.DEFAULTS}
        unknown = [k for k in given if k not in known]
        if unknown:
            resolve_options("all", {k: None for k in known}, {unknown[0]: None})  # raises with a hint
    results: Dict[str, Any] = {}
    for name, mod in mods.items():
        mine = {k: v for k, v in given.items() if k in mod.DEFAULTS} if what == "all" else given
        if what == "all" and "out" in mine:
            mine.pop("out")  # one path cannot hold every benchmark's JSON: each keeps its default
        results[name] = mod.run(options(name, mine, quick), print_fn)
    return results
