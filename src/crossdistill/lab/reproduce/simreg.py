"""``crossdistill reproduce simreg``: SimReg's ablations on real offline data (Fashion-MNIST), label-free.

Two teachers that crossdistill trains itself, of different architectures: a **self-supervised**
ResNet-20 (SimCLR, no labels) and a **supervised** VGG-8 (cross-entropy). Every student is a
ResNet-8 distilled **without labels** (``task: self_supervised``: the distillation term is the
only loss, as in the paper) and judged by its frozen backbone: k-NN (k = 1, 20) and a linear
probe on the pooled feature. The teachers learn from the first ``teacher_subset`` training images,
the students from the first ``subset`` (those images are the k-NN bank and the probe's training
data; the first ``subset`` test images are the test set, for students and teachers alike).

Rows: SimReg's head depth (none / linear / 2-layer / 4-layer), different views, the inverted head,
the supervised teacher, both teachers with independent 4-layer or linear heads, the baselines
from this package (CRD without labels, CC) and a student trained with SimCLR itself. Loss weights
are the package defaults, set a priori (each student has a single term, so a weight only rescales
the learning rate); nothing is tuned on the test split. Reference rows (not trained here): a
randomly initialised ResNet-8 and the two teachers.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or the IDX files under
``$CROSSDISTILL_DATA/fashion-mnist``); without it the command stops with the install line.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from ...build import build_data
from ...commands.representation import evaluate_representation
from ...config import deep_merge, parse_config
from ...data import create_dataset
from ...engine.representation import extract_features, knn_eval, linear_probe
from ...errors import NonFiniteLossError
from ...models import create_model
from .grid import Result, slug, train_config, write_tables

SCALES: Dict[str, Dict[str, Any]] = {
    "quick": dict(subset=2000, teacher_subset=2000, epochs=4, ssl_epochs=6, sup_epochs=4, batch_size=128, nce_k=1024,
                  probe_epochs=100, seeds=(0, 1, 2)),
    # a teacher worth distilling (issue 22; NOT run yet, docs/simreg.md has the recipe and its cost): SimCLR
    # for 100 epochs on all 60 000 training images with a 4× wider ResNet-20 (ssl_teacher), the
    # supervised teacher on all 60 000 too; students on 10 000 images for 30 epochs (the first attempt's
    # 6-epoch students gained +1.5 to +3.1 points from 12 epochs: not at a plateau)
    "full": dict(subset=10000, teacher_subset=60000, epochs=30, ssl_epochs=100, sup_epochs=15, batch_size=128,
                 nce_k=4096, probe_epochs=100, seeds=(0, 1, 2),
                 ssl_teacher={"name": "resnet_width", "options": {"depth": 20, "width": 64}}),
    # the first attempt (docs/results.md#simreg): a weak SimCLR teacher (15 epochs on 10 000 images,
    # 81.5 % linear probe), 6-epoch students; about 80 CPU-minutes on one thread
    "first-attempt": dict(subset=5000, teacher_subset=10000, epochs=6, ssl_epochs=15, sup_epochs=6, batch_size=128,
                          nce_k=2048, probe_epochs=100, seeds=(0, 1, 2)),
}
SSL_TEACHER, SUP_TEACHER, STUDENT = "resnet20", "vgg8", "resnet8"
METRICS = (("knn_k1", "k-NN k=1"), ("knn_k20", "k-NN k=20"), ("linear", "linear probe"))
#: the row trained once more, twice as long (first seed), to see whether the students had plateaued
PLATEAU_ROW = "SimReg, SSL teacher: 4-layer head"


def _data(s: Dict[str, Any], augment: str, copies: int = 1, subset: str = "subset") -> Dict[str, Any]:
    # ``subset`` keeps the first N images of each split (training and test)
    return {"name": "fashion_mnist", "batch_size": s["batch_size"], "augment": augment, "copies": copies,
            "options": {"subset": s[subset]}}


def _train(epochs: int, lr: float) -> Dict[str, Any]:
    return {"epochs": epochs, "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
            "schedule": {"name": "cosine"}, "progress": False}


def teacher_configs(s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The self-supervised teacher (SimCLR, no labels) and the supervised one."""
    # SimCLR gets a larger batch (more negatives per image; the cost per image is the same)
    ssl = {"seed": 1000, "task": "self_supervised",
           "data": {**_data(s, "ssl", copies=2, subset="teacher_subset"), "batch_size": 2 * s["batch_size"]},
           "student": s.get("ssl_teacher", {"name": SSL_TEACHER}), "distill": {"terms": [{"method": "simclr", "temperature": 0.5}]},
           "train": _train(s["ssl_epochs"], 0.3)}
    sup = {"seed": 1000, "task": "classification", "data": _data(s, "crop_flip", subset="teacher_subset"),
           "student": {"name": SUP_TEACHER}, "train": _train(s["sup_epochs"], 0.05)}
    return {"ssl": ssl, "sup": sup}


