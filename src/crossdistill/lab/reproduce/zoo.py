"""``crossdistill reproduce zoo``: every distiller on real offline data (Fashion-MNIST).

One teacher is trained once; then a small student is distilled with each published CIFAR-100
distiller over seeds. Each column is a built-in recipe of ``configs/cifar100/resnet32x4_resnet8x4/``
(the pair whose published numbers docs/zoo.md lists), read as it is shipped: its loss weights, options,
extra views and extra teacher declarations, its init-phase learning rate. Only what counts the
recipe's 240 epochs is scaled to the reproduction's length (init phases, warm-ups, curricula), and
CRD's negatives are capped for the small training subset; every other setting is the reproduction's
own (Fashion-MNIST at 32 px, SGD lr 0.05 with a cosine schedule, the epochs of the scale).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ...catalog import builtin_names, method_rows
from ...config import RECIPES, deep_merge, list_configs
from ...methods import METHODS
from ...options import options_model
from .grid import Cell, Result, plot_results, run_grid, train_config, write_tables
from .parallel import train_side_by_side

SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(subset=1000, epochs=2, teacher_epochs=3, nce_k=512, seeds=(0, 1)),
    # sized to finish in well under two hours on a 2-core CPU (docs/results.md has the timing)
    "full": dict(subset=8000, epochs=4, teacher_epochs=8, nce_k=4096, seeds=(0, 1, 2)),
}
TEACHER, STUDENT = "resnet32", "resnet8"
PAIR = "cifar100/resnet32x4_resnet8x4"
RECIPE_EPOCHS = 240  # the RepDistiller schedule every recipe of the pair counts in
# options counted in epochs of that schedule (AB/FT/FSP init phases, DKD/ReviewKD warm-ups, CTKD's curriculum)
EPOCH_OPTIONS = ("init_epochs", "warmup", "warmup_epochs", "curriculum_epochs")
#: the published CIFAR-100 top-1 (%) of each column on resnet32x4 → resnet8x4 (sources in docs/zoo.md;
#: SRD and VkD published none for this pair)
PUBLISHED: Dict[str, float] = {
    "student": 72.50, "KD": 73.33, "KD+LS": 76.62, "DIST": 76.31, "DKD": 76.32, "DKD+LS": 77.01, "CTKD": 73.39,
    "MLKD": 77.08, "MLKD+LS": 78.28, "FitNet": 73.50, "AT": 73.44, "FSP": 72.62, "NST": 73.30, "FT": 72.86,
    "AB": 73.17, "VID": 73.09, "ReviewKD": 75.63, "PKT": 73.64, "CC": 72.97, "RKD": 71.90, "SP": 72.94,
    "CRD": 75.51, "CRD+KD": 75.46, "teacher": 79.42,
}


def column_label(terms: List[Dict[str, Any]]) -> str:
    """``[{method: crd}, {method: kd}]`` → ``CRD+KD``; logit standardisation adds ``+LS``."""
    return "+".join(METHODS.get(t["method"]).__name__ + ("+LS" if t.get("standardize") else "") for t in terms)


def zoo_recipes() -> Dict[str, Dict[str, Any]]:
    """Column label → its recipe as written (no ``base:`` merged): every recipe of :data:`PAIR` whose
    terms are all ``zoo`` methods, in the registry's order (kind, year, name), combinations after the
    single method they start with. The inverted-projector readings (``*_inverted``) are left out:
    they are Learning to Project's, compared in ``reproduce cross-task``."""
    order = [r["name"] for r in method_rows(builtin_names())]
    recipes = []
    for name in list_configs():
        if not name.startswith(PAIR + "/"):
            continue
        recipe = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
        terms = recipe.get("distill", {}).get("terms", [])
        if terms and all(METHODS.get(t["method"]).zoo and t.get("projector") != "inverted" for t in terms):
            recipes.append(recipe)
    recipes.sort(key=lambda r: (order.index(r["distill"]["terms"][0]["method"]), len(r["distill"]["terms"]),
                                column_label(r["distill"]["terms"])))
    return {column_label(r["distill"]["terms"]): r for r in recipes}


