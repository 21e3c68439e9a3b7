"""``crossdistill reproduce teacher-free``: the teacher-free regulariser on classification.

The Learning to Project abstract claims up to +8.57 % (v1) / +2.3 % (v2) on ImageNet from a
teacher-free regulariser derived from its loss decomposition. This compares, on Fashion-MNIST
(real, offline) and the built-in ``shapes``, for ``resnet8`` and ``resnet20`` students:

- plain training (cross-entropy alone);
- label smoothing (``task_options.label_smoothing``; ε selected from {0.05, 0.1, 0.2}) — the
  standard regulariser a user would try first;
- ``spectral`` of each ``kind`` (``tail_energy``, ``tail_ratio``: ``k_frac`` and weight selected
  jointly; ``energy``: weight selected) on the last stage's feature map.

Every candidate trains on the training split minus a held-out validation part and is chosen by its
mean validation accuracy over seeds; the selected candidate's students are then scored on the test
split (``experiments.grid``). Runs are long enough to plateau (the report checks the validation
curves of the plain runs).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .grid import Cell, Selection, plot_results, run_grid, write_tables

SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(datasets=("shapes",), students=("resnet8",), epochs={"shapes": 6, "fashion_mnist": 4},
                  shapes_size=1200, test_size=1000, fmnist_subset=1200, validation=200, seeds=(0, 1, 2),
                  ls=(0.1,), k_fracs={"tail_energy": (0.5,), "tail_ratio": (0.5,)},
                  weights={"tail_energy": (0.1,), "tail_ratio": (0.1,), "energy": (0.01,)}),
    # small data (1 000 training images) trained long (~470 steps): the regime where a regulariser has
    # something to do, and what a shared 2-core CPU affords for 4 settings × 11 candidates × 3 seeds
    "full": dict(datasets=("fashion_mnist", "shapes"), students=("resnet8", "resnet20"),
                 epochs={"shapes": 30, "fashion_mnist": 30},
                 shapes_size=1200, test_size=5000, fmnist_subset=1200, validation=200, seeds=(0, 1, 2),
                 ls=(0.1, 0.2), k_fracs={"tail_energy": (0.25, 0.5), "tail_ratio": (0.5,)},
                 weights={"tail_energy": (0.1, 1.0), "tail_ratio": (0.1, 1.0), "energy": (0.01, 0.1)}),
}


def base_config(dataset: str, student: str, s: Dict[str, Any]) -> Dict[str, Any]:
    if dataset == "fashion_mnist":
        data = {"name": "fashion_mnist", "augment": "crop_flip", "options": {"subset": s["fmnist_subset"],
                                                                    "test_subset": s["test_size"]}}
    else:  # `validation` images are held out of train_size, so both datasets train on the same count
        data = {"name": "shapes", "augment": "crop_flip",
                "options": {"num_classes": 10, "image_size": 32, "train_size": s["shapes_size"],
                                                                  "test_size": s["test_size"]}}
    epochs = s["epochs"][dataset]
    return {"task": "classification", "data": dict(data, batch_size=64), "student": {"name": student},
            "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
                      "schedule": {"name": "cosine"}, "progress": False, "precision": "auto",
                      "eval_every": max(1, epochs // 6), "checkpoint_every": epochs}}


def columns(s: Dict[str, Any]) -> Dict[str, Optional[Dict[str, Dict[str, Any]]]]:
    """column → candidates (label → config patch); every column is chosen on validation."""
    cols: Dict[str, Optional[Dict[str, Dict[str, Any]]]] = {"plain": {"": {}}}
    cols["label smoothing"] = {f"ε={e:g}": {"task_options": {"label_smoothing": e}} for e in s["ls"]}
    for kind, weights in s["weights"].items():
        k_fracs = s["k_fracs"].get(kind, (None,))
        cands = {}
        for k in k_fracs:
            for w in weights:
                term = {"method": "spectral", "kind": kind, "weight": w, **({"k_frac": k} if k is not None else {})}
                label = (f"k={k:g}," if k is not None else "") + f"w={w:g}"
                cands[label] = {"distill": {"terms": [term]}}
        cols[f"spectral: {kind}"] = cands
    return cols


def cells(s: Dict[str, Any], seeds: Sequence[int]) -> List[Cell]:
    grid = []
    for student in s["students"]:  # the cheaper student first on every dataset
        for dataset in s["datasets"]:
            base = base_config(dataset, student, s)
            row = f"{dataset} · {student}"
            for col, cands in columns(s).items():
                grid.append(Cell(row, col, base, "acc", True, seeds, candidates=cands))
    return grid


def plateau_rows(results) -> List[str]:
    out = []
    for r in results:
        if r.col != "plain":
            continue
        gains = []
        for folder in r.runs:
            evals = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines() if '"acc"' in x]
            if len(evals) >= 2:
                ref = min(evals, key=lambda e: abs(e["epoch"] - 0.75 * evals[-1]["epoch"]))
                gains.append(evals[-1]["acc"] - ref["acc"])
        if gains:
            out.append(f"| {r.row} | {100 * statistics.fmean(gains):+.2f} |")
    return out


def reproduce_teacher_free(out: Path, quick: bool = False, seeds=None, log=print, select=None) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    # every column carries its own candidates (ε; k_frac × weight): selection always runs, on this split
    results = run_grid(cells(s, seeds), out, log, Selection(validation=s["validation"]))
    title = f"Teacher-free regulariser on classification ({'quick' if quick else 'full'} scale)"
    md = write_tables(results, out, title, scale=100.0)
    md += ("\nTop-1 test accuracy (%). Each column's candidate (ε, or k_frac and weight) was selected on "
           f"{s['validation']} validation images held out of the training split.\n")
    rows = plateau_rows(results)
    if rows:
        md += "\nPlateau check (plain training; validation accuracy gained over the last quarter, points):\n\n"
        md += "| setting | gain |\n|---|---|\n" + "\n".join(rows) + "\n"
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