def student_cells(s: Dict[str, Any], teachers: Dict[str, str]) -> List[Tuple[str, Dict[str, Any]]]:
    """(row label, config) of every student; ``teachers`` maps ssl/sup to checkpoint paths."""
    base = {"task": "self_supervised", "data": _data(s, "resized_crop_flip"), "student": {"name": STUDENT},
            "train": _train(s["epochs"], 0.05)}
    t_all = {n: {"checkpoint": p} for n, p in teachers.items()}

    def simreg(names, **options):
        return deep_merge(base, {"teachers": {n: t_all[n] for n in names},
                                 "distill": {"terms": [{"method": "simreg", "from_teacher": list(names), **options}]}})

    different = simreg(["ssl"], head_layers=4)
    different = deep_merge(different, {"data": {"copies": 2}, "teachers": {"ssl": {"input_field": "input_1"}}})
    one_term = {"teachers": {"ssl": t_all["ssl"]}}
    return [
        ("SimReg, SSL teacher: no head", simreg(["ssl"], head_layers=0)),
        ("SimReg, SSL teacher: linear head", simreg(["ssl"], head_layers=1)),
        ("SimReg, SSL teacher: 2-layer head", simreg(["ssl"], head_layers=2)),
        ("SimReg, SSL teacher: 4-layer head", simreg(["ssl"], head_layers=4)),
        ("SimReg, SSL teacher: 4-layer, different views", different),
        ("SimReg, SSL teacher: 4-layer inverted (teacher side)", simreg(["ssl"], head_layers=4, projector="inverted")),
        ("SimReg, supervised teacher: 4-layer head", simreg(["sup"], head_layers=4)),
        ("SimReg, both teachers: 4-layer heads", simreg(["ssl", "sup"], head_layers=4)),
        ("SimReg, both teachers: linear heads", simreg(["ssl", "sup"], head_layers=1)),
        ("CRD (no labels), SSL teacher", deep_merge(base, {**one_term, "distill": {"terms": [
            {"method": "crd", "from_teacher": "ssl", "nce_k": s["nce_k"]}]}})),
        ("CC, SSL teacher", deep_merge(base, {**one_term, "distill": {"terms": [{"method": "cc", "from_teacher": "ssl"}]}})),
        ("SimCLR on the student itself (no teacher)", deep_merge(base, {
            "data": {"augment": "ssl", "copies": 2}, "distill": {"terms": [{"method": "simclr"}]},
            "train": {"optimizer": {"lr": 0.3}}})),
    ]


def evaluate_run(folder: Path, probe_epochs: int = 100, overrides: Sequence[str] = ()) -> Dict[str, float]:
    """k-NN (k = 1, 20) and linear probe of ``folder/student.pt``; read back from eval.json when done."""
    path = folder / "eval.json"
    held = json.loads(path.read_text()) if path.is_file() else {}
    if "knn" not in held or "linear" not in held:
        evaluate_representation(str(folder / "student.pt"), ["knn", "linear"], overrides, ks=(1, 20), epochs=probe_epochs)
        held = json.loads(path.read_text())
    return {"knn_k1": held["knn"]["knn_k1"], "knn_k20": held["knn"]["knn_k20"], "linear": held["linear"]["linear"]}


def ssl_label(s: Dict[str, Any]) -> str:
    """The SSL teacher's name in the tables: ``ResNet-20`` or ``ResNet-20 ×4 wide``."""
    spec = s.get("ssl_teacher", {"name": SSL_TEACHER})
    if spec["name"] == "resnet_width":
        o = spec["options"]
        return f"ResNet-{o['depth']} ×{o['width'] // 16} wide"
    return {"resnet20": "ResNet-20"}.get(spec["name"], spec["name"])


