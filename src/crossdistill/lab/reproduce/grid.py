"""Run a grid of configs over seeds, in-process, and report mean ± std as Markdown, CSV and PNG.

A grid is a list of :class:`Cell` (a row label, a column label, and a config dict). Runs whose
``summary.json`` already exists are read back, not repeated, so an interrupted reproduction
continues where it stopped.

**Weight selection** (``run_grid(..., select=Selection(...))``, the ``--select-weight`` option of
``crossdistill reproduce``): every cell trains on the training split minus a held-out validation
part (``data.validation``; the test split is not read while choosing). A cell with distillation
terms is trained once per candidate — each term's weight times each factor (``Selection.factors``,
default {0.01, 0.1, 1, 10}), or the cell's own ``candidates`` — over all its seeds; the candidate
with the best validation metric (mean over seeds; a candidate with diverged seeds ranks after
those without) is selected, and only then are *the same trained students* of the selected
candidate scored on the test split with :func:`crossdistill.commands.evaluate.evaluate_checkpoint`.
Cells without terms (no distillation) train once per seed on the same reduced split, so every
column sees the same training data. The tables show the selected weight; ``selection.csv`` lists
every candidate's validation score. With ``Selection.seeds = n`` only the first ``n`` seeds train
every candidate; the others train the selected one alone (on the same reduced split), which makes a
grid of many candidates affordable at the cost of a noisier choice.
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
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...build import build_run
from ...commands import evaluate as evaluation
from ...config import deep_merge, parse_config
from ...engine.trainer import SUMMARY, Trainer
from ...errors import ConfigError, NonFiniteLossError
from ...methods import METHODS, build_method


DEFAULT_FACTORS = (0.01, 0.1, 1.0, 10.0)


@dataclass
class Selection:
    """Choose each cell's weight on a validation split carved from the training data."""

    factors: Sequence[float] = DEFAULT_FACTORS  # candidate multipliers of every term's weight
    validation: Union[int, float] = 0.2         # data.validation: held-out count or fraction
    seeds: Optional[int] = None                 # choose on the first n seeds (None: on all of them)


@dataclass
class Cell:
    row: str
    col: str
    config: Dict[str, Any]
    metric: str = ""
    higher_is_better: bool = True
    seeds: Sequence[int] = (0, 1, 2)
    #: explicit candidates for selection (label → config patch); None: weight factors if the cell
    #: has distillation terms, else the config alone
    candidates: Optional[Dict[str, Dict[str, Any]]] = None


@dataclass
class Result:
    row: str
    col: str
    metric: str
    values: List[float] = field(default_factory=list)
    seconds: float = 0.0
    diverged: int = 0
    seeds: List[int] = field(default_factory=list)  # the seed of each value, for paired differences
    selected: str = ""  # the candidate chosen on validation ("" without selection)
    validation: Dict[str, Tuple[float, float, int]] = field(default_factory=dict)  # label → (mean, std, diverged)
    runs: List[str] = field(default_factory=list)  # the run folder of each value
    chosen_on: int = 0  # how many seeds trained every candidate (0 without selection)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


