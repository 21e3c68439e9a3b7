"""``crossdistill reproduce cross-architecture``: distillation between a CNN and a vision transformer
on real offline data (Fashion-MNIST, padded to 32 px), both ways.

- CNN teacher → ViT student: student alone, KD, FitNet through the tokens ↔ map step (the ViT's
  middle block tokens against the CNN's middle stage map), OFA (exit branches on the ViT's blocks),
  DeiT's distillation token (a distilled ViT student, hard targets, DeiT's α = 0.5).
- ViT teacher → CNN student: student alone, KD, FitNet (the CNN's middle map against the ViT's
  middle tokens laid out as a map), OFA (conv exit branches on the CNN's stages).

Small transformers (4-px patches: an 8×8 grid plus the class token) keep it CPU-sized; ViTs train
with AdamW (lr 1e-3, weight decay 0.05, cosine — OFA's CIFAR ViT recipe is AdamW with weight decay
0.05), CNNs with SGD as the zoo does. Each teacher is trained once; students over 3 seeds. With ``--select-weight`` every
term's weight is chosen on a validation split carved from the training data (``grid.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ...config import deep_merge
from .grid import Cell, plot_results, run_grid, train_config, write_tables

SCALES: Dict[str, Dict[str, Any]] = {
    # a few minutes on a 2-core CPU (docs/results.md has the timing)
    "quick": dict(subset=1000, test_subset=1000, epochs=4, teacher_epochs=6, seeds=(0, 1, 2)),
    # students trained to a plateau of their test accuracy (not measured here: CPU time)
    "full": dict(subset=10000, test_subset=10000, epochs=30, teacher_epochs=30, seeds=(0, 1, 2)),
}
CNN_TEACHER, CNN_STUDENT = "resnet20", "resnet8"
VIT = "vit_tiny_patch4_32"
#: the small transformers: (embed width, blocks, heads) over 4-px patches of the 32-px image
VIT_TEACHER_OPTIONS = {"embed_dim": 96, "depth": 6, "num_heads": 3}
VIT_STUDENT_OPTIONS = {"embed_dim": 64, "depth": 4, "num_heads": 4}

SGD = {"optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}, "schedule": {"name": "cosine"}}
ADAMW = {"optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05}, "schedule": {"name": "cosine"}}

KD = {"task_weight": 0.1, "terms": [{"method": "kd", "weight": 0.9, "T": 4}]}
FITNET = {"terms": [{"method": "fitnet", "weight": 100, "student": "@stage:1", "teacher": "@stage:1"}]}
OFA = {"terms": [{"method": "ofa", "eps": 1.0}]}
DEIT = {"task_weight": 0.5, "terms": [{"method": "deit", "distillation": "hard", "weight": 0.5}]}


def _model(name: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model spec, optimiser and schedule) of a model label."""
    if name == "vit_teacher":
        return {"name": VIT, "options": dict(VIT_TEACHER_OPTIONS)}, ADAMW
    if name == "vit_student":
        return {"name": VIT, "options": dict(VIT_STUDENT_OPTIONS)}, ADAMW
    if name == "deit_student":
        return {"name": VIT, "options": dict(VIT_STUDENT_OPTIONS, distilled=True)}, ADAMW
    return {"name": name}, SGD


def base_config(s: Dict[str, Any], model: str, epochs: int) -> Dict[str, Any]:
    spec, optim = _model(model)
    return {
        "task": "classification",
        "data": {"name": "fashion_mnist", "batch_size": 64, "augment": "crop_flip",
                 "options": {"subset": s["subset"], "test_subset": s["test_subset"], "pad_to": 32}},
        "student": spec,
        "train": {"epochs": epochs, **optim, "progress": False},
    }


def directions() -> List[Tuple[str, str, str, Dict[str, Dict[str, Any]]]]:
    """(row label, teacher model, student model, {column: distill block}) per direction."""
    cnn_to_vit = {"KD": KD, "FitNet (tokens ↔ map)": FITNET, "OFA": OFA, "DeiT token (hard)": DEIT}
    vit_to_cnn = {"KD": KD, "FitNet (tokens ↔ map)": FITNET, "OFA": OFA}
    return [(f"{CNN_TEACHER} → ViT", CNN_TEACHER, "vit_student", cnn_to_vit),
            (f"ViT → {CNN_STUDENT}", "vit_teacher", CNN_STUDENT, vit_to_cnn)]


def reproduce_cross_architecture(out: Path, quick: bool = False, seeds=None, log=print, select=None) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    cells, teacher_acc = [], {}
    for row, teacher, student, methods in directions():
        folder = out / f"teacher_{teacher}"
        log(f"teacher: {teacher} on Fashion-MNIST")
        train_config(deep_merge(base_config(s, teacher, s["teacher_epochs"]), {"seed": 1000}), folder, log)
        teacher_acc[teacher] = json.loads((folder / "summary.json").read_text())["last"]["acc"] * 100
        teachers = {"default": {"checkpoint": str(folder / "student.pt")}}
        base = base_config(s, student, s["epochs"])
        cells.append(Cell(row, "student alone", base, "acc", True, seeds))
        for col, distill in methods.items():
            # DeiT's student carries the distillation token and its head
            cfg = base_config(s, "deit_student", s["epochs"]) if distill is DEIT else base
            cells.append(Cell(row, col, deep_merge(cfg, {"teachers": teachers, "distill": distill}), "acc", True, seeds))
    results = run_grid(cells, out, log, select)
    title = (f"Cross-architecture distillation on Fashion-MNIST ({'quick' if quick else 'full'} scale: "
             f"{s['subset']} training images, {s['epochs']} epochs)")
    md = write_tables(results, out, title, scale=100.0)
    md += (f"\nTop-1 test accuracy (%) on the first {s['test_subset']} Fashion-MNIST test images. Teachers: "
           f"{CNN_TEACHER} {teacher_acc[CNN_TEACHER]:.2f} %, ViT ({VIT_TEACHER_OPTIONS}) {teacher_acc['vit_teacher']:.2f} %; "
           f"ViT student {VIT_STUDENT_OPTIONS} (DeiT column: the same with a distillation token), CNN student {CNN_STUDENT}.\n")
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