def scaled_terms(terms: List[Dict[str, Any]], s: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The recipe's terms at the scale ``s``: epoch-counted options × epochs / 240, rounded, at least
    one epoch (these phases and warm-ups move once per epoch, so a warm-up shorter than one epoch is
    none at all); a memory bank (CRD's) at ``s["nce_k"]`` negatives."""
    out = []
    for t in terms:
        t = dict(t)
        for k in EPOCH_OPTIONS:
            if t.get(k):
                t[k] = max(1, round(t[k] * s["epochs"] / RECIPE_EPOCHS))
        if "nce_k" in options_model(METHODS.get(t["method"])).model_fields:  # the recipes' 16 384 > the subset
            t["nce_k"] = s["nce_k"]
        out.append(t)
    return out


def column_config(recipe: Dict[str, Any], s: Dict[str, Any], teacher: str) -> Dict[str, Any]:
    """The part of a column's config that comes from its recipe: the distillation (terms at the
    scale), extra views (``data.copies``/``copy_augment``), every teacher it declares (each the zoo's
    ``teacher`` checkpoint, on the field the recipe names) and the init phase's learning rate. The
    recipe's own optimiser settings (MLKD's lr 0.025) are not taken: every column trains alike."""
    teachers = {name: {**spec, "checkpoint": teacher} for name, spec in recipe.get("teachers", {}).items()}
    cfg: Dict[str, Any] = {"teachers": {"default": {"checkpoint": teacher}, **teachers},
                           "distill": {**recipe["distill"], "terms": scaled_terms(recipe["distill"]["terms"], s)}}
    if recipe.get("data"):
        cfg["data"] = recipe["data"]
    if "phase_lr" in recipe.get("train", {}):
        cfg["train"] = {"phase_lr": recipe["train"]["phase_lr"]}
    return cfg


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


def published_comparison(results: List[Result], teacher_acc: float) -> str:
    """Each column next to its published CIFAR-100 number, both as a gain over the student alone, and
    Spearman's ρ between the two orders (the methods that have both)."""
    from scipy.stats import spearmanr

    by = {r.col: r for r in results if r.values}
    if "student" not in by:
        return ""
    alone = 100 * by["student"].mean
    lines = ["| method | ours | Δ vs student | CIFAR-100 published | Δ vs student, published |", "|---|---|---|---|---|"]
    for col, r in by.items():
        pub = PUBLISHED.get(col)
        ours = f"{100 * r.mean:.2f} ± {100 * r.std:.2f}" + (f" ({r.diverged} diverged)" if r.diverged else "")
        gain = "" if col == "student" else f"{100 * r.mean - alone:+.2f}"
        pub_gain = "" if col == "student" or pub is None else f"{pub - PUBLISHED['student']:+.2f}"
        lines.append(f"| {col} | {ours} | {gain} | {'—' if pub is None else f'{pub:.2f}'} | {pub_gain} |")
    lines.append(f"| teacher | {teacher_acc:.2f} | | {PUBLISHED['teacher']:.2f} | |")
    both = [c for c in by if c != "student" and c in PUBLISHED]
    above = sum(by[c].mean * 100 > alone for c in both)
    above_pub = sum(PUBLISHED[c] > PUBLISHED["student"] for c in both)
    rho, p = spearmanr([by[c].mean for c in both], [PUBLISHED[c] for c in both])
    lines += ["", f"Over the {len(both)} methods with a published number: {above} above the student alone here, "
              f"{above_pub} in the papers; Spearman's ρ between our order and the published one "
              f"{rho:+.2f} (p = {p:.3f}, scipy's t-approximation)."]
    return "\n".join(lines) + "\n"


def train_teacher(s: Dict[str, Any], model: str, folder: Path, log=print) -> Dict[str, Any]:
    """The shared teacher of the zoo and the teacher-cache reproductions: ``model`` trained once (seed
    1000) at the scale ``s`` for ``s["teacher_epochs"]`` epochs, into ``folder``; returns its summary."""
    return train_config(deep_merge(base_config(s, model, s["teacher_epochs"]), {"seed": 1000}), folder, log)


def reproduce_zoo(out: Path, quick: bool = False, seeds=None, log=print, only=None, select=None,
                  workers: Optional[int] = None) -> str:
    """``only``: the columns to run (e.g. ``["FitNet", "AB"]``; the student always runs), to refresh
    some rows of a table; default all. ``select``: choose each weight on validation (``--select-weight``).
    The students train in ``workers`` single-thread processes side by side (default one per core)."""
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    teacher_dir = out / "teacher"
    log(f"teacher: {TEACHER} on Fashion-MNIST")
    train_teacher(s, TEACHER, teacher_dir, log)
    base = base_config(s, STUDENT, s["epochs"])
    row = f"{TEACHER} → {STUDENT}"
    cells = [Cell(row, "student", base, "acc", True, seeds)]
    for name, recipe in zoo_recipes().items():
        if only is None or name in only:
            cells.append(Cell(row, name, deep_merge(base, column_config(recipe, s, str(teacher_dir / "student.pt"))),
                              "acc", True, seeds))
    train_side_by_side(cells, out, log, select, workers, what="zoo students")
    results = run_grid(cells, out, log, select)
    title = f"Distiller zoo on Fashion-MNIST ({'quick' if quick else 'full'} scale: {s['subset']} training images, {s['epochs']} epochs)"
    md = write_tables(results, out, title, scale=100.0, transpose=True)
    t_acc = json.loads((teacher_dir / "summary.json").read_text())["last"]["acc"] * 100
    md += (f"\nTop-1 test accuracy (%) on the first {min(s['subset'], 10000)} Fashion-MNIST test images. Teacher {TEACHER}: {t_acc:.2f} %. "
           f"Each column is its `{PAIR}` recipe, with its epoch-counted options × {s['epochs']}/{RECIPE_EPOCHS} "
           f"(at least 1 epoch); CRD nce_k={s['nce_k']}.\n")
    md += "\n" + published_comparison(results, t_acc)
    (out / "results.md").write_text(md)
    plot_results(results, out / "results.png", title, "test accuracy (%)", scale=100.0)
    return md
