"""The full-scale ``reproduce cross-architecture`` grid, trained in pieces on whatever machine is at
hand, and reported from whichever runs finished (docs/results.md#cross-architecture).

The whole grid (``--select-weight 0.1,1,10 --select-seeds 1``) did not fit the time one GPU was lent
for; its unfinished cells were then trained here, cell by cell, on a CPU. Every piece names the runs
that ``crossdistill reproduce cross-architecture`` itself would make (same configs, same folders), so
the pieces add up to the grid and the reproduction reads them back.

    # the candidates of the named cells on the choosing seed (and the students alone, every seed)
    python -m crossdistill.lab.scripts.cross_architecture_split choose OUT "ViT → resnet8/OFA" [...] [--workers N]
    # the chosen weight of the named cells on their other seeds (their candidates must have finished)
    python -m crossdistill.lab.scripts.cross_architecture_split rest OUT "resnet20 → ViT/KD" [...] [--workers N]
    # the table from the finished runs only: each cell's seed count, unfinished choices marked
    python -m crossdistill.lab.scripts.cross_architecture_split report OUT

OUT must be the path the teachers were trained under (the students' configs name the teacher
checkpoints through it), e.g. ``runs/xarch`` from the repository root.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Dict, List

from ..reproduce import cross_architecture as ca
from ..reproduce.grid import (Cell, Result, Selection, candidate_runs, choosing_seeds, pick_candidate, plot_results,
                              slug, test_metrics)
from ..reproduce.parallel import chosen_runs, planned_runs, train_runs

SELECT = Selection(factors=(0.1, 1.0, 10.0), seeds=1)


def grid_cells(out: Path) -> Dict[str, Cell]:
    """"row/column" → the cell, exactly as ``reproduce_cross_architecture`` builds it at full scale."""
    s = ca.SCALES["full"]
    return {f"{c.row}/{c.col}": c for c in ca.grid_cells(s, s["seeds"], ca.teacher_dirs(out))}


def _finished(folder: Path) -> Dict | None:
    path = folder / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def collect(out: Path) -> List[Result]:
    """One result per cell from the finished runs: the candidates' validation scores, the choice when
    every candidate finished on the choosing seeds, and the chosen students' test accuracy."""
    results = []
    for cell in grid_cells(out).values():
        runs = candidate_runs(cell, SELECT)
        choosing = choosing_seeds(cell, SELECT, len(runs))
        res = Result(cell.row, cell.col, "acc", chosen_on=len(choosing))
        complete = True
        for label, (_, name) in runs.items():
            done = [s for s in (_finished(out / "runs" / slug(f"{name}__s{seed}")) for seed in choosing) if s]
            complete &= len(done) == len(choosing)
            if done:
                vals = [float(s["last"]["acc"]) for s in done]
                res.validation[label] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, 0)
        if not complete:  # an unfinished choice is reported as such, never made from part of the candidates
            results.append(res)
            continue
        res.selected = pick_candidate(res.validation)
        name = runs[res.selected][1]
        for seed in cell.seeds:
            folder = out / "runs" / slug(f"{name}__s{seed}")
            if _finished(folder):
                res.values.append(float(test_metrics(folder / "student.pt")["acc"]))
                res.seeds.append(seed)
                res.runs.append(str(folder))
        results.append(res)
    return results


def report(out: Path) -> str:
    results = collect(out)
    rows = list(dict.fromkeys(r.row for r in results))
    cols = list(dict.fromkeys(r.col for r in results))
    by = {(r.row, r.col): r for r in results}
    teachers = {t: _finished(out / f"teacher_{t}") for _, t, _, _ in ca.directions()}
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = []
        for col in cols:
            r = by.get((row, col))
            if r is None:
                cells.append("–")
            elif not r.validation:
                cells.append("not run")
            elif not r.values:
                cells.append("choice not finished" if not r.selected else "not finished")
            elif len(r.values) > 1:
                cells.append(f"{100 * r.mean:.2f} ± {100 * r.std:.2f}" + (f" ({r.selected})" if r.selected else ""))
            else:
                cells.append(f"{100 * r.values[0]:.2f} (1 seed" + (f", {r.selected})" if r.selected else ")"))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n\nTop-1 test accuracy (%) on the 10 000 Fashion-MNIST test images, mean ± std over the seeds that " \
        "finished (3 unless a cell says 1). Teachers: " + ", ".join(
            f"{t} {100 * s['last']['acc']:.2f} %" for t, s in teachers.items() if s) + ".\n"
    md += "\nValidation accuracy of every candidate on the choosing seed (seed 0):\n\n| cell | candidate | validation acc |\n|---|---|---|\n"
    with open(out / "selection.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "candidate", "validation_acc", "selected"])
        for r in results:
            for label, (mean, _, _) in r.validation.items():
                w.writerow([r.row, r.col, label, f"{mean:.6f}", int(label == r.selected)])
                if label:
                    md += f"| {r.row} / {r.col} | {label} | {100 * mean:.2f}{' ✓' if label == r.selected else ''} |\n"
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "selected", "n_seeds", "mean", "std", "values", "seeds"])
        for r in results:
            w.writerow([r.row, r.col, r.selected, len(r.values), f"{r.mean:.6f}" if r.values else "",
                        f"{r.std:.6f}" if r.values else "", " ".join(f"{v:.6f}" for v in r.values),
                        " ".join(map(str, r.seeds))])
    s = ca.SCALES["full"]
    longer = [ca.plateau_run(ca.base_config(s, student, s["epochs"]), row, s["seeds"][0], s, out, SELECT)
              for row, _, student, _ in ca.directions()]
    md += ca.plateau_note(results, longer, s, SELECT)
    (out / "results.md").write_text(md)
    done = [r for r in results if r.values]
    plot_results(done, out / "results.png", "Cross-architecture distillation on Fashion-MNIST (full scale: 10 000 "
                 "images, 30 epochs; cells with fewer than 3 seeds show no error bar)", "test accuracy (%)", scale=100.0)
    return md


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["choose", "rest", "report"])
    p.add_argument("out", type=Path)
    p.add_argument("cells", nargs="*", help='"row/column", e.g. "ViT → resnet8/OFA"')
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if args.what == "report":
        print(report(args.out))
        return
    every = grid_cells(args.out)
    unknown = [c for c in args.cells if c not in every]
    if unknown or not args.cells:
        raise SystemExit(f"error: name cells as one of: {', '.join(repr(c) for c in every)}" +
                         (f" (unknown: {unknown})" if unknown else ""))
    cells = [every[c] for c in args.cells]
    runs = planned_runs(cells, args.out, SELECT) if args.what == "choose" else chosen_runs(cells, args.out, SELECT)
    print(f"{args.what}: {len(runs)} runs, {args.workers} at a time", flush=True)
    train_runs(runs, args.workers, lambda line: print(line, flush=True))


if __name__ == "__main__":  # the runs are spawned worker processes: they import this file
    main()
