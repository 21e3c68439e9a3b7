"""``crossdistill reproduce dpk-teacher-size``: does DPK make a larger teacher give a better student?

The DPK paper's claim (Qiu et al. 2023): with DPK the student's accuracy is positively correlated with
the teacher's, where plain KD peaks and falls as the teacher grows. Here, on real offline data
(Fashion-MNIST, 28×28, Debian package ``dataset-fashion-mnist``): one student (resnet8) and five
teachers of increasing depth (resnet14 … resnet110, the CIFAR ResNet family), each teacher trained
once; then the student alone, with KD, and with DPK from every teacher, over seeds.

Loss weights are fixed a priori, never tuned on the test split: KD is RepDistiller's
(``0.1·CE + 0.9·KD``, T = 4); DPK is the same plus its feature term at weight 1 (the method's
default), so DPK − KD is exactly the effect of the prior-knowledge feature term. Test accuracy is
read at the last epoch. See docs/dpk.md for the choices and docs/results.md for the numbers.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ...config import deep_merge
from ...data import create_dataset
from ...errors import DataError
from ...models import create_model
from .grid import Cell, Result, slug, run_grid, train_config

STUDENT = "resnet8"
TEACHERS = ("resnet14", "resnet20", "resnet32", "resnet56", "resnet110")
INSTALL = "apt-get install dataset-fashion-mnist"

# Images resized to 16×16 (stage maps 16/8/4, DPK patches 4/2/1): a third of the 28 px compute, so that
# the full grid (5 teachers + 33 student runs) fits about 90 minutes on 2 CPU cores.
SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(subset=2000, epochs=5, teacher_epochs=6, teachers=TEACHERS, seeds=(0, 1, 2), batch_size=64,
                  data_options={"image_size": 16}),
    # teachers on 10 000 training images, students on the first 3 000 of them (the 30 distillation runs
    # pay a teacher forward every step, so their data is what sets the budget); everything is tested on
    # the full 10 000-image test split. Students: 16 epochs, evaluated every 2nd epoch (and the last).
    "full": dict(subset=10000, student_subset=3000, epochs=16, teacher_epochs=20, teachers=TEACHERS,
                 seeds=(0, 1, 2), batch_size=64, data_options={"image_size": 16}, student_train={"eval_every": 2}),
}

#: the compared variants, label → (task weight γ, the terms) — DPK is KD plus its feature term
VARIANTS: Dict[str, Dict[str, Any]] = {
    "KD": {"task_weight": 0.1, "terms": [{"method": "kd", "weight": 0.9, "T": 4}]},
    "DPK": {"task_weight": 0.1, "terms": [{"method": "dpk", "weight": 1.0, "kd_weight": 0.9, "T": 4,
                                           "feature_weight": 1.0}]},
}


def check_data(root: Optional[str] = None) -> None:
    """Fail early, in one line, with the install command, when Fashion-MNIST is missing."""
    try:
        create_dataset("fashion_mnist", "test", root, subset=1)
    except DataError as e:
        raise DataError(f"reproduce dpk-teacher-size needs Fashion-MNIST: {INSTALL} (Debian/Ubuntu), or put the "
                        f"IDX files under ~/data/fashion-mnist ({e})") from None


def base_config(s: Dict[str, Any], model: str, epochs: int) -> Dict[str, Any]:
    data_options = {"subset": s["subset"]}
    data_options.update(s.get("data_options", {}))
    return {
        "task": "classification",
        "data": {"name": "fashion_mnist", "batch_size": s["batch_size"], "augment": "crop_flip",
                 "options": data_options},
        "student": {"name": model},
        "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                  "schedule": {"name": "cosine"}, "progress": False, **s.get("train", {})},
    }


def train_teachers(out: Path, s: Dict[str, Any], log=print) -> Dict[str, Dict[str, Any]]:
    """Each teacher once (seed 1000), in ``out/teachers/<name>``; returns name → its summary."""
    summaries = {}
    for name in s["teachers"]:
        log(f"teacher {name}")
        cfg = deep_merge(base_config(s, name, s["teacher_epochs"]), {"seed": 1000})
        summaries[name] = train_config(cfg, out / "teachers" / name, log)
    return summaries


def cells(out: Path, s: Dict[str, Any], seeds: Sequence[int]) -> List[Cell]:
    base = deep_merge(base_config(s, STUDENT, s["epochs"]), {"train": s.get("student_train", {})})
    if "student_subset" in s:
        base = deep_merge(base, {"data": {"options": {"subset": s["student_subset"], "test_subset": s["subset"]}}})
    grid = [Cell("no teacher", "student alone", base, "acc", True, seeds)]
    for name in s["teachers"]:
        teacher = {"default": {"checkpoint": str(out / "teachers" / name / "student.pt")}}
        for method, distill in VARIANTS.items():
            grid.append(Cell(name, method, deep_merge(base, {"teachers": teacher, "distill": distill}), "acc", True, seeds))
    return grid


def parameter_count(model: str, in_channels: int = 1) -> int:
    return sum(p.numel() for p in create_model(model, num_classes=10, in_channels=in_channels).parameters())


def spearman(xs: Sequence[float], ys: Sequence[float]):
    """Spearman's rank correlation (scipy) and its two-sided p-value; NaN where undefined.

    Up to 8 points the p-value is exact — the share of the n! orderings of ``ys`` whose |ρ| is at
    least the observed one — since scipy's t-approximation is far off at n = 5 (it gives ~1e-24 for a
    perfect ranking, whose exact p is 2/120)."""
    from scipy.stats import spearmanr

    n = len(xs)
    if n < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return float("nan"), float("nan")
    rho = float(spearmanr(xs, ys).statistic)
    if n > 8:
        return rho, float(spearmanr(xs, ys).pvalue)
    at_least = sum(abs(float(spearmanr(xs, perm).statistic)) >= abs(rho) - 1e-12
                   for perm in itertools.permutations(ys))
    return rho, at_least / math.factorial(n)


def shares(out: Path, teacher: str, seeds: Sequence[int]) -> str:
    """The DPK runs' teacher share per stage, averaged over the logged steps and the seeds."""
    per_stage: Dict[str, List[float]] = {}
    for seed in seeds:
        log = out / "runs" / slug(f"{teacher}__DPK__s{seed}") / "metrics.jsonl"
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            record = json.loads(line)
            for k, v in record.items():
                if k.startswith("dpk/share/") and v is not None:
                    per_stage.setdefault(k.rsplit("/", 1)[1], []).append(float(v))
    if not per_stage:
        return "–"
    return " / ".join(f"{statistics.fmean(per_stage[k]):.2f}" for k in sorted(per_stage, key=int))


