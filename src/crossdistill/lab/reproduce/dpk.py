"""``crossdistill reproduce dpk-teacher-size``: does DPK make a larger teacher give a better student?

The DPK paper's claim (Qiu et al. 2023): with DPK the student's accuracy is positively correlated with
the teacher's, where plain KD peaks and falls as the teacher grows. Here, on real offline data
(Fashion-MNIST, Debian package ``dataset-fashion-mnist``): one student (resnet8) and five teachers
of **one depth and growing width** (``resnet_width``: ResNet-14 at widths 4, 8, 16, 32, 64 — the
same optimisation at every size, so a larger teacher is also a better one; the first attempt's
teachers grew in depth and got *worse*, docs/results.md#dpk), each trained once to its plateau on
all 60 000 training images at full resolution (28 px) — the teachers' curves are plotted
(``curves.png``) and their last-quarter gain is in the table; then the student alone, with KD, and
with DPK from every teacher, over seeds, trained to a plateau. KD reads the teacher's logits from
the teacher cache (``teacher_cache``, V stored views per image: the teacher never runs while a KD
student trains); DPK needs the teacher's live stage maps (caching them would take ~50 GB at 28 px
for the widest teacher), so its teacher runs every step.

Loss weights are fixed a priori, never tuned on the test split: KD is RepDistiller's
(``0.1·CE + 0.9·KD``, T = 4); DPK is the same plus its feature term at weight 1 (the method's
default), so DPK − KD is exactly the effect of the prior-knowledge feature term. Test accuracy is
read at the last epoch. Spearman's ρ (exact p) of the student's accuracy against the teacher's size
(parameters) and against the teacher's accuracy, for each method. See docs/dpk.md for the choices
and docs/results.md for the numbers.
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
from .grid import Cell, Result, eval_curve, last_quarter_gain, slug, run_grid, train_config
from .parallel import default_workers, train_runs, train_side_by_side

STUDENT = "resnet8"
#: the first attempt's teachers (depth grows; they got worse as they grew: kept for the old table)
DEPTH_TEACHERS = ("resnet14", "resnet20", "resnet32", "resnet56", "resnet110")
#: one depth, growing width: ``resnet14-w<width>`` is ``resnet_width(depth=14, width=<width>)``
WIDTHS = (4, 8, 16, 32, 64)
TEACHERS = tuple(f"resnet14-w{w}" for w in WIDTHS)
INSTALL = "apt-get install dataset-fashion-mnist"

SCALES: Dict[str, Dict[str, Any]] = {
    # a smoke run of the whole pipeline (every teacher, every method, the cache, the statistics) that
    # fits ~10 minutes on a 2-core AVX2 CPU: 16 px, 2 000 images, 2 seeds, short training — NOT at a
    # plateau, its numbers do not test the claim
    "quick": dict(subset=2000, epochs=4, teacher_epochs=4, teachers=TEACHERS, seeds=(0, 1), batch_size=64,
                  data_options={"image_size": 16}, kd_cache_views=2,
                  train={"precision": "fp32", "threads": 1}),
    # the test of the claim: teachers on all 60 000 images at 28 px, 15 epochs (cosine; the curves show
    # the plateau); students on the first 10 000 images, 40 epochs (the first attempt's students were
    # still rising at 32 epochs on 3 000 images), evaluated every 4th epoch on all 10 000 test images
    "full": dict(subset=60000, student_subset=10000, epochs=40, teacher_epochs=15, teachers=TEACHERS,
                 seeds=(0, 1, 2), batch_size=128, kd_cache_views=8, teacher_train={"eval_every": 1},
                 student_train={"eval_every": 4}, train={"precision": "fp32"}),
    # the test of the claim at the size of one 2-core CPU hour: 16 px, teachers on 10 000 images for 15
    # epochs, widths 2 → 32 (width 64 alone would cost more than the rest of the grid), students on
    # the first 3 000 for 32 epochs (the first attempt's student alone was flat over its last 6)
    "medium": dict(subset=10000, student_subset=3000, epochs=32, teacher_epochs=15,
                   teachers=tuple(f"resnet14-w{w}" for w in (2, 4, 8, 16, 32)), seeds=(0, 1, 2), batch_size=64,
                   data_options={"image_size": 16}, kd_cache_views=8, teacher_train={"eval_every": 3},
                   student_train={"eval_every": 4}, train={"precision": "fp32", "threads": 1}),
    # the confounded first attempt (docs/results.md#dpk): teachers of growing depth at 16 px
    "first-attempt": dict(subset=10000, student_subset=3000, epochs=16, teacher_epochs=20, teachers=DEPTH_TEACHERS,
                          seeds=(0, 1, 2), batch_size=64, data_options={"image_size": 16},
                          student_train={"eval_every": 2}),
}


def teacher_model(name: str) -> Dict[str, Any]:
    """The model config of a teacher label: ``resnet14-w32`` → ``resnet_width`` at depth 14, width 32;
    any other label is a registered model name."""
    if "-w" in name:
        depth, width = name.split("-w")
        return {"name": "resnet_width", "options": {"depth": int(depth.removeprefix("resnet")), "width": int(width)}}
    return {"name": name}


#: (label, task weight γ, the term) — DPK is KD plus its feature term
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
        "student": teacher_model(model),
        "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                  "schedule": {"name": "cosine"}, "progress": False, **s.get("train", {})},
    }


def train_teachers(out: Path, s: Dict[str, Any], log=print, workers: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """Each teacher once (seed 1000), in ``out/teachers/<name>``, ``workers`` at a time in one-thread
    processes (the widest first: it is the longest); returns name → its summary."""
    configs = {name: deep_merge(base_config(s, name, s["teacher_epochs"]), {"seed": 1000, "train": s.get("teacher_train", {})})
               for name in s["teachers"]}
    workers = workers or default_workers()
    if workers > 1:
        log(f"teachers: {len(configs)}, {workers} at a time (one thread each)")
        train_runs([(configs[n], out / "teachers" / n) for n in reversed(s["teachers"])], workers, log)
    summaries = {}
    for name, cfg in configs.items():  # trains here with one worker; reads the finished runs back otherwise
        log(f"teacher {name}")
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
            cfg = deep_merge(base, {"teachers": teacher, "distill": distill})
            if method == "KD" and s.get("kd_cache_views"):
                # KD reads only the teacher's logits: stored once per (image, view), shared by the seeds
                cfg["teacher_cache"] = {"views": s["kd_cache_views"], "dtype": "float16",
                                        "dir": str(out / "teacher_cache" / name)}
            grid.append(Cell(name, method, cfg, "acc", True, seeds))
    return grid


def parameter_count(model: str, in_channels: int = 1) -> int:
    spec = teacher_model(model)
    net = create_model(spec["name"], num_classes=10, in_channels=in_channels, **spec.get("options", {}))
    return sum(p.numel() for p in net.parameters())


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

    t_gain = {n: last_quarter_gain(eval_curve(out / "teachers" / n)) for n in teachers}
    lines = [f"### {title}", "", f"Student {STUDENT} ({parameter_count(STUDENT) / 1e6:.2f}M parameters) alone: "
             f"**{cell(alone)}**.", "",
             "| teacher | params | teacher acc | teacher gain, last ¼ of epochs | "
             + " | ".join(f"student + {m}" for m in VARIANTS)
             + " | DPK − KD | DPK teacher share per stage |", "|---|---|---|---|" + "---|" * len(VARIANTS) + "---|---|"]
    for n in teachers:
        gap = 100 * (by[(n, "DPK")].mean - by[(n, "KD")].mean)
        gain = "–" if math.isnan(t_gain[n]) else f"{100 * t_gain[n]:+.2f}"
        lines.append(f"| {n} | {params[n] / 1e6:.2f}M | {100 * t_acc[n]:.2f} | {gain} | "
                     + " | ".join(cell(by[(n, m)]) for m in VARIANTS) + f" | {gap:+.2f} | {shares(out, n, seeds)} |")
    lines += ["", f"Top-1 test accuracy (%) at the last epoch, mean ± std over {n_seeds} seeds; teachers trained "
              "once (seed 1000); their curves and the students' are in `curves.png`. DPK teacher share: the logged "
              "`dpk/share/<stage>`, averaged over training steps and seeds (1 − the smoothed CKA between the "
              "student's and the teacher's stage maps).", ""]
    rising = all(t_acc[a] < t_acc[b] for a, b in zip(teachers, list(teachers)[1:]))
    lines += [f"Teacher accuracy {'rises strictly' if rising else 'does NOT rise strictly'} with teacher size "
              "(the order of the rows).", ""]
    lines += ["| method | ρ (teacher size vs student) | p | ρ (teacher acc vs student) | p | best teacher for the student |",
              "|---|---|---|---|---|---|"]
    stats: Dict[str, Any] = {"teacher_acc_rises_strictly": rising}
    order = list(teachers)
    for m in VARIANTS:
        means = [by[(n, m)].mean for n in order]
        rho_size, p_size = spearman([params[n] for n in order], means)
        rho_acc, p_acc = spearman([t_acc[n] for n in order], means)
        best = max(order, key=lambda n: by[(n, m)].mean)
        stats[m] = {"rho_size": rho_size, "p_size": p_size, "rho_acc": rho_acc, "p_acc": p_acc, "best_teacher": best,
                    # the first attempt's keys, kept for readers of its spearman.json
                    "rho": rho_acc, "p": p_acc}
        lines.append(f"| {m} | {rho_size:+.2f} | {p_size:.3f} | {rho_acc:+.2f} | {p_acc:.3f} | {best} |")
    lines += ["", f"Spearman's ρ over the {len(order)} teachers of each method's mean student accuracy; p two-sided, "
              f"exact (the share of the {math.factorial(len(order))} orderings with |ρ| at least as large)."]
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    (out / "spearman.json").write_text(json.dumps(stats, indent=2))
    plot(results, t_acc, alone, out / "results.png", title)
    plot_curves(results, teachers, out / "curves.png", title)
    return md


def plot_curves(results: Sequence[Result], teachers: Dict[str, Dict[str, Any]], path: Path, title: str) -> None:
    """Left: each teacher's test accuracy per evaluated epoch; right: the students' (mean over seeds),
    the student alone and, per method, from the largest teacher — to see the plateaus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for i, n in enumerate(teachers):
        curve = eval_curve(path.parent / "teachers" / n)
        if curve:
            left.plot([e for e, _ in curve], [100 * a for _, a in curve], marker=".", label=n, color=f"C{i}")
    left.set_xlabel("epoch"); left.set_ylabel("teacher test accuracy (%)"); left.legend(fontsize=7)
    left.set_title("teachers", fontsize=9)
    largest = list(teachers)[-1]
    for i, r in enumerate(r for r in results if r.row in ("no teacher", largest)):
        curves = [eval_curve(Path(run)) for run in r.runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        epochs = [e for e, _ in curves[0]]
        mean = [100 * statistics.fmean(c[k][1] for c in curves if len(c) > k) for k in range(len(epochs))]
        right.plot(epochs, mean, marker=".", label=f"{r.col} ({r.row})", color=f"C{i}")
    right.set_xlabel("epoch"); right.set_ylabel("student test accuracy (%)"); right.legend(fontsize=7)
    right.set_title(f"students (mean over seeds), teacher {largest}", fontsize=9)
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def reproduce_dpk_teacher_size(out: Path, quick: bool = False, seeds=None, log=print,
                               scale: Optional[str] = None) -> str:
    """``scale``: a key of :data:`SCALES` (``quick`` with ``quick=True``, ``full`` otherwise)."""
    scale = scale or ("quick" if quick else "full")
    s = SCALES[scale]
    check_data()
    seeds = tuple(seeds or s["seeds"])
    teachers = train_teachers(out, s, log)
    grid = cells(out, s, seeds)
    # side by side: the seeds of a KD cell share its teacher's cache, which the first fills while the others wait
    train_side_by_side(grid, out, log, what="students")
    results = run_grid(grid, out, log)
    images = (f"teachers on {s['subset']} training images, students on {s['student_subset']}"
              if "student_subset" in s else f"{s['subset']} training images")
    title = (f"Student {STUDENT} vs teacher size on Fashion-MNIST ({scale} scale: {images}, "
             f"{s['epochs']} epochs)")
    md = summarise(results, teachers, out, title, seeds)
    for r in results:
        if r.values:
            log(f"  {r.row} / {r.col}: {statistics.fmean(r.values):.4f}")
    return md
