"""``crossdistill reproduce cross-task-regimes``: where, if anywhere, Learning to Project helps.

A map of regimes for depth and segmentation students on the built-in scenes:

- **training-set size** (scenes the student trains on) × **student capacity**
  (``dense_resnet_xs`` / ``_s`` / ``_m``), trained to a plateau, loss on the encoder bottleneck;
- at a centre regime, the **training length** (a quarter of the plateau length, and twice it) and
  **where the loss is applied** (bottleneck only vs every encoder stage, one FitNet term per stage);
- at the centre regime too, the **readings** of the method (``projectors.ProjectorOptions`` and
  the distances of ``losses.distances``) and, where its weights are on disk, the real pretrained
  CycleGAN generator of ``vintagify`` as teacher (``scripts/fetch_vintagify.sh``).

In every regime the variants are: no distillation; L2 feature distillation from a teacher trained
on the *other* task through the standard projector (student → teacher space) and through the
inverted one (teacher → student space); the inverted projector with a randomly initialised teacher;
and the teacher-free regulariser (``spectral``). Every weight is selected on a validation split
(``experiments.grid.Selection``; a fixed count of held-out scenes, so each regime trains on exactly
its stated number of scenes) and the test metric of the selected weight is reported. The outputs:
heatmaps of Δ(inverted − standard), Δ(random teacher inverted − none) and Δ(teacher-free − none)
with standard errors over seeds (paired by seed: the same seed gives the same initialisation and
data order in every variant), Markdown tables, ``results.csv``, ``deltas.csv``, ``selection.csv``,
and the projector spectra (effective rank of the standard vs the inverted projector).
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...config import deep_merge
from ...data.scenes import NUM_SEG_CLASSES
from .grid import Cell, Result, Selection, run_grid, train_config, write_tables

OTHER_TASK = {"depth": "segmentation", "segmentation": "depth"}
PRIMARY = {"depth": "delta1", "segmentation": "miou"}
SHORT = {"dense_resnet_xs": "xs", "dense_resnet_s": "s", "dense_resnet_m": "m"}
VINTAGIFY = Path(os.path.expanduser("~/data/vintagify/G_A2B_epoch33.pth"))

# the readings tested at the centre regime (docs/cross_task.md): name → FitNet options
READINGS: Dict[str, Dict[str, Any]] = {
    "conv-BN": {"projector_kind": "conv_bn"},
    "BN (no affine) both sides": {"projector_options": {"norm": "batchnorm"}},
    "orthogonal + smooth-L1": {"projector_options": {"orthogonal": True}, "distance": "smooth_l1"},
    "BN + bias + log-sum α=4": {"projector_options": {"norm": "batchnorm", "bias": True}, "distance": "log_sum",
                                "alpha": 4.0},
    # AdamW's decay is decoupled (w ← w − lr·λ·w): at λ = 5 and lr ≤ 2e-3 a direction the loss does not
    # use shrinks by ~e^−2.5 over a run; the optimiser's own λ = 1e-4 barely moves it
    "projector weight decay 5": {"projector_options": {"weight_decay": 5.0}},
}

SCALES: Dict[str, Dict[str, Any]] = {
    # a small map that runs in minutes: two sizes, one capacity, two candidate weights, short training
    "quick": dict(image_size=32, tasks=("depth", "segmentation"), validation=64, test_size=256,
                  epochs={128: 30, 512: 8}, map=[(128, "dense_resnet_xs"), (512, "dense_resnet_xs")],
                  sizes=(128, 512), students=("dense_resnet_xs",),
                  centre=(512, "dense_resnet_xs"), extras=(), readings=(),
                  teacher="dense_resnet_s", teacher_size=1024, teacher_epochs=6,
                  # 2 seeds: 72 runs + 2 teachers ≈ 7½ min of one AVX2 core (3 seeds: ≈ 11, over the
                  # 10-minute --quick budget; estimated from measured per-step CPU time, docs/results.md#demo)
                  factors=(0.1, 1.0), seeds=(0, 1), batch_size=32),
    # epochs per size: ~400–500 steps, at a plateau (checked on the validation curves, see docs). The map
    # is a cross sized for a shared 2-core CPU: the size axis at xs, the capacity axis at 128 scenes
    # (the data-scarce end, like NYUv2's 795 labelled images); the extras sit at that centre.
    "full": dict(image_size=32, tasks=("depth", "segmentation"), validation=128, test_size=512,
                 epochs={128: 100, 512: 28, 2048: 8},
                 map=[(128, "dense_resnet_xs"), (512, "dense_resnet_xs"), (2048, "dense_resnet_xs"),
                      (128, "dense_resnet_s"), (128, "dense_resnet_m")],
                 sizes=(128, 512, 2048), students=("dense_resnet_xs", "dense_resnet_s", "dense_resnet_m"),
                 centre=(128, "dense_resnet_xs"), extras=("stages", "short", "vintagify"),
                 readings=tuple(READINGS), reading_variants=("trained: standard", "trained: inverted"),
                 teacher="dense_resnet_s", teacher_size=2048, teacher_epochs=12,
                 factors=(0.1, 1.0), seeds=(0, 1, 2), batch_size=32),
}


@dataclass(frozen=True)
class Regime:
    task: str
    size: int
    student: str
    location: str = "bottleneck"  # or "stages"
    length: str = "plateau"       # or "short" (¼) / "long" (2×)
    reading: str = ""             # "" = linear 1×1 projector, L2 (the default reading)

    def label(self, s: Dict[str, Any]) -> str:
        parts = [self.task, f"{self.size} scenes", SHORT.get(self.student, self.student), self.location,
                 f"{epochs_of(self, s)} ep" + ("" if self.length == "plateau" else f" ({self.length})")]
        return " · ".join(parts + ([f"reading: {self.reading}"] if self.reading else []))


def epochs_of(r: Regime, s: Dict[str, Any]) -> int:
    e = s["epochs"][r.size]
    return {"plateau": e, "short": max(1, e // 4), "long": 2 * e}[r.length]


def base_config(r: Regime, s: Dict[str, Any]) -> Dict[str, Any]:
    epochs = epochs_of(r, s)
    return {
        "task": r.task,
        # `validation` held-out scenes come on top of `size`: each regime trains on exactly `size`
        "data": {"name": "scenes", "augment": "none", "batch_size": s["batch_size"],
                 "options": {"image_size": s["image_size"], "train_size": r.size + s["validation"],
                             "test_size": s["test_size"]}},
        "student": {"name": r.student},
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "cosine"}, "precision": "fp32", "progress": False,
                  "eval_every": max(1, epochs // 8), "checkpoint_every": epochs},
    }


def teacher_config(task: str, s: Dict[str, Any]) -> Dict[str, Any]:
    """A teacher trained on ``task`` with scenes of its own (``options.seed: 1``: none of them is a
    student's training, validation or test scene)."""
    return {
        "task": task, "seed": 1000,
        "data": {"name": "scenes", "augment": "none", "batch_size": s["batch_size"],
                 "options": {"image_size": s["image_size"], "train_size": s["teacher_size"], "test_size": 256,
                             "seed": 1}},
        "student": {"name": s["teacher"]},
        "train": {"epochs": s["teacher_epochs"], "optimizer": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4},
                  "schedule": {"name": "cosine"}, "precision": "fp32", "progress": False},
    }