def reference_rows(s: Dict[str, Any], seeds: Sequence[int], teacher_dirs: Dict[str, Path], out: Path) -> Dict[str, Dict[str, float]]:
    """The teachers' own scores and a randomly initialised student's (mean over seeds), not trained here."""
    # on the students' images (their k-NN bank, probe data and test images), not the teachers' larger subset
    same = [f"data.options.subset={s['subset']}"]
    rows = {f"SSL teacher ({ssl_label(s)}, SimCLR {s['ssl_epochs']} epochs)": evaluate_run(teacher_dirs["ssl"], s["probe_epochs"], same),
            "supervised teacher (VGG-8)": evaluate_run(teacher_dirs["sup"], s["probe_epochs"], same)}
    cache = out / "random_init.json"
    if cache.is_file():
        rows.update(json.loads(cache.read_text()))
        return rows
    scores: Dict[str, List[float]] = {}
    cfg = parse_config({"data": _data(s, "none"), "student": {"name": STUDENT}, "task": "self_supervised"})
    train, test, info, _ = build_data(cfg)
    for seed in seeds:
        torch.manual_seed(seed)
        model = create_model(STUDENT, num_classes=info.num_classes, in_channels=info.in_channels)
        feats = extract_features(model, train, test, num_classes=info.num_classes)
        for k, v in {**knn_eval(feats), **linear_probe(feats, epochs=s["probe_epochs"])}.items():
            scores.setdefault(k, []).append(v)
    rand = {"random-init ResNet-8 (no training)": {k: statistics.fmean(v) for k, v in scores.items()}}
    cache.write_text(json.dumps(rand))
    rows.update(rand)
    return rows


def reproduce_simreg(out: Path, quick: bool = False, seeds=None, log: Callable[[str], None] = print) -> str:
    s = SCALES["quick" if quick else "full"]
    seeds = tuple(seeds or s["seeds"])
    create_dataset("fashion_mnist", "test", subset=1)  # no data set: the install line, before any work
    teacher_dirs = {"ssl": out / "teacher_ssl", "sup": out / "teacher_sup"}
    for name, cfg in teacher_configs(s).items():
        log(f"teacher {name}: {cfg['student']['name']} ({'SimCLR, no labels' if name == 'ssl' else 'supervised'})")
        train_config(cfg, teacher_dirs[name], log)
    checkpoints = {n: str(d / "student.pt") for n, d in teacher_dirs.items()}
    results: List[Result] = []
    curves: Dict[str, List[List[float]]] = {}
    cells = student_cells(s, checkpoints)
    for row, cfg in cells:
        values: Dict[str, List[float]] = {m: [] for m, _ in METRICS}
        diverged, seconds = 0, 0.0
        for seed in seeds:
            folder = out / "runs" / f"{slug(row)}__s{seed}"
            try:
                train_config(deep_merge(cfg, {"seed": seed}), folder, log)
            except NonFiniteLossError as e:  # a diverged run is a result too: reported, not hidden
                log(f"  {folder.name}: diverged ({e})")
                diverged += 1
                continue
            for m, v in evaluate_run(folder, s["probe_epochs"]).items():
                values[m].append(v)
            curves.setdefault(row, []).append(_monitor_curve(folder))
            seconds += _seconds(folder)
        for m, label in METRICS:
            results.append(Result(label, row, m, values[m], seconds, diverged))
    longer = longer_training(dict(cells), s, seeds[0], out, log)
    refs = reference_rows(s, seeds, teacher_dirs, out)
    title = (f"SimReg on Fashion-MNIST without labels ({'quick' if quick else 'full'} scale: students "
             f"{s['epochs']} epochs on {s['subset']} images, teachers on {s['teacher_subset']})")
    md = write_tables(results, out, title, scale=100.0, transpose=True)
    md = md.replace("(last epoch)", "(of the final student's frozen backbone, %)")
    md += "\nReference rows (one run each; the random student: mean over the seeds):\n\n"
    md += "| | k-NN k=1 | k-NN k=20 | linear probe |\n|---|---|---|---|\n"
    for name, r in refs.items():
        md += f"| {name} | {100 * r['knn_k1']:.2f} | {100 * r['knn_k20']:.2f} | {100 * r['linear']:.2f} |\n"
    md += "\n" + plateau_note(curves) + "\n"
    if longer:
        md += (f"\nTrained twice as long ({2 * s['epochs']} epochs, seed {seeds[0]}), the row '{PLATEAU_ROW}' gives "
               + ", ".join(f"{label} {100 * longer['long'][m]:.2f}" for m, label in METRICS)
               + " against " + ", ".join(f"{100 * longer['short'][m]:.2f}" for m, _ in METRICS)
               + f" after {s['epochs']} epochs (same seed).\n")
    (out / "results.md").write_text(md)
    plot_table(results, refs, out / "results.png", title)
    plot_curves(curves, out / "curves.png")
    return md


