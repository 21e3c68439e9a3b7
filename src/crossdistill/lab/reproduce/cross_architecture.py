"""``crossdistill reproduce cross-architecture``: distillation between a CNN and a vision transformer
on real offline data (Fashion-MNIST, padded to 32 px), both ways.

- CNN teacher → ViT student: student alone, KD, FitNet through the tokens ↔ map step (the ViT's
  middle block tokens against the CNN's middle stage map), OFA (exit branches on the ViT's blocks),
  DeiT's distillation token (a distilled ViT student, hard targets, DeiT's α = 0.5), VkD (orthogonal
  projector onto the normalised teacher feature, plus KD).
- ViT teacher → CNN student: student alone, KD, FitNet (the CNN's middle map against the ViT's
  middle tokens laid out as a map), OFA (conv exit branches on the CNN's stages).

Small transformers (4-px patches: an 8×8 grid plus the class token) keep it CPU-sized; ViTs train
with AdamW (lr 1e-3, weight decay 0.05, cosine — OFA's CIFAR ViT recipe is AdamW with weight decay
0.05), CNNs with SGD as the zoo does, all in fp32 (the same numbers on a CPU and a GPU). Each
teacher is trained once; students over 3 seeds. With ``--select-weight`` every term's weight is chosen
on a validation split carved from the training data (``grid.py``; ``--select-seeds 1`` chooses on the
first seed). The plateau check: every run's accuracy curve (its gain over the last quarter), and the
student alone trained twice as long (first seed) in each direction.

Runs train side by side in one-thread processes (``--workers``; default one per core, at most 4).
On one H200 (measured, docs/results.md#cross-architecture) runs this small share the GPU badly: a
ViT student with its CNN teacher took 85–93 s with 6 runs side by side and 184 s with 15, so the
GPU, time-sliced between the processes, gives about one such run per 12–15 s whatever the count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ...config import deep_merge
from .grid import Cell, eval_curve, last_quarter_gain, plot_results, run_grid, slug, train_config, write_tables
from .parallel import Run, default_workers, planned_runs, train_runs, train_side_by_side

SCALES: Dict[str, Dict[str, Any]] = {
    # a few minutes on a 2-core CPU (docs/results.md has the timing)
    "quick": dict(subset=1000, test_subset=1000, epochs=4, teacher_epochs=6, seeds=(0, 1, 2)),
    # 10 000 images, 30 epochs: 14-30 min per student on one core of the 2-core CPU (807-1 795 s
    # measured, two at a time); the ViT students are not at a plateau by then (+5.4 points with twice
    # the epochs): docs/results.md#cross-architecture
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
VKD = {"terms": [{"method": "vkd"}]}


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
        "train": {"epochs": epochs, **optim, "precision": "fp32", "progress": False},
    }


def directions() -> List[Tuple[str, str, str, Dict[str, Dict[str, Any]]]]:
    """(row label, teacher model, student model, {column: distill block}) per direction."""
    cnn_to_vit = {"KD": KD, "FitNet (tokens ↔ map)": FITNET, "OFA": OFA, "DeiT token (hard)": DEIT, "VkD": VKD}
    vit_to_cnn = {"KD": KD, "FitNet (tokens ↔ map)": FITNET, "OFA": OFA}
    return [(f"{CNN_TEACHER} → ViT", CNN_TEACHER, "vit_student", cnn_to_vit),
            (f"ViT → {CNN_STUDENT}", "vit_teacher", CNN_STUDENT, vit_to_cnn)]


def reproduce_cross_architecture(out: Path, quick: bool = False, seeds=None, log=print, select=None,
                                 workers: Optional[int] = None) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    workers = workers or default_workers()
    teachers = teacher_dirs(out)
    configs = {t: deep_merge(base_config(s, t, s["teacher_epochs"]), {"seed": 1000}) for t in teachers}
    cells = grid_cells(s, seeds, teachers)
    longer = [plateau_run(base_config(s, student, s["epochs"]), row, seeds[0], s, out, select)
              for row, _, student, _ in directions()]
    log(f"teachers: {', '.join(teachers)} on Fashion-MNIST")
    if workers > 1:  # the students alone need no teacher: they train beside the teachers
        alone = [c for c in cells if c.col == "student alone"]
        train_runs([(configs[t], folder) for t, folder in teachers.items()] + planned_runs(alone, out, select), workers, log)
    teacher_acc = {t: train_config(configs[t], folder, log)["last"]["acc"] * 100 for t, folder in teachers.items()}
    # the plateau check's longer runs go first into the students' pool: they are the longest
    train_side_by_side(cells, out, log, select, workers, what="students", extra=longer)
    for config, folder in longer:
        train_config(config, folder, log)
    results = run_grid(cells, out, log, select)
    title = (f"Cross-architecture distillation on Fashion-MNIST ({'quick' if quick else 'full'} scale: "
             f"{s['subset']} training images, {s['epochs']} epochs)")
    md = write_tables(results, out, title, scale=100.0)
    md += (f"\nTop-1 test accuracy (%) on the first {s['test_subset']} Fashion-MNIST test images. Teachers: "
           f"{CNN_TEACHER} {teacher_acc[CNN_TEACHER]:.2f} %, ViT ({VIT_TEACHER_OPTIONS}) {teacher_acc['vit_teacher']:.2f} %; "
           f"ViT student {VIT_STUDENT_OPTIONS} (DeiT column: the same with a distillation token), CNN student {CNN_STUDENT}.\n")
    md += plateau_note(results, longer, s, select)
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md


def teacher_dirs(out: Path) -> Dict[str, Path]:
    """teacher model → its run folder (the students' configs name its checkpoint through it)."""
    return {teacher: out / f"teacher_{teacher}" for _, teacher, _, _ in directions()}


def grid_cells(s: Dict[str, Any], seeds, teachers: Dict[str, Path]) -> List[Cell]:
    """Every cell of the grid: per direction the student alone, then a column per method."""
    cells = []
    for row, teacher, student, methods in directions():
        distilled = {"teachers": {"default": {"checkpoint": str(teachers[teacher] / "student.pt")}}}
        base = base_config(s, student, s["epochs"])
        cells.append(Cell(row, "student alone", base, "acc", True, seeds))
        for col, distill in methods.items():
            # DeiT's student carries the distillation token and its head
            cfg = base_config(s, "deit_student", s["epochs"]) if distill is DEIT else base
            cells.append(Cell(row, col, deep_merge(cfg, {**distilled, "distill": distill}), "acc", True, seeds))
    return cells


def plateau_run(base: Dict[str, Any], row: str, seed: int, s: Dict[str, Any], out: Path, select) -> Run:
    """The student alone of a direction once more, twice as long (the cosine schedule stretched), on
    the same split as the grid's runs."""
    config = deep_merge(base, {"seed": seed, "train": {"epochs": 2 * s["epochs"]}})
    if select is not None:
        config = deep_merge(config, {"data": {"validation": select.validation}})
    return config, out / "runs" / slug(f"{row}__student alone__twice-as-long__s{seed}")


def plateau_note(results, longer: List[Run], s: Dict[str, Any], select) -> str:
    """How much every cell's accuracy curve still rose over its last quarter, and what twice the
    epochs gave the student alone (on the split the runs evaluated: validation under selection)."""
    split = "validation" if select is not None else "test"
    gains = [(r, [last_quarter_gain(eval_curve(Path(run))) for run in r.runs]) for r in results]
    lines = [f"\nPlateau check ({split} accuracy each epoch; gain over the last quarter of the epochs, mean over seeds):\n",
             "| direction | student | gain over the last quarter (points) |", "|---|---|---|"]
    for r, g in gains:
        g = [x for x in g if x == x]
        lines.append(f"| {r.row} | {r.col} | {100 * sum(g) / len(g):+.2f} |" if g else f"| {r.row} | {r.col} | – |")
    for (config, folder), (row, *_) in zip(longer, directions()):
        alone = next(r for r in results if r.row == row and r.col == "student alone")
        short = eval_curve(Path(alone.runs[0])) if alone.runs else []
        long = eval_curve(folder)
        if short and long:
            lines.append(f"\n{row}, student alone, seed {config['seed']}: {100 * long[-1][1]:.2f} after "
                         f"{2 * s['epochs']} epochs against {100 * short[-1][1]:.2f} after {s['epochs']} ({split} accuracy).")
    return "\n".join(lines) + "\n"
