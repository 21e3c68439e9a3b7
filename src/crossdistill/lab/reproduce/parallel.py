"""Train a grid's runs side by side: one single-thread process per core.

Small CPU runs (the demo's 32 px segmentation students) use one core poorly when given two threads
— and on a loaded machine two spinning intra-op threads per process cost far more than they give
(measured in docs/results.md#demo) — so on a 2-core machine two 1-thread runs at a time finish the
grid sooner than one 2-thread run after another. :func:`planned_runs` lists exactly the (config,
folder) pairs that :func:`~crossdistill.lab.reproduce.grid.run_grid` will train; :func:`train_runs`
trains them in worker processes; ``run_grid`` then reads the finished summaries back (each folder
holds a finished run of the same config) and only scores and tabulates.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...config import deep_merge
from ...errors import NonFiniteLossError
from .grid import Cell, Selection, candidate_runs, choose, choosing_seeds, slug, train_config

Run = Tuple[Dict[str, Any], Path]


def planned_runs(cells: Sequence[Cell], out: Path, select: Optional[Selection] = None) -> List[Run]:
    """The (config, run folder) of every training run ``run_grid(cells, out, select=select)`` makes
    before it chooses (with ``select.seeds``, the selected candidates' other seeds come after: see
    :func:`chosen_runs`), named and configured as it names and configures them."""
    runs: List[Run] = []
    for cell in cells:
        if select is None:
            variants, seeds = [(cell.config, f"{cell.row}__{cell.col}")], cell.seeds
        else:
            candidates = candidate_runs(cell, select)
            variants, seeds = list(candidates.values()), choosing_seeds(cell, select, len(candidates))
        for config, name in variants:
            for seed in seeds:
                runs.append((deep_merge(config, {"seed": seed}), out / "runs" / slug(f"{name}__s{seed}")))
    return runs


def chosen_runs(cells: Sequence[Cell], out: Path, select: Selection, log: Callable[[str], None] = print) -> List[Run]:
    """With ``select.seeds``: once :func:`planned_runs` are trained, the selected candidate of every
    cell on its remaining seeds (the choice read back from the finished validation runs)."""
    runs: List[Run] = []
    for cell in cells:
        candidates = candidate_runs(cell, select)
        choosing = choosing_seeds(cell, select, len(candidates))
        rest = [s for s in cell.seeds if s not in choosing]
        if rest:
            config, name = candidates[choose(cell, out, log, select)[0].selected]
            runs += [(deep_merge(config, {"seed": seed}), out / "runs" / slug(f"{name}__s{seed}")) for seed in rest]
    return runs


def default_workers() -> int:
    """One worker per core this process may use (at most 4: the demo has four runs)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _train_one(config: Dict[str, Any], folder: str, then: Optional[Callable[[Path], Any]] = None) -> Tuple[str, str, float]:
    """In a worker: one thread, train (or read back) one run, then ``then(folder)`` (e.g. score it);
    returns (folder, metric line, seconds)."""
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        summary = train_config(config, Path(folder), log=lambda *_: None)
    except NonFiniteLossError:  # a result too: run_grid meets it again and reports it as diverged
        return folder, "diverged", time.time() - t0
    if then is not None:
        then(Path(folder))
    metric = summary["primary_metric"]
    return folder, f"{metric}={summary['last'][metric]:.4f}", time.time() - t0


def train_runs(runs: Sequence[Run], workers: int, log: Callable[[str], None] = print,
               then: Optional[Callable[[Path], Any]] = None) -> None:
    """Train ``runs`` in ``workers`` single-thread processes, each followed by ``then(folder)`` in its
    worker (a picklable, module-level callable; e.g. a representation probe whose result the caller
    reads back); one line per finished run through ``log`` when stdout is not a terminal, a bar over
    the runs when it is."""
    bar = None
    if sys.stdout.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="runs", unit="run", dynamic_ncols=True)
    t0 = time.time()
    # spawn: a fresh interpreter per worker (no forked torch thread pools)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train_one, config, str(folder), then) for config, folder in runs]
        for done, future in enumerate(as_completed(futures), 1):
            folder, metric, seconds = future.result()
            line = f"  run {done}/{len(runs)} {Path(folder).name}: {metric} ({seconds:.0f}s, {time.time() - t0:.0f}s in all)"
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{Path(folder).name}: {metric}")
            else:
                log(line)
    if bar is not None:
        bar.close()


def train_side_by_side(cells: Sequence[Cell], out: Path, log: Callable[[str], None] = print,
                       select: Optional[Selection] = None, workers: Optional[int] = None, what: str = "grid",
                       extra: Sequence[Run] = ()) -> None:
    """Train every run that ``run_grid(cells, out, select=select)`` would train, ``workers`` at a time in
    single-thread processes (default one per core), so that ``run_grid`` afterwards only reads them back,
    scores and tabulates; ``extra`` runs (e.g. a longer plateau check) go first in the same pool. With
    one worker it does nothing (``run_grid`` and the caller train them themselves)."""
    workers = workers or default_workers()
    if workers > 1:
        runs = list(extra) + planned_runs(cells, out, select)
        log(f"{what}: {len(runs)} runs, {workers} at a time (one thread each), into {out}/runs/")
        train_runs(runs, workers, log)
        if select is not None and select.seeds is not None:
            runs = chosen_runs(cells, out, select, log)
            log(f"{what}: the chosen weights' other seeds, {len(runs)} runs")
            train_runs(runs, workers, log)