def longer_training(cells: Dict[str, Dict[str, Any]], s: Dict[str, Any], seed: int, out: Path,
                    log: Callable[[str], None]) -> Dict[str, Dict[str, float]]:
    """The plateau check: PLATEAU_ROW once more with twice the epochs (the cosine schedule stretched)."""
    if PLATEAU_ROW not in cells:
        return {}
    folder = out / "runs" / f"{slug(PLATEAU_ROW)}__twice-as-long__s{seed}"
    train_config(deep_merge(cells[PLATEAU_ROW], {"seed": seed, "train": {"epochs": 2 * s["epochs"]}}), folder, log)
    short = out / "runs" / f"{slug(PLATEAU_ROW)}__s{seed}"
    return {"long": evaluate_run(folder, s["probe_epochs"]), "short": evaluate_run(short, s["probe_epochs"])}


def _monitor_curve(folder: Path) -> List[float]:
    """The per-epoch leave-one-out k-NN monitor of one run (metrics.jsonl eval records)."""
    out = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "knn_acc" in rec:
            out.append(float(rec["knn_acc"]))
    return out


def _seconds(folder: Path) -> float:
    stamp = folder / "grid_config.json"
    done = folder / "summary.json"
    return max(0.0, done.stat().st_mtime - stamp.stat().st_mtime) if stamp.exists() and done.exists() else 0.0


def plateau_note(curves: Dict[str, List[List[float]]]) -> str:
    """How much each row's k-NN monitor still moved over its last quarter of training (mean over seeds)."""
    gains = []
    for row, runs in curves.items():
        runs = [r for r in runs if len(r) >= 2]
        if not runs:
            continue
        back = max(1, len(runs[0]) // 4)
        gains.append((row, statistics.fmean(100 * (r[-1] - r[-1 - back]) for r in runs), back))
    if not gains:
        return ""
    worst = max(gains, key=lambda g: abs(g[1]))
    return (f"Plateau check (leave-one-out k-NN monitor on the test split, per epoch; `curves.png`): over the "
            f"last {worst[2]} epoch(s) the largest change of any row is {worst[1]:+.2f} points ({worst[0]}).")


def plot_table(results: Sequence[Result], refs: Dict[str, Dict[str, float]], path: Path, title: str) -> None:
    """One panel per metric: a horizontal bar per row (mean ± std), the reference rows as vertical lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(r.col for r in results))
    by = {(r.row, r.col): r for r in results}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 0.32 * len(rows) + 1.8), sharey=True)
    for ax, (metric, label) in zip(axes, METRICS):
        got = [by.get((label, row)) for row in rows]
        means = [100 * r.mean if r and r.values else float("nan") for r in got]
        stds = [100 * r.std if r and r.values else 0.0 for r in got]
        ax.barh(range(len(rows)), means, xerr=stds, capsize=2, color=[f"C{i % 10}" for i in range(len(rows))])
        for i, (name, ref) in enumerate(refs.items()):
            ax.axvline(100 * ref[metric], color="k", linestyle=(":", "--", "-.")[i % 3], linewidth=1, label=name)
        finite = [m for m in means if m == m] + [100 * r[metric] for r in refs.values()]
        lo, hi = min(finite), max(finite)
        ax.set_xlim(lo - 0.15 * (hi - lo) - 1, hi + 0.15 * (hi - lo) + 1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("top-1 (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels(rows, fontsize=7)
    axes[0].invert_yaxis()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: Dict[str, List[List[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (row, runs) in enumerate(curves.items()):
        n = min(len(r) for r in runs) if runs else 0
        if n == 0:
            continue
        mean = [statistics.fmean(r[e] for r in runs) * 100 for e in range(n)]
        ax.plot(range(1, n + 1), mean, marker="o", ms=3, label=row, color=f"C{i % 10}",
                linestyle="-" if i < 10 else "--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("k-NN monitor, k=20 (%)")
    ax.set_title("Students' leave-one-out k-NN on the test split, per epoch (mean over seeds)", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
