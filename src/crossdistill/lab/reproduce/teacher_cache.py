"""``crossdistill reproduce teacher-cache``: what the teacher cache costs in accuracy, on real data.

Fashion-MNIST (padded to 32 px), a resnet20 teacher trained once, resnet8 students trained with KD
(RepDistiller weights: γ = 0.1, α = 0.9, T = 4) from the live teacher — a fresh augmentation every
epoch — and from a teacher cache of V = 8 stored views per image (float16), over seeds; the student
alone for reference. The cache is filled once and shared by every seed (its manifest does not
depend on the run's seed). Also reports the fill time and the cache's size on disk.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from ...config import deep_merge
from .grid import Cell, plot_results, run_grid, write_tables
from .zoo import base_config, train_teacher

SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(subset=1000, epochs=3, teacher_epochs=3, views=8, seeds=(0, 1, 2)),
    # sized for a shared 2-core CPU: more epochs than views, so that views repeat (the cache's trade-off)
    "full": dict(subset=2000, epochs=10, teacher_epochs=6, views=8, seeds=(0, 1, 2)),
}
TEACHER, STUDENT = "resnet20", "resnet8"
KD = {"task_weight": 0.1, "terms": [{"method": "kd", "weight": 0.9, "T": 4}]}


def reproduce_teacher_cache(out: Path, quick: bool = False, seeds=None, log=print) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    teacher_dir = out / "teacher"
    log(f"teacher: {TEACHER} on Fashion-MNIST ({s['subset']} images, {s['teacher_epochs']} epochs)")
    train_teacher(s, TEACHER, teacher_dir, log)
    base = base_config(s, STUDENT, s["epochs"])
    kd = deep_merge(base, {"teachers": {"default": {"checkpoint": str(teacher_dir / "student.pt")}}, "distill": KD})
    cache = {"views": s["views"], "dtype": "float16", "dir": str(out / "teacher_cache")}
    row = f"{TEACHER} → {STUDENT}"
    cells = [Cell(row, "student alone", base, "acc", True, seeds),
             Cell(row, "KD, live teacher", kd, "acc", True, seeds),
             Cell(row, f"KD, cache (V = {s['views']}, float16)", deep_merge(kd, {"teacher_cache": cache}), "acc", True, seeds)]
    results = run_grid(cells, out, log)
    title = (f"Teacher cache on Fashion-MNIST ({'quick' if quick else 'full'} scale: {s['subset']} training images, "
             f"{s['epochs']} epochs)")
    md = write_tables(results, out, title, scale=100.0)
    t_acc = json.loads((teacher_dir / "summary.json").read_text())["last"]["acc"] * 100
    manifest = json.loads((out / "teacher_cache" / "manifest.json").read_text())
    size = sum(p.stat().st_size for p in (out / "teacher_cache").glob("*.npy"))
    seconds = {r.col: r.seconds / max(len(r.values), 1) for r in results}
    md += (f"\nTop-1 test accuracy (%) on the first {min(s['subset'], 10000)} Fashion-MNIST test images. "
           f"Teacher {TEACHER}: {t_acc:.2f} %. Cache: {manifest['views']} views × {manifest['data']['size']} images, "
           f"{size / 2**20:.2f} MiB on disk ({size / manifest['data']['size'] * 10_000 / 2**20:.2f} MiB per 10 000 "
           f"images). Seconds per run (wall clock; the first cached run includes the one-off fill): "
           + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".\n")
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