def summarise(results: Sequence[Result], teachers: Dict[str, Dict[str, Any]], out: Path, title: str,
              seeds: Sequence[int] = (0, 1, 2)) -> str:
    by = {(r.row, r.col): r for r in results}
    alone = by[("no teacher", "student alone")]
    t_acc = {n: float(t["last"]["acc"]) for n, t in teachers.items()}
    params = {n: parameter_count(n) for n in teachers}
    n_seeds = len(alone.values)
    # CSV: one row per (teacher, method), with the teacher's own accuracy
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["teacher", "teacher_params", "teacher_acc", "method", "n_seeds", "mean", "std", "values", "diverged"])
        w.writerow(["", "", "", "student alone", len(alone.values), f"{alone.mean:.6f}", f"{alone.std:.6f}",
                    " ".join(f"{v:.6f}" for v in alone.values), alone.diverged])
        for n in teachers:
            for m in VARIANTS:
                r = by[(n, m)]
                w.writerow([n, params[n], f"{t_acc[n]:.6f}", m, len(r.values), f"{r.mean:.6f}", f"{r.std:.6f}",
                            " ".join(f"{v:.6f}" for v in r.values), r.diverged])

    def cell(r: Result) -> str:
        text = f"{100 * r.mean:.2f} ± {100 * r.std:.2f}" if r.values else "–"
        return text + (f" ({r.diverged} diverged)" if r.diverged else "")

    lines = [f"### {title}", "", f"Student {STUDENT} ({parameter_count(STUDENT) / 1e6:.2f}M parameters) alone: "
             f"**{cell(alone)}**.", "",
             "| teacher | params | teacher acc | " + " | ".join(f"student + {m}" for m in VARIANTS)
             + " | DPK − KD | DPK teacher share per stage |", "|---|---|---|" + "---|" * len(VARIANTS) + "---|---|"]
    for n in teachers:
        gap = 100 * (by[(n, "DPK")].mean - by[(n, "KD")].mean)
        lines.append(f"| {n} | {params[n] / 1e6:.2f}M | {100 * t_acc[n]:.2f} | "
                     + " | ".join(cell(by[(n, m)]) for m in VARIANTS) + f" | {gap:+.2f} | {shares(out, n, seeds)} |")
    lines += ["", f"Top-1 test accuracy (%) at the last epoch, mean ± std over {n_seeds} seeds; teachers trained "
              "once (seed 1000). DPK teacher share: the logged `dpk/share/<stage>`, averaged over training steps "
              "and seeds (1 − the smoothed CKA between the student's and the teacher's stage maps).", ""]
    lines += ["| method | Spearman ρ (teacher acc vs mean student acc) | p (two-sided, n = "
              f"{len(teachers)}) | best teacher for the student |", "|---|---|---|---|"]
    stats = {}
    order = sorted(teachers, key=lambda n: t_acc[n])
    for m in VARIANTS:
        means = [by[(n, m)].mean for n in order]
        rho, p = spearman([t_acc[n] for n in order], means)
        best = max(order, key=lambda n: by[(n, m)].mean)
        stats[m] = {"rho": rho, "p": p, "best_teacher": best}
        lines.append(f"| {m} | {rho:+.2f} | {p:.3f} | {best} |")
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    (out / "spearman.json").write_text(json.dumps(stats, indent=2))
    plot(results, t_acc, alone, out / "results.png", title)
    return md