def train_config(raw: Dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train one config (or read its finished summary) and return the summary."""
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


def run_grid(cells: Sequence[Cell], out: Path, log: Callable[[str], None] = print,
             select: Optional[Selection] = None) -> List[Result]:
    results: List[Result] = []
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for cell in cells:
        t0 = time.time()
        res = _run_cell(cell, out, log) if select is None else _run_cell_selected(cell, out, log, select)
        res.seconds = time.time() - t0
        results.append(res)
    if select is not None:
        write_selection(results, out)
    return results


def _train_seeds(cell: Cell, config: Dict[str, Any], name: str, out: Path, log,
                 seeds: Optional[Sequence[int]] = None) -> Tuple[List[int], List[Dict[str, Any]], int]:
    """Train ``config`` over ``seeds`` (default the cell's): (seeds that finished, their summaries,
    diverged count). Each summary gains ``"folder"``, its run folder."""
    done, summaries, diverged = [], [], 0
    for seed in (cell.seeds if seeds is None else seeds):
        raw = deep_merge(config, {"seed": seed})
        folder = out / "runs" / slug(f"{name}__s{seed}")
        try:
            summaries.append(dict(train_config(raw, folder, log), folder=str(folder)))
            done.append(seed)
        except NonFiniteLossError as e:  # a diverged run is a result too: reported, not hidden
            log(f"  {folder.name}: diverged ({e})")
            diverged += 1
    return done, summaries, diverged


def _run_cell(cell: Cell, out: Path, log) -> Result:
    res = Result(cell.row, cell.col, cell.metric)
    seeds, summaries, res.diverged = _train_seeds(cell, cell.config, f"{cell.row}__{cell.col}", out, log)
    for seed, summary in zip(seeds, summaries):
        res.metric = cell.metric or summary["primary_metric"]
        res.values.append(float(summary["last"][res.metric]))
        res.seeds.append(seed)
        res.runs.append(summary["folder"])
    return res


def weight_candidates(config: Dict[str, Any], factors: Sequence[float]) -> Dict[str, Dict[str, Any]]:
    """Candidate patches: every distillation term's weight (its own, or the method's default β)
    times each factor. A config without terms — or whose terms all sit out main training (AB, FSP
    with ``in_main: false``: their init phase is not weighted) — has the single candidate ``{}``."""
    terms = (config.get("distill") or {}).get("terms") or []
    options = [{k: v for k, v in t.items() if k not in ("method", "weight")} for t in terms]
    if not any(build_method(t["method"], **o).active_in("main") for t, o in zip(terms, options)):
        return {"": {}}
    base = [float(t["weight"]) if t.get("weight") is not None else float(METHODS.get(t["method"]).default_weight)
            for t in terms]
    out: Dict[str, Dict[str, Any]] = {}
    for f in factors:
        weights = [b * f for b in base]
        label = "w=" + ",".join(f"{w:g}" for w in weights)
        out[label] = {"distill": {"terms": [dict(t, weight=w) for t, w in zip(terms, weights)]}}
    return out


def candidate_runs(cell: Cell, select: Selection) -> Dict[str, Tuple[Dict[str, Any], str]]:
    """label → (config, run name prefix) of every candidate of a cell under ``select``."""
    candidates = cell.candidates if cell.candidates is not None else weight_candidates(cell.config, select.factors)
    return {label: (deep_merge(deep_merge(cell.config, patch), {"data": {"validation": select.validation}}),
                    f"{cell.row}__{cell.col}" + (f"__{label}" if label else ""))
            for label, patch in candidates.items()}


def choosing_seeds(cell: Cell, select: Selection, candidates: int) -> Tuple[int, ...]:
    """The seeds that train every candidate (all of a cell's seeds when there is nothing to choose)."""
    return tuple(cell.seeds if select.seeds is None or candidates < 2 else cell.seeds[:select.seeds])


def choose(cell: Cell, out: Path, log, select: Selection) -> Tuple[Result, Dict[str, Tuple[List[int], List[Dict[str, Any]], int]]]:
    """Train (or read back) every candidate on the choosing seeds and pick one on validation: the
    result so far (``selected``, ``validation``) and each candidate's (seeds, summaries, diverged)."""
    runs = candidate_runs(cell, select)
    seeds = choosing_seeds(cell, select, len(runs))
    res = Result(cell.row, cell.col, cell.metric)
    trained: Dict[str, Tuple[List[int], List[Dict[str, Any]], int]] = {}
    for label, (cfg, name) in runs.items():
        trained[label] = _train_seeds(cell, cfg, name, out, log, seeds)
        _, summaries, diverged = trained[label]
        if summaries:
            res.metric = cell.metric or summaries[0]["primary_metric"]
            if any(s.get("eval_split") != "validation" for s in summaries):
                raise ConfigError(f"cell '{cell.row} / {cell.col}' ({label}) was not scored on a validation split")
        vals = [float(s["last"][res.metric]) for s in summaries]
        res.validation[label] = (statistics.fmean(vals) if vals else math.nan,
                                 statistics.stdev(vals) if len(vals) > 1 else 0.0, diverged)
    res.selected = pick_candidate(res.validation, cell.higher_is_better)
    res.chosen_on = len(seeds)
    return res, trained


def _run_cell_selected(cell: Cell, out: Path, log, select: Selection) -> Result:
    res, trained = choose(cell, out, log, select)
    seeds, summaries, res.diverged = trained[res.selected]
    rest = [s for s in cell.seeds if s not in choosing_seeds(cell, select, len(trained))]
    if rest:  # the seeds that did not choose train the selected candidate alone
        cfg, name = candidate_runs(cell, select)[res.selected]
        more_seeds, more, diverged = _train_seeds(cell, cfg, name, out, log, rest)
        seeds, summaries, res.diverged = seeds + more_seeds, summaries + more, res.diverged + diverged
    # only now, and only for the selected candidate, is the test split read
    for seed, summary in zip(seeds, summaries):
        res.values.append(float(test_metrics(Path(summary["student"]), log)[res.metric]))
        res.seeds.append(seed)
        res.runs.append(summary["folder"])
    return res


def pick_candidate(validation: Dict[str, Tuple[float, float, int]], higher_is_better: bool = True) -> str:
    """The label with the fewest diverged seeds, then the best mean validation metric (first on ties)."""
    def key(label: str):
        mean, _, diverged = validation[label]
        score = -math.inf if math.isnan(mean) else (mean if higher_is_better else -mean)
        return (-diverged, score)

    return max(validation, key=key)  # max keeps the first of equal keys


def test_metrics(student: Path, log=print) -> Dict[str, float]:
    """The test-split metrics of an exported student (cached next to it as ``test_metrics.json``)."""

    cache = student.parent / "test_metrics.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = evaluation.evaluate_checkpoint(str(student))  # by module: tests replace it
    cache.write_text(json.dumps(result, indent=2))
    return result


def write_selection(results: Sequence[Result], out: Path) -> None:
    """``selection.csv``: every candidate's validation score, and which one was selected."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "selection.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "candidate", "validation_mean", "validation_std", "diverged", "selected"])
        for r in results:
            for label, (mean, std, diverged) in r.validation.items():
                w.writerow([r.row, r.col, label, f"{mean:.6f}", f"{std:.6f}", diverged, int(label == r.selected)])


def eval_curve(run: Path) -> List[Tuple[int, float]]:
    """(epoch, accuracy) of every evaluation a run logged (on the test split, or on the validation
    split when it has one)."""
    log = run / "metrics.jsonl"
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [(int(r["epoch"]), float(r["acc"])) for r in records if "acc" in r and "loss" not in r]


def last_quarter_gain(curve: Sequence[Tuple[int, float]]) -> float:
    """Accuracy gained over the last quarter of the epochs (NaN with fewer than 2 evaluations): about
    0 at a plateau."""
    if len(curve) < 2:
        return float("nan")
    last_epoch = curve[-1][0]
    before = [a for e, a in curve if e <= last_epoch - max(1, last_epoch // 4)]
    return curve[-1][1] - before[-1] if before else float("nan")


def slug(s: str) -> str:
    """A folder name from a row or column label (letters, digits, "-_." kept; anything else becomes "-")."""
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
        w.writerow(["row", "column", "metric", "n_seeds", "mean", "std", "values", "diverged", "seconds",
                    "selected", "validation_mean"])
        for r in results:
            val = r.validation.get(r.selected, (math.nan,))[0] if r.validation else math.nan
            w.writerow([r.row, r.col, r.metric, len(r.values), f"{r.mean:.6f}", f"{r.std:.6f}",
                        " ".join(f"{v:.6f}" for v in r.values), r.diverged, f"{r.seconds:.1f}",
                        r.selected, "" if math.isnan(val) else f"{val:.6f}"])
    lines = [f"### {title}", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        cells = []
        for col in cols:
            r = by.get((row, col))
            digits = 3 if r and r.values and abs(r.mean * scale) < 10 else 2
            text = f"{r.mean * scale:.{digits}f} ± {r.std * scale:.{digits}f}{unit}" if r and r.values else "–"
            if r and r.selected:
                text += f" ({r.selected})"
            if r and r.diverged:
                text += f" ({r.diverged} diverged)"
            cells.append(text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    metrics = sorted({r.metric for r in results})
    n = max((len(r.values) for r in results), default=0)
    lines += ["", f"Metric: {', '.join(metrics)} (last epoch), mean ± std over {n} seeds."]
    if any(r.validation for r in results):
        chose = max((r.chosen_on for r in results if len(r.validation) > 1), default=0)
        over = f"on the first {chose} seed(s), whose other seeds then trained the selected weight alone" \
            if 0 < chose < n else "over seeds"
        lines += ["Weights selected on a validation split held out from the training data (w=… in each cell: "
                  f"the selected weight(s), by the mean validation metric {over}); every column trained "
                  "on the same reduced training split; the test metric is of the selected weight's students "
                  "(`selection.csv` lists every candidate)."]
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
    width = max(5.5, 3.2 * len(rows))
    # constrained layout makes room for the (wrapped) suptitle and the rotated tick labels
    fig, axes = plt.subplots(1, len(rows), figsize=(width, 3.9), squeeze=False, layout="constrained")
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
    # wrapped to the figure's width (≈ 13 characters per inch at 10 pt), so a long title is never cut
    wrapped = textwrap.fill(title, max(30, int(width * 13)))
    fig.suptitle(wrapped, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
