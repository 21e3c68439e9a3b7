"""Run a grid of configs over seeds, in-process, and report mean ± std as Markdown, CSV and PNG.

A grid is a list of :class:`Cell` (a row label, a column label, and a config dict). Runs whose
``summary.json`` already exists are read back, not repeated, so an interrupted reproduction
continues where it stopped.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch

from ..config import deep_merge, parse_config
from ..errors import ConfigError, NonFiniteLossError


@dataclass
class Cell:
    row: str
    col: str
    config: Dict[str, Any]
    metric: str = ""
    higher_is_better: bool = True
    seeds: Sequence[int] = (0, 1, 2)


@dataclass
class Result:
    row: str
    col: str
    metric: str
    values: List[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def train_config(raw: Dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train one config (or read its finished summary) and return the summary."""
    from ..build import build_run
    from ..engine.trainer import SUMMARY, Trainer

    summary_path = out_dir / SUMMARY
    stamp = out_dir / "grid_config.json"  # what this folder's run was asked to be
    wanted = json.dumps(raw, sort_keys=True, default=str)
    if stamp.exists() and stamp.read_text() != wanted:
        raise ConfigError(f"'{out_dir}' holds a run of a different config (the grid changed since); "
                          "use another --out folder or delete that one")
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(wanted)
    raw = deep_merge(raw, {"output_dir": str(out_dir)})
    raw.setdefault("train", {})["progress"] = False
    cfg = parse_config(raw)
    t0 = time.time()
    resume = (out_dir / "checkpoint.pt").exists()
    summary = Trainer(build_run(cfg), resume=resume).fit()
    log(f"  {out_dir.name}: {summary['primary_metric']}={summary['last'][summary['primary_metric']]:.4f} "
        f"({time.time() - t0:.0f}s)")
    return summary


def run_grid(cells: Sequence[Cell], out: Path, log: Callable[[str], None] = print) -> List[Result]:
    results: List[Result] = []
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for cell in cells:
        res = Result(cell.row, cell.col, cell.metric)
        t0 = time.time()
        for seed in cell.seeds:
            raw = deep_merge(cell.config, {"seed": seed})
            folder = out / "runs" / _slug(f"{cell.row}__{cell.col}__s{seed}")
            try:
                summary = train_config(raw, folder, log)
            except NonFiniteLossError as e:  # a diverged run is a result too: reported, not hidden
                log(f"  {folder.name}: diverged ({e})")
                res.diverged += 1
                continue
            metric = cell.metric or summary["primary_metric"]
            res.metric = metric
            res.values.append(float(summary["last"][metric]))
        res.seconds = time.time() - t0
        results.append(res)
    return results


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in s)


def write_tables(results: Sequence[Result], out: Path, title: str, scale: float = 1.0, unit: str = "",
                 transpose: bool = False) -> str:
    """Markdown + CSV tables (rows × columns, mean ± std over seeds; ``transpose`` swaps them in the
    Markdown, for grids with many columns). Returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    rows = list(dict.fromkeys(r.row for r in results))
    cols = list(dict.fromkeys(r.col for r in results))
    by = {(r.row, r.col): r for r in results}
    if transpose:
        rows, cols = cols, rows
        by = {(c, r): v for (r, c), v in by.items()}
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "metric", "n_seeds", "mean", "std", "values", "diverged", "seconds"])
        for r in results:
            w.writerow([r.row, r.col, r.metric, len(r.values), f"{r.mean:.6f}", f"{r.std:.6f}",
                        " ".join(f"{v:.6f}" for v in r.values), r.diverged, f"{r.seconds:.1f}"])
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for col in cols:
            r = by.get((row, col))
            digits = 3 if r and r.values and abs(r.mean * scale) < 10 else 2
            text = f"{r.mean * scale:.{digits}f} ± {r.std * scale:.{digits}f}{unit}" if r and r.values else "–"
            if r and r.diverged:
                text += f" ({r.diverged} diverged)"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    metrics = sorted({r.metric for r in results})
    n = max((len(r.values) for r in results), default=0)
    lines += ["", f"Metric: {', '.join(metrics)} (last epoch), mean ± std over {n} seeds."]
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    return md


def plot_results(results: Sequence[Result], path: Path, title: str, ylabel: str, scale: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r.row for r in results))
    cols = list(dict.fromkeys(r.col for r in results))
    by = {(r.row, r.col): r for r in results}
    fig, axes = plt.subplots(1, len(rows), figsize=(max(4.0, 3.2 * len(rows)), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        xs = [c for c in cols if (row, c) in by]
        means = [by[(row, c)].mean * scale for c in xs]
        stds = [by[(row, c)].std * scale for c in xs]
        ax.bar(range(len(xs)), means, yerr=stds, capsize=3, color=[f"C{i}" for i in range(len(xs))])
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=30, ha="right", fontsize=8)
        ax.set_title(textwrap.fill(row, 34), fontsize=8)
        lo = min(m - s for m, s in zip(means, stds)) if means else 0
        hi = max(m + s for m, s in zip(means, stds)) if means else 1
        pad = (hi - lo) * 0.3 + 1e-6
        ax.set_ylim(lo - pad, hi + pad)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
