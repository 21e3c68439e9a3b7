"""``crossdistill reproduce cross-task``: Learning to Project on the built-in scenes.

For every student task (depth, segmentation, translation) and two kinds of teacher — one trained
on *another* task, and a randomly initialised one — compare: no distillation, FitNet-style L2
feature distillation through the standard projector (student → teacher space), through the
inverted projector (teacher → student space), and the teacher-free spectral regulariser.
Encoder bottleneck features (``@encoder``) on both sides; the teacher's decoder/head is unused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ...config import deep_merge
from ...data.scenes import NUM_SEG_CLASSES
from .grid import Cell, plot_results, run_grid, train_config, write_tables

# the teacher's task for each student task: related through the scene geometry, but different
OTHER_TASK = {"depth": "segmentation", "segmentation": "depth", "translation": "segmentation"}
PRIMARY = {"depth": ("delta1", True), "segmentation": ("miou", True), "translation": ("psnr", True)}

SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(image_size=32, train_size=512, test_size=128, epochs=6, teacher_epochs=8,
                  student="dense_resnet_xs", teacher="dense_resnet_s", batch_size=32, seeds=(0, 1, 2)),
    "full": dict(image_size=48, train_size=1500, test_size=400, epochs=8, teacher_epochs=10,
                 student="dense_resnet_xs", teacher="dense_resnet_s", batch_size=32, seeds=(0, 1, 2)),
}

# distillation weights, set a priori (not tuned): feature terms at the scale of the task losses
FEATURE_WEIGHT = 1.0
SPECTRAL_WEIGHT = 0.1


def base_config(task: str, s: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "task": task,
        "data": {"name": "scenes", "augment": "none", "batch_size": s["batch_size"],
                 "options": {"image_size": s["image_size"], "train_size": s["train_size"],
                             "test_size": s["test_size"]}},
        "student": {"name": s["student"]},
        "train": {"epochs": s["epochs"], "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "cosine"}, "precision": "fp32", "progress": False},
    }


def teacher_config(task: str, s: Dict[str, Any]) -> Dict[str, Any]:
    cfg = base_config(task, s)
    cfg["student"] = {"name": s["teacher"]}
    cfg["train"]["epochs"] = s["teacher_epochs"]
    cfg["seed"] = 1000
    return cfg


def cells(out: Path, scale: str, seeds=None, tasks=("depth", "segmentation", "translation"), log=print) -> List[Cell]:
    s = SCALES[scale]
    seeds = tuple(seeds or s["seeds"])
    grid: List[Cell] = []
    for task in tasks:
        other = OTHER_TASK[task]
        metric, higher = PRIMARY[task]
        trained = out / "teachers" / other
        log(f"teacher: {s['teacher']} trained on {other}")
        train_config(teacher_config(other, s), trained, log)

        head = NUM_SEG_CLASSES if other == "segmentation" else (1 if other == "depth" else 3)
        teachers = {
            "trained teacher": {"checkpoint": str(trained / "student.pt")},
            "random teacher": {"model": s["teacher"], "num_classes": head, "random_init": True, "seed": 7},
        }
        base = base_config(task, s)
        row = f"{task} ({metric}; trained teacher: {other})"
        grid.append(Cell(row, "no distillation", base, metric, higher, seeds))
        for tname, tcfg in teachers.items():
            for proj in ("standard", "inverted"):
                cfg = deep_merge(base, {"teachers": {"default": tcfg}, "distill": {"terms": [
                    {"method": "fitnet", "student": "@encoder", "teacher": "@encoder", "projector": proj,
                     "projector_kind": "linear", "regressor_relu": False, "weight": FEATURE_WEIGHT}]}})
                grid.append(Cell(row, f"{tname}: {proj}", cfg, metric, higher, seeds))
        grid.append(Cell(row, "teacher-free", deep_merge(base, {"distill": {"terms": [
            {"method": "spectral", "student": "@encoder", "weight": SPECTRAL_WEIGHT}]}}), metric, higher, seeds))
    return grid


def reproduce_cross_task(out: Path, quick: bool = False, seeds=None, log=print, select=None) -> str:
    scale = "quick" if quick else "full"
    grid = cells(out, scale, seeds, log=log)
    results = run_grid(grid, out, log, select)
    title = f"Cross-task distillation on built-in scenes ({scale} scale, {SCALES[scale]['image_size']}px)"
    md = write_tables(results, out, title)
    plot_results(results, out / "results.png", title, "primary metric (δ1 / mIoU / PSNR)")
    return md
