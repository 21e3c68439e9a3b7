"""The CRD abstract's other two settings, small and offline, on built-in shapes:

- ``ensemble``: two teachers (same architecture, different seeds) whose outputs/features are
  averaged (``from_teacher: [a, b]``), distilled with KD, FitNet and CRD — vs one teacher.
- ``cross-modal``: the teacher is trained on the *luminance* view of each image, the student sees
  only the *chroma* view (``teachers.X.input: luminance``, ``distill.student_input: chroma``) — two
  modalities of the same sample; KD, FitNet and CRD transfer across them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ...config import deep_merge
from .grid import Cell, plot_results, run_grid, train_config, write_tables

SCALES = {"quick": dict(train_size=4000, test_size=1000, epochs=4, teacher_epochs=6, seeds=(0, 1, 2)),
          "full": dict(train_size=5000, test_size=1000, epochs=10, teacher_epochs=12, seeds=(0, 1, 2))}

TERMS = {
    "KD": {"task_weight": 0.1, "terms": [{"method": "kd", "weight": 0.9, "T": 4}]},
    "FitNet": {"terms": [{"method": "fitnet", "weight": 100}]},
    "CRD": {"terms": [{"method": "crd", "nce_k": 1024}]},
}


def _base(s: Dict[str, Any], model: str, epochs: int) -> Dict[str, Any]:
    return {"task": "classification",
            "data": {"name": "shapes", "batch_size": 64,
                     "options": {"num_classes": 10, "image_size": 32, "train_size": s["train_size"],
                                 "test_size": s["test_size"]}},
            "student": {"name": model},
            "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4},
                      "schedule": {"name": "cosine"}, "progress": False}}


def _with_teachers(distill: Dict[str, Any], names) -> Dict[str, Any]:
    out = {k: v for k, v in distill.items() if k != "terms"}
    out["terms"] = [dict(t, from_teacher=list(names)) for t in distill["terms"]]
    return out


def reproduce_ensemble(out: Path, quick: bool = False, seeds=None, log=print, select=None) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    teachers = {}
    for i, seed in enumerate((1000, 2000)):
        folder = out / f"teacher_{i}"
        log(f"teacher {i}: resnet20 (seed {seed})")
        train_config(deep_merge(_base(s, "resnet20", s["teacher_epochs"]), {"seed": seed}), folder, log)
        teachers[f"t{i}"] = {"checkpoint": str(folder / "student.pt")}
    base = _base(s, "resnet8", s["epochs"])
    cells = [Cell("student alone", "-", base, "acc", True, seeds)]
    for name, distill in TERMS.items():
        for label, names in (("one teacher", ["t0"]), ("ensemble of two", ["t0", "t1"])):
            cfg = deep_merge(base, {"teachers": teachers, "distill": _with_teachers(distill, names)})
            cells.append(Cell(name, label, cfg, "acc", True, seeds))
    results = run_grid(cells, out, log, select)
    title = "Ensemble distillation on built-in shapes (small scale)"
    md = write_tables(results, out, title, scale=100.0)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md


def reproduce_cross_modal(out: Path, quick: bool = False, seeds=None, log=print, select=None) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    folder = out / "teacher_luminance"
    log("teacher: resnet20 on the luminance view")
    train_config(deep_merge(_base(s, "resnet20", s["teacher_epochs"]),
                            {"seed": 1000, "distill": {"student_input": "luminance"}}), folder, log)
    teacher = {"default": {"checkpoint": str(folder / "student.pt"), "input": "luminance"}}
    base = deep_merge(_base(s, "resnet8", s["epochs"]), {"distill": {"student_input": "chroma"}})
    cells = [Cell("chroma student", "alone", base, "acc", True, seeds)]
    for name, distill in TERMS.items():
        cells.append(Cell("chroma student", f"+ {name} from luminance teacher",
                          deep_merge(base, {"teachers": teacher, "distill": distill}), "acc", True, seeds))
    results = run_grid(cells, out, log, select)
    title = "Cross-modal transfer: luminance teacher → chroma student, built-in shapes (small scale)"
    md = write_tables(results, out, title, scale=100.0)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
