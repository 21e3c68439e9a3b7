"""Reproductions and demos, run in-process over seeds; tables (Markdown, CSV) and plots (PNG)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional


def reproduce(what: str, quick: bool = False, out: Optional[str] = None, seeds: Optional[int] = None,
              select=None) -> None:
    """``select``: a :class:`~crossdistill.experiments.grid.Selection` (``--select-weight``) or None."""
    tag = ("-quick" if quick else "") + ("-select" if select is not None else "")
    folder = Path(out or f"runs/reproduce/{what}{tag}")
    seed_list = tuple(range(seeds)) if seeds else None
    t0 = time.time()
    if what == "cross-task":
        from .cross_task import reproduce_cross_task as fn
    elif what == "teacher-free":
        from .teacher_free import reproduce_teacher_free as fn
    elif what == "cross-task-regimes":
        from .cross_task_regimes import reproduce_cross_task_regimes as fn
    elif what == "zoo":
        from .zoo import reproduce_zoo as fn
    elif what == "ensemble":
        from .settings import reproduce_ensemble as fn
    elif what == "cross-modal":
        from .settings import reproduce_cross_modal as fn
    else:
        from .quickstart import reproduce_quickstart as fn
    md = fn(folder, quick=quick, seeds=seed_list, **({"select": select} if select is not None else {}))
    print(md)
    print(f"wrote {folder}/results.md, results.csv, results.png in {time.time() - t0:.0f}s")


def demo(out: str = "runs/demo", quick: bool = False) -> None:
    from .quickstart import run_demo

    run_demo(Path(out), quick=quick)