def plot(results: Sequence[Result], t_acc: Dict[str, float], alone: Result, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r.row, r.col): r for r in results}
    order = sorted(t_acc, key=lambda n: t_acc[n])
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    xs = [100 * t_acc[n] for n in order]
    for i, m in enumerate(VARIANTS):
        ys = [100 * by[(n, m)].mean for n in order]
        es = [100 * by[(n, m)].std for n in order]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"student + {m}", color=f"C{i}")
    lo, hi = 100 * (alone.mean - alone.std), 100 * (alone.mean + alone.std)
    ax.axhspan(lo, hi, color="grey", alpha=0.2)
    ax.axhline(100 * alone.mean, color="grey", linestyle="--", label="student alone (± std)")
    ax.set_xlabel("teacher test accuracy (%)")
    ax.set_ylabel("student test accuracy (%)")
    top = ax.twiny()  # the teachers' names above their accuracies
    top.set_xlim(ax.get_xlim())
    top.set_xticks(xs)
    top.set_xticklabels(order, rotation=45, ha="left", fontsize=7)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reproduce_dpk_teacher_size(out: Path, quick: bool = False, seeds=None, log=print) -> str:
    s = SCALES["quick" if quick else "full"]
    check_data()
    seeds = tuple(seeds or s["seeds"])
    teachers = train_teachers(out, s, log)
    results = run_grid(cells(out, s, seeds), out, log)
    scale = "quick" if quick else "full"
    images = (f"teachers on {s['subset']} training images, students on {s['student_subset']}"
              if "student_subset" in s else f"{s['subset']} training images")
    title = (f"Student {STUDENT} vs teacher size on Fashion-MNIST ({scale} scale: {images}, "
             f"{s['epochs']} epochs)")
    md = summarise(results, teachers, out, title, seeds)
    for r in results:
        if r.values:
            log(f"  {r.row} / {r.col}: {statistics.fmean(r.values):.4f}")
    return md
