"""Reproductions and demos, run in-process over seeds; tables (Markdown, CSV) and plots (PNG)."""
from __future__ import annotations

import importlib
import inspect
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

from ...errors import ConfigError
from .quickstart import run_demo

#: ``crossdistill reproduce <name>``: name → (module of this package, function); imported when run
REPRODUCTIONS: Dict[str, Tuple[str, str]] = {
    "quickstart": ("quickstart", "reproduce_quickstart"),
    "cross-task": ("cross_task", "reproduce_cross_task"),
    "cross-task-regimes": ("cross_task_regimes", "reproduce_cross_task_regimes"),
    "teacher-free": ("teacher_free", "reproduce_teacher_free"),
    "zoo": ("zoo", "reproduce_zoo"),
    "ensemble": ("settings", "reproduce_ensemble"),
    "cross-modal": ("settings", "reproduce_cross_modal"),
    "teacher-cache": ("teacher_cache", "reproduce_teacher_cache"),
    "dpk-teacher-size": ("dpk", "reproduce_dpk_teacher_size"),
    "simreg": ("simreg", "reproduce_simreg"),
    "cross-architecture": ("cross_architecture", "reproduce_cross_architecture"),
}


def reproduce(what: str, quick: bool = False, out: Optional[str] = None, seeds: Optional[int] = None,
              select=None, workers: Optional[int] = None) -> None:
    """``select``: a :class:`~crossdistill.lab.reproduce.grid.Selection` (``--select-weight``) or None;
    ``workers``: runs trained side by side (``--workers``), for the reproductions that train so."""
    tag = ("-quick" if quick else "") + ("-select" if select is not None else "")
    folder = Path(out or f"runs/reproduce/{what}{tag}")
    seed_list = tuple(range(seeds)) if seeds else None
    t0 = time.time()
    module, name = REPRODUCTIONS[what]
    fn = getattr(importlib.import_module(f".{module}", __name__), name)
    if select is not None and "select" not in inspect.signature(fn).parameters:
        raise ConfigError(f"reproduce {what} takes no --select-weight (it has no loss weight to select, or its scales "
                          f"choose their baselines' weights on a validation split themselves); it works with: "
                          f"{_taking('select')}")
    if workers is not None and "workers" not in inspect.signature(fn).parameters:
        raise ConfigError(f"reproduce {what} takes no --workers (it trains one run at a time); it works with: "
                          f"{_taking('workers')}")
    extra = {"select": select} if select is not None else {}
    md = fn(folder, quick=quick, seeds=seed_list, **extra, **({"workers": workers} if workers is not None else {}))
    print(md)
    print(f"wrote {folder}/results.md, results.csv, results.png in {time.time() - t0:.0f}s")


def _taking(parameter: str) -> str:
    """The reproductions whose function takes ``parameter``, comma-separated."""
    return ", ".join(n for n, (m, f) in REPRODUCTIONS.items()
                     if parameter in inspect.signature(getattr(importlib.import_module(f".{m}", __name__), f)).parameters)


def demo(out: str = "runs/demo", quick: bool = False) -> None:
    run_demo(Path(out), quick=quick)
