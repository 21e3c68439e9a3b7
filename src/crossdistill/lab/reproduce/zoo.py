"""``crossdistill reproduce zoo``: every distiller on real offline data (Fashion-MNIST).

One teacher is trained once; then a small student is distilled with each method over seeds, with
the RepDistiller weights (``loss = γ·CE + α·KD + β·L``, docs/zoo.md). Small-scale changes, all
listed in the table's note: few epochs, AB/FT/FSP init phases of 1 epoch instead of 30 (and ReviewKD's
warm-up of 1 epoch instead of 20), CRD with ``nce_k`` 4096 negatives (the training subset is far smaller than CIFAR's 50 000 images).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from ...catalog import builtin_names, method_rows
from ...config import deep_merge
from ...methods import METHODS
from .grid import Cell, plot_results, run_grid, train_config, write_tables

SCALES: Dict[str, Dict[str, Any]] = {
    # ≈ 8–9 min of one AVX2 core (estimated from a measured 1-epoch teacher, 28 s of CPU at 2 000 images:
    # the earlier 2 000 images × 3 seeds were ≈ 20 min there, over the 10-minute --quick budget)
    "quick": dict(subset=1000, epochs=2, teacher_epochs=3, init_epochs=1, nce_k=512, seeds=(0, 1)),
    # sized to finish in about an hour on a 2-core CPU (docs/results.md has the timing)
    "full": dict(subset=8000, epochs=4, teacher_epochs=8, init_epochs=1, nce_k=4096, seeds=(0, 1, 2)),
}
TEACHER, STUDENT = "resnet32", "resnet8"

# the grid's columns: every built-in method that declares ``zoo = True``, labelled by its class name, on
# its defaults (β = default_weight), in the registry's order (kind, year, name); then the combinations
# (an α·KD term spelled out as its own term)
COMBINATIONS: Dict[str, List[Dict[str, Any]]] = {
    "CRD+KD": [{"method": "crd"}, {"method": "kd", "weight": 1.0, "T": 4}],
    # issue 20: the authors' CIFAR-100 weights (ReviewKD 5; SRD and VkD carry their KD at T = 1)
    "ReviewKD": [{"method": "reviewkd", "weight": 5.0}], "SRD": [{"method": "srd"}], "VkD": [{"method": "vkd"}],
}


def zoo_variants() -> Dict[str, List[Dict[str, Any]]]:
    """Column label → its terms."""
    zoo = [r["name"] for r in method_rows(builtin_names()) if METHODS.get(r["name"]).zoo]
    return {**{METHODS.get(n).__name__: [{"method": n}] for n in zoo}, **COMBINATIONS}


VARIANTS = zoo_variants()
TASK_WEIGHT = {"KD": 0.1}
# the init phase's learning rate per method, as RepDistiller: 0.05 for AB and FSP, 0.01 for FT
INIT_PHASE_LR = {"ab": 0.05, "ft": 0.01, "fsp": 0.05}


def base_config(s: Dict[str, Any], model: str, epochs: int) -> Dict[str, Any]:
    """A Fashion-MNIST classification run at 32 px (padded), SGD + cosine, as the zoo and the teacher
    cache reproductions train it; ``s`` gives the subset."""
    return {
        "task": "classification",
        "data": {"name": "fashion_mnist", "batch_size": 64, "augment": "crop_flip",
                 "options": {"subset": s["subset"], "pad_to": 32}},
        "student": {"name": model},
        "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
                  "schedule": {"name": "cosine"}, "progress": False},
    }


def _terms(name: str, s: Dict[str, Any]) -> List[Dict[str, Any]]:
    terms = []
    for t in VARIANTS[name]:
        t = dict(t)
        if t["method"] in INIT_PHASE_LR:
            t["init_epochs"] = s["init_epochs"]
        if t["method"] == "crd":
            t["nce_k"] = s["nce_k"]
        if t["method"] == "reviewkd":  # the 20-of-240-epoch warm-up, at the reproduction's length
            t["warmup_epochs"] = s["init_epochs"]
        terms.append(t)
    return terms


def reproduce_zoo(out: Path, quick: bool = False, seeds=None, log=print, only=None, select=None) -> str:
    """``only``: the method columns to run (e.g. ``["FitNet", "AB"]``; the student always runs), to
    refresh some rows of a table; default all. ``select``: choose each weight on validation (``--select-weight``)."""
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    teacher_dir = out / "teacher"
    log(f"teacher: {TEACHER} on Fashion-MNIST")
    train_config(deep_merge(base_config(s, TEACHER, s["teacher_epochs"]), {"seed": 1000}), teacher_dir, log)
    base = base_config(s, STUDENT, s["epochs"])
    row = f"{TEACHER} → {STUDENT}"
    cells = [Cell(row, "student", base, "acc", True, seeds)]
    teacher = {"default": {"checkpoint": str(teacher_dir / "student.pt")}}
    for name in VARIANTS:
        if only is not None and name not in only:
            continue
        cfg = deep_merge(base, {"teachers": teacher,
                                "distill": {"task_weight": TASK_WEIGHT.get(name, 1.0), "terms": _terms(name, s)}})
        phase_lr = {INIT_PHASE_LR[t["method"]] for t in VARIANTS[name] if t["method"] in INIT_PHASE_LR}
        if phase_lr:
            cfg = deep_merge(cfg, {"train": {"phase_lr": {"init": phase_lr.pop()}}})
        cells.append(Cell(row, name, cfg, "acc", True, seeds))
    results = run_grid(cells, out, log, select)
    title = f"Distiller zoo on Fashion-MNIST ({'quick' if quick else 'full'} scale: {s['subset']} training images, {s['epochs']} epochs)"
    md = write_tables(results, out, title, scale=100.0, transpose=True)
    t_acc = json.loads((teacher_dir / "summary.json").read_text())["last"]["acc"] * 100
    md += (f"\nTop-1 test accuracy (%) on the first {min(s['subset'], 10000)} Fashion-MNIST test images. Teacher {TEACHER}: {t_acc:.2f} %. "
           f"AB/FT/FSP init phase and ReviewKD warm-up {s['init_epochs']} epoch(s); CRD nce_k={s['nce_k']}.\n")
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