def _sides(r: Regime) -> List[Tuple[str, str]]:
    if r.location == "stages":
        return [(f"@stage:{i}", f"@stage:{i}") for i in range(3)]
    return [("@encoder", "@encoder")]


def fitnet_terms(r: Regime, projector: str, teacher_side: Optional[str] = None) -> List[Dict[str, Any]]:
    """One FitNet term per tapped place (weight 1: the selection multiplies it)."""
    reading = READINGS.get(r.reading, {})
    terms = []
    for s_side, t_side in _sides(r):
        # both directions linear (no ReLU after the standard one: the comparison is of the two
        # directions of one linear map); the spectrum is logged for the projector readings
        term = {"method": "fitnet", "student": s_side, "teacher": teacher_side or t_side, "projector": projector,
                "projector_kind": "linear", "regressor_relu": False, "projector_options": {"log_singular_values": 4},
                "weight": 1.0}
        terms.append(deep_merge(term, reading))
    return terms


def variants(r: Regime, teachers: Dict[str, Dict[str, Any]], s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    base = base_config(r, s)
    out: Dict[str, Dict[str, Any]] = {}
    if not r.reading:
        out["none"] = base
    for col, (tname, proj) in {"trained: standard": ("trained", "standard"), "trained: inverted": ("trained", "inverted"),
                               "random: inverted": ("random", "inverted")}.items():
        if r.reading and col not in s.get("reading_variants", (col,)):
            continue
        out[col] = deep_merge(base, {"teachers": {"default": teachers[tname]},
                                     "distill": {"terms": fitnet_terms(r, proj)}})
    if not r.reading:
        out["teacher-free"] = deep_merge(base, {"distill": {"terms": [
            {"method": "spectral", "student": side, "weight": 1.0} for side, _ in _sides(r)]}})
    return out


def vintagify_variants(r: Regime, s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The pretrained CycleGAN generator (image translation) as teacher. Its tapped feature is the
    end of its downsampling encoder (``@stage:0`` = ``model.9``, 256 channels at 1/4 resolution).
    The whole generator runs every step (11 M parameters): the costliest teacher of the map."""
    teacher = {"model": "cyclegan_resnet_generator", "options": {"norm": "instance_affine"}, "num_classes": 3,
               "weights": str(VINTAGIFY)}
    base = base_config(r, s)
    return {f"vintagify: {p}": deep_merge(base, {"teachers": {"default": teacher},
                                                  "distill": {"terms": fitnet_terms(r, p, teacher_side="@stage:0")}})
            for p in ("standard", "inverted")}


def regimes(s: Dict[str, Any], tasks: Sequence[str]) -> List[Regime]:
    out = [Regime(t, size, student) for t in tasks for size, student in s["map"]]
    size, student = s["centre"]
    centre = [Regime(t, size, student) for t in tasks]
    for extra in s["extras"]:
        if extra == "stages":
            out += [replace(c, location="stages") for c in centre]
        elif extra in ("short", "long"):
            out += [replace(c, length=extra) for c in centre]
    for reading in s["readings"]:
        out += [replace(c, reading=reading) for c in centre]
    return out


def cells(out: Path, scale: str, seeds=None, tasks: Optional[Sequence[str]] = None, log=print) -> List[Cell]:
    s = SCALES[scale]
    seeds = tuple(seeds or s["seeds"])
    tasks = tuple(tasks or s["tasks"])
    grid: List[Cell] = []
    teachers: Dict[str, Dict[str, Dict[str, Any]]] = {}

    for task in tasks:
        other = OTHER_TASK[task]
        folder = out / "teachers" / other
        log(f"teacher: {s['teacher']} trained on {other}")
        train_config(teacher_config(other, s), folder, log)
        head = NUM_SEG_CLASSES if other == "segmentation" else 1
        teachers[task] = {"trained": {"checkpoint": str(folder / "student.pt")},
                          "random": {"model": s["teacher"], "num_classes": head, "random_init": True, "seed": 7}}
    for r in regimes(s, tasks):
        for col, cfg in variants(r, teachers[r.task], s).items():
            grid.append(Cell(r.label(s), col, cfg, PRIMARY[r.task], True, seeds))
    if "vintagify" in s["extras"]:
        if VINTAGIFY.is_file():
            size, student = s["centre"]
            for task in tasks:
                r = Regime(task, size, student)
                for col, cfg in vintagify_variants(r, s).items():
                    grid.append(Cell(r.label(s), col, cfg, PRIMARY[task], True, seeds))
        else:
            log(f"vintagify teacher skipped: {VINTAGIFY} not found (bash scripts/fetch_vintagify.sh fetches it)")
    return grid


# -- analysis --------------------------------------------------------------------------------
def paired_delta(a: Result, b: Result) -> Tuple[float, float, int]:
    """Mean and standard error of ``a − b`` over the seeds both have (paired by seed)."""
    va, vb = dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values))
    d = [va[k] - vb[k] for k in va if k in vb]
    if not d:
        return math.nan, math.nan, 0
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se, len(d)


#: the three differences the issue asks for: name → (column a, column b)
DELTAS = {
    "inverted − standard (trained teacher)": ("trained: inverted", "trained: standard"),
    "random teacher (inverted) − none": ("random: inverted", "none"),
    "teacher-free − none": ("teacher-free", "none"),
}


def deltas(results: Sequence[Result]) -> List[Dict[str, Any]]:
    by = {(r.row, r.col): r for r in results}
    rows = list(dict.fromkeys(r.row for r in results))
    out = []
    for row in rows:
        # readings rows have no "none"/"teacher-free": compare with the default reading's row
        plain = row.split(" · reading: ")[0]
        for name, (a, b) in DELTAS.items():
            ra = by.get((row, a))
            rb = by.get((row, b)) or by.get((plain, b))
            if ra is None or rb is None:
                continue
            mean, se, n = paired_delta(ra, rb)
            out.append({"regime": row, "delta": name, "mean": mean, "se": se, "n": n,
                        "a": f"{ra.mean:.4f}", "b": f"{rb.mean:.4f}", "a_weight": ra.selected, "b_weight": rb.selected})
        for proj in ("standard", "inverted"):  # the real pretrained teacher, where it ran
            ra, rb = by.get((row, f"vintagify: {proj}")), by.get((row, "none"))
            if ra is not None and rb is not None:
                mean, se, n = paired_delta(ra, rb)
                out.append({"regime": row, "delta": f"vintagify teacher ({proj}) − none", "mean": mean, "se": se,
                            "n": n, "a": f"{ra.mean:.4f}", "b": f"{rb.mean:.4f}", "a_weight": ra.selected,
                            "b_weight": rb.selected})
    return out


def spectra(results: Sequence[Result]) -> List[Dict[str, Any]]:
    """Effective and numerical rank of each selected run's projector at its first and last logged
    steps (``fitnet/projector_erank``, ``fitnet/projector_rank`` in ``metrics.jsonl``; with several
    FitNet terms, the first), mean over seeds."""
    out = []
    for r in results:
        first, last, ranks = [], [], []
        for folder in r.runs:
            recs = [x for x in _train_records(Path(folder) / "metrics.jsonl") if "fitnet/projector_erank" in x]
            if recs:
                first.append(recs[0]["fitnet/projector_erank"])
                last.append(recs[-1]["fitnet/projector_erank"])
                ranks.append(recs[-1]["fitnet/projector_rank"])
        if last:
            out.append({"regime": r.row, "variant": r.col, "weight": r.selected, "erank_first": statistics.fmean(first),
                        "erank": statistics.fmean(last), "rank": statistics.fmean(ranks), "n": len(last)})
    return out


def _train_records(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [rec for rec in map(json.loads, path.read_text().splitlines()) if "loss" in rec]


def plateau_check(results: Sequence[Result]) -> List[Dict[str, Any]]:
    """For the no-distillation runs: the validation metric at ¾ of training and at the end (a
    plateau shows a gain near zero over the last quarter)."""
    out = []
    for r in results:
        if r.col != "none":
            continue
        gains = []
        for folder in r.runs:
            evals = [json.loads(x) for x in (Path(folder) / "metrics.jsonl").read_text().splitlines()
                     if r.metric in json.loads(x)]
            if len(evals) >= 2:
                last_epoch = evals[-1]["epoch"]
                ref = min(evals, key=lambda e: abs(e["epoch"] - 0.75 * last_epoch))
                gains.append(evals[-1][r.metric] - ref[r.metric])
        if gains:
            out.append({"regime": r.row, "gain_last_quarter": statistics.fmean(gains), "n": len(gains)})
    return out


def _fmt(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:+.3f} ± {se:.3f}" if not math.isnan(se) else f"{mean:+.3f}"


def heatmaps(ds: Sequence[Dict[str, Any]], s: Dict[str, Any], tasks: Sequence[str], path: Path, title: str) -> None:
    """One panel per (task, Δ): training-set size × student capacity, bottleneck, plateau length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, students = list(s["sizes"]), list(s["students"])
    names = list(DELTAS)
    fig, axes = plt.subplots(len(tasks), len(names), figsize=(4.4 * len(names), 3.3 * len(tasks) + 0.9),
                             squeeze=False)
    by = {(d["regime"], d["delta"]): d for d in ds}
    for i, task in enumerate(tasks):
        grids, texts = [], []
        for name in names:
            grid = np.full((len(students), len(sizes)), np.nan)
            text = [["not run"] * len(sizes) for _ in students]
            for a, student in enumerate(students):
                for b, size in enumerate(sizes):
                    d = by.get((Regime(task, size, student).label(s), name))
                    if d is not None and not math.isnan(d["mean"]):
                        grid[a, b] = d["mean"]
                        # * : |Δ| above twice its standard error
                        star = " *" if not math.isnan(d["se"]) and abs(d["mean"]) > 2 * d["se"] else ""
                        text[a][b] = _fmt(d["mean"], d["se"]).replace(" ± ", "\n± ") + star
            grids.append(grid)
            texts.append(text)
        finite = [np.abs(g[np.isfinite(g)]) for g in grids if np.isfinite(g).any()]
        lim = max(float(max(f.max() for f in finite)), 0.01) if finite else 0.01  # one colour scale per task
        for j, name in enumerate(names):
            ax, grid = axes[i][j], grids[j]
            ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            for a in range(len(students)):
                for b in range(len(sizes)):
                    dark = np.isfinite(grid[a, b]) and abs(grid[a, b]) > 0.6 * lim
                    ax.text(b, a, texts[j][a][b], ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
            ax.set_xticks(range(len(sizes)), [f"{n} scenes" for n in sizes], fontsize=8)
            ax.set_yticks(range(len(students)), [SHORT[x] for x in students], fontsize=8)
            ax.set_title(f"{task} ({PRIMARY[task]}): {name}", fontsize=9)
    fig.suptitle(title + "\nΔ of the test metric, mean ± standard error over seeds (paired by seed); "
                 "blue = the first variant is better; * = |Δ| > 2 SE", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: Sequence[Result], out: Path, s: Dict[str, Any], tasks: Sequence[str], title: str) -> str:
    md = write_tables(results, out, title, transpose=False)
    ds = deltas(results)
    with open(out / "deltas.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["regime", "delta", "mean", "se", "n", "a", "b", "a_weight", "b_weight"])
        w.writeheader()
        for d in ds:
            w.writerow({**d, "mean": f"{d['mean']:.6f}", "se": f"{d['se']:.6f}"})
    heatmaps(ds, s, tasks, out / "heatmaps.png", title)
    lines = ["", "### Differences (test metric; mean ± standard error over seeds, paired by seed)", "",
             "| regime | " + " | ".join(DELTAS) + " |", "|---|" + "---|" * len(DELTAS)]
    by = {(d["regime"], d["delta"]): d for d in ds}
    for row in dict.fromkeys(d["regime"] for d in ds):
        cells = [_fmt(by[(row, n)]["mean"], by[(row, n)]["se"]) if (row, n) in by else "–" for n in DELTAS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    vint = [d for d in ds if d["delta"].startswith("vintagify")]
    if vint:
        lines += ["", "Pretrained vintagify CycleGAN teacher: " + "; ".join(
            f"{d['regime']}: {d['delta']} {_fmt(d['mean'], d['se'])}" for d in vint)]
    sp = spectra(results)
    if sp:
        lines += ["", "### Projector spectra (selected weight; mean over seeds)", "",
                  "| regime | variant | weight | effective rank, first logged step → last | numerical rank at the end "
                  "(σ > 1 % σ₁) |", "|---|---|---|---|---|"]
        lines += [f"| {x['regime']} | {x['variant']} | {x['weight']} | {x['erank_first']:.2f} → {x['erank']:.2f} | "
                  f"{x['rank']:.1f} |" for x in sp]
    pc = plateau_check(results)
    if pc:
        lines += ["", "### Plateau check (no distillation: validation metric gained over the last quarter of training)",
                  "", "| regime | gain |", "|---|---|"]
        lines += [f"| {x['regime']} | {x['gain_last_quarter']:+.4f} |" for x in pc]
    md += "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    return md


def reproduce_cross_task_regimes(out: Path, quick: bool = False, seeds=None, log=print, select=None,
                                 tasks: Optional[Sequence[str]] = None) -> str:
    scale = "quick" if quick else "full"
    s = SCALES[scale]
    tasks = tuple(tasks or s["tasks"])
    # fair weights are the point of this map: a selection always runs (--select-weight changes the factors)
    select = select or Selection(factors=s["factors"])
    select = Selection(factors=select.factors, validation=s["validation"])
    grid = cells(out, scale, seeds, tasks, log)
    results = run_grid(grid, out, log, select)
    title = f"Cross-task regimes on built-in scenes ({scale} scale, {s['image_size']}px)"
    return write_report(results, out, s, tasks, title)
