"""``crossdistill reproduce simreg``: SimReg's ablations on real offline data (Fashion-MNIST), label-free.

Two teachers that crossdistill trains itself, of different architectures: a **self-supervised**
ResNet-20 (SimCLR, no labels) and a **supervised** VGG-8 (cross-entropy). Every student is a
ResNet-8 distilled **without labels** (``task: self_supervised``: the distillation term is the
only loss, as in the paper) and judged by its frozen backbone: k-NN (k = 1, 20) and a linear
probe on the pooled feature. The teachers learn from the first ``teacher_subset`` training images,
the students from the first ``subset`` (those images are the k-NN bank and the probe's training
data; the first ``subset`` test images are the test set, for students and teachers alike).

Rows: SimReg's head depth (none / linear / 2-layer / 4-layer; the paper's heads and the released
code's), different views, the inverted head, the supervised teacher (with its own head ablation where
the scale sets ``supervised_head_ablation``), both teachers with independent 4-layer or linear heads, the baselines
from this package (CRD without labels, CC) and a student trained with SimCLR itself. SimReg's rows
keep the paper's loss (weight 1); where the scale sets ``select``, the baselines' weights are chosen
among ``select.factors`` × their defaults by the k-NN monitor on a validation part of the students'
training images (first seed), never on the test split (``first-attempt`` keeps the defaults).
Reference rows (not trained here): a randomly initialised ResNet-8 and the two teachers. The runs
train side by side, one single-thread process per core (:mod:`.parallel`); scoring reads them back.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or the IDX files under
``$CROSSDISTILL_DATA/fashion-mnist``); without it the command stops with the install line.
"""
from __future__ import annotations

import csv
import json
import statistics
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ...build import build_data
from ...commands.representation import evaluate_representation
from ...config import deep_merge, parse_config
from ...data import create_dataset
from ...engine.representation import extract_features, knn_eval, linear_probe
from ...errors import ConfigError, NonFiniteLossError
from ...models import create_model
from .grid import Result, slug, train_config, weight_candidates, write_tables
from .parallel import Run, default_workers, train_runs

SCALES: Dict[str, Dict[str, Any]] = {
    # 16 px (like DPK's medium scale) and 1 500 student images: the 28 px, 2 000-image quick run took
    # 14 min 27 s on the AVX2 machine, one run after another; this one, two at a time, 5 min 54 s
    # there (docs/results.md#quick-sizes)
    "quick": dict(subset=1500, teacher_subset=2000, epochs=4, ssl_epochs=6, sup_epochs=4, batch_size=128, nce_k=1024,
                  probe_epochs=100, seeds=(0, 1, 2), data_options={"image_size": 16}, train={"threads": 1},
                  select=dict(factors=(0.25, 1.0, 4.0), validation=0.2)),
    # a teacher that fits a CPU (issue 22): SimCLR for 20 epochs on 30 000 images at 16 px, 10x the
    # students' data; students on 3 000 images for 40 epochs (at 20, "medium-20", twice the epochs
    # still added +2.6 points: not a plateau); CRD's and CC's weights chosen on a validation split
    # (k-NN monitor) of the students' training images; the head ablation with the supervised teacher
    # too (supervised_head_ablation: a teacher clearly better than SimCLR on the student, which this
    # SimCLR teacher is only by ~2 points)
    "medium": dict(subset=3000, teacher_subset=30000, epochs=40, ssl_epochs=20, sup_epochs=8, batch_size=128,
                   nce_k=2048, probe_epochs=100, seeds=(0, 1, 2), data_options={"image_size": 16},
                   train={"threads": 1}, teacher_train={"eval_every": 5}, supervised_head_ablation=True,
                   select=dict(factors=(0.25, 1.0, 4.0), validation=0.2)),
    # a teacher worth distilling at full resolution (NOT run: docs/simreg.md has the recipe and its
    # cost): SimCLR for 100 epochs on all 60 000 training images with a 4x wider ResNet-20
    # (ssl_teacher), the supervised teacher on all 60 000 too; students on 10 000 images for 30 epochs
    "full": dict(subset=10000, teacher_subset=60000, epochs=30, ssl_epochs=100, sup_epochs=15, batch_size=128,
                 nce_k=4096, probe_epochs=100, seeds=(0, 1, 2),
                 ssl_teacher={"name": "resnet_width", "options": {"depth": 20, "width": 64}},
                 select=dict(factors=(0.25, 1.0, 4.0), validation=0.2)),
    # the first attempt (docs/results.md#simreg): a weak SimCLR teacher (15 epochs on 10 000 images,
    # 81.5 % linear probe), 6-epoch students; about 80 CPU-minutes on one thread
    "first-attempt": dict(subset=5000, teacher_subset=10000, epochs=6, ssl_epochs=15, sup_epochs=6, batch_size=128,
                          nce_k=2048, probe_epochs=100, seeds=(0, 1, 2)),
}
SCALES["medium-20"] = {**SCALES["medium"], "epochs": 20}  # the medium grid's first pass
SSL_TEACHER, SUP_TEACHER, STUDENT = "resnet20", "vgg8", "resnet8"
METRICS = (("knn_k1", "k-NN k=1"), ("knn_k20", "k-NN k=20"), ("linear", "linear probe"))
#: the row trained once more, twice as long (first seed), to see whether the students had plateaued
PLATEAU_ROW = "SimReg, SSL teacher: 4-layer head"


def _data(s: Dict[str, Any], augment: str, copies: int = 1, subset: str = "subset") -> Dict[str, Any]:
    # ``subset`` keeps the first N images of each split (training and test)
    return {"name": "fashion_mnist", "batch_size": s["batch_size"], "augment": augment, "copies": copies,
            "options": {**s.get("data_options", {}), "subset": s[subset]}}


def _train(s: Dict[str, Any], epochs: int, lr: float, extra: str = "") -> Dict[str, Any]:
    return {**s.get("train", {}), **s.get(extra, {}), "epochs": epochs,
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4},
            "schedule": {"name": "cosine"}, "progress": False}


def teacher_configs(s: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The self-supervised teacher (SimCLR, no labels) and the supervised one."""
    # SimCLR gets a larger batch (more negatives per image; the cost per image is the same)
    ssl = {"seed": 1000, "task": "self_supervised",
           "data": {**_data(s, "ssl", copies=2, subset="teacher_subset"), "batch_size": 2 * s["batch_size"]},
           "student": s.get("ssl_teacher", {"name": SSL_TEACHER}), "distill": {"terms": [{"method": "simclr", "temperature": 0.5}]},
           "train": _train(s, s["ssl_epochs"], 0.3, "teacher_train")}
    sup = {"seed": 1000, "task": "classification", "data": _data(s, "crop_flip", subset="teacher_subset"),
           "student": {"name": SUP_TEACHER}, "train": _train(s, s["sup_epochs"], 0.05, "teacher_train")}
    return {"ssl": ssl, "sup": sup}


def student_cells(s: Dict[str, Any], teachers: Dict[str, str]) -> List[Tuple[str, Dict[str, Any]]]:
    """(row label, config) of every student; ``teachers`` maps ssl/sup to checkpoint paths."""
    base = {"task": "self_supervised", "data": _data(s, "resized_crop_flip"), "student": {"name": STUDENT},
            "train": _train(s, s["epochs"], 0.05)}
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
        ("SimReg, SSL teacher: linear head (released code)", simreg(["ssl"], head_layers=1, head_variant="code")),
        ("SimReg, SSL teacher: 2-layer head (released code)", simreg(["ssl"], head_layers=2, head_variant="code")),
        ("SimReg, SSL teacher: 4-layer head (released code)", simreg(["ssl"], head_layers=4, head_variant="code")),
        ("SimReg, SSL teacher: 4-layer, different views", different),
        ("SimReg, SSL teacher: 4-layer inverted (teacher side)", simreg(["ssl"], head_layers=4, projector="inverted")),
        # no "no head" row: the supervised teacher's 512-d feature cannot meet the student's 64-d one
        *([("SimReg, supervised teacher: linear head", simreg(["sup"], head_layers=1)),
           ("SimReg, supervised teacher: 2-layer head", simreg(["sup"], head_layers=2))]
          if s.get("supervised_head_ablation") else []),
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


#: the baselines whose loss weight is chosen on a validation split (SimReg's own rows keep the paper's)
SELECTED_ROWS = ("CRD (no labels), SSL teacher", "CC, SSL teacher")


def selection_runs(cells: Dict[str, Dict[str, Any]], s: Dict[str, Any], seed: int, out: Path) -> Dict[str, Dict[str, Run]]:
    """Per baseline row, its weight candidates: ``{row: {label: (config, folder)}}``. Each candidate
    trains once (first seed) on the students' training images minus a held-out validation part and is
    scored by its k-NN monitor there — never on the test split."""
    if "select" not in s:
        return {}
    sel = s["select"]
    return {row: {label: (deep_merge(deep_merge(cells[row], patch), {"seed": seed, "data": {"validation": sel["validation"]}}),
                          out / "selection" / slug(f"{row}__{label}__s{seed}"))
                  for label, patch in weight_candidates(cells[row], sel["factors"]).items()}
            for row in SELECTED_ROWS if row in cells}


def choose_weights(candidates: Dict[str, Dict[str, Run]], log: Callable[[str], None]) -> Tuple[Dict[str, str], List[List[Any]]]:
    """Train (or read back) every candidate; ``({row: best label}, selection table rows)``."""
    chosen, table = {}, []
    for row, runs in candidates.items():
        scores = {}
        for label, (config, folder) in runs.items():
            try:
                summary = train_config(config, folder, log)
            except NonFiniteLossError:
                scores[label] = float("-inf")
                continue
            if summary.get("eval_split") != "validation":
                raise ConfigError(f"selection run '{folder}' was not scored on a validation split")
            scores[label] = float(summary["last"]["knn_acc"])
        if all(v == float("-inf") for v in scores.values()):
            raise NonFiniteLossError(f"every weight candidate of '{row}' diverged on the validation split "
                                     f"({', '.join(scores)}); choose smaller factors in the scale's 'select'")
        chosen[row] = max(scores, key=scores.get)
        table += [[row, label, score, int(label == chosen[row])] for label, score in scores.items()]
    return chosen, table


def reproduce_simreg(out: Path, quick: bool = False, seeds=None, log: Callable[[str], None] = print,
                     scale: Optional[str] = None, workers: Optional[int] = None) -> str:
    """``scale``: a key of :data:`SCALES` (``quick`` with ``quick=True``, ``full`` otherwise). The runs
    train ``workers`` at a time in one-thread processes (default: one per core), then are read back."""
    scale = scale or ("quick" if quick else "full")
    s = SCALES[scale]
    seeds = tuple(seeds or s["seeds"])
    workers = workers or default_workers()
    create_dataset("fashion_mnist", "test", subset=1)  # no data set: the install line, before any work
    teacher_dirs = {"ssl": out / "teacher_ssl", "sup": out / "teacher_sup"}
    teachers = teacher_configs(s)
    for name, cfg in teachers.items():
        log(f"teacher {name}: {cfg['student']['name']} ({'SimCLR, no labels' if name == 'ssl' else 'supervised'})")
    if workers > 1:
        train_runs([(cfg, teacher_dirs[n]) for n, cfg in teachers.items()], workers, log)
    for name, cfg in teachers.items():
        train_config(cfg, teacher_dirs[name], log)
    checkpoints = {n: str(d / "student.pt") for n, d in teacher_dirs.items()}
    cells = dict(student_cells(s, checkpoints))
    candidates = selection_runs(cells, s, seeds[0], out)
    # the plateau check's row keeps the paper's loss: it does not wait for a choice either
    plateau = deep_merge(cells[PLATEAU_ROW], {"seed": seeds[0], "train": {"epochs": 2 * s["epochs"]}}) if PLATEAU_ROW in cells else None
    # the runs that do not wait for a choice go first, side by side: the candidates (one pool, their
    # scores decide the weights), then the other rows' seeds and the plateau check (the longest run first)
    fixed = [(plateau, _longer_dir(out, seeds[0]))] if plateau is not None else []
    fixed += [(deep_merge(cfg, {"seed": seed}), _run_dir(out, row, seed)) for row, cfg in cells.items()
              if row not in candidates for seed in seeds]
    score = partial(evaluate_run, probe_epochs=s["probe_epochs"])  # probes run in the workers too
    if workers > 1:
        train_runs([r for runs in candidates.values() for r in runs.values()], workers, log)
        train_runs(fixed, workers, log, then=score)
    chosen, selection = choose_weights(candidates, log)
    for row, label in chosen.items():
        log(f"  {row}: {label} chosen on the validation split")
        cells[row] = deep_merge(cells[row], weight_candidates(cells[row], s["select"]["factors"])[label])
    if workers > 1:
        chosen_runs = [(deep_merge(cells[row], {"seed": seed}), _run_dir(out, row, seed)) for row in chosen for seed in seeds]
        train_runs(chosen_runs, workers, log, then=score)
    results: List[Result] = []
    curves: Dict[str, List[List[float]]] = {}
    for row, cfg in cells.items():
        values: Dict[str, List[float]] = {m: [] for m, _ in METRICS}
        diverged, seconds = 0, 0.0
        for seed in seeds:
            folder = _run_dir(out, row, seed)
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
    longer = longer_training(plateau, s, seeds[0], out, log) if plateau is not None else {}
    refs = reference_rows(s, seeds, teacher_dirs, out)
    title = (f"SimReg on Fashion-MNIST without labels ({scale} scale: students "
             f"{s['epochs']} epochs on {s['subset']} images, teachers on {s['teacher_subset']})")
    md = write_tables(results, out, title, scale=100.0, transpose=True)
    md = md.replace("(last epoch)", "(of the final student's frozen backbone, %)")
    md += "\nReference rows (one run each; the random student: mean over the seeds):\n\n"
    md += "| | k-NN k=1 | k-NN k=20 | linear probe |\n|---|---|---|---|\n"
    for name, r in refs.items():
        md += f"| {name} | {100 * r['knn_k1']:.2f} | {100 * r['knn_k20']:.2f} | {100 * r['linear']:.2f} |\n"
    if selection:
        md += selection_note(selection, s)
        with open(out / "selection.csv", "w", newline="") as f:
            csv.writer(f).writerows([["row", "candidate", "validation_knn", "selected"], *selection])
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


def selection_note(table: Sequence[Sequence[Any]], s: Dict[str, Any]) -> str:
    """The weight selection as a table (also written to ``selection.csv``)."""
    md = (f"\nWeights of the baselines, chosen on a validation split ({s['select']['validation']} of the students' "
          "training images held out; the leave-one-out k-NN monitor after the last epoch; first seed):\n\n"
          "| row | candidate | validation k-NN | chosen |\n|---|---|---|---|\n")
    for row, label, score, picked in table:
        md += f"| {row} | {label} | {100 * score:.2f} | {'✓' if picked else ''} |\n"
    return md


def _run_dir(out: Path, row: str, seed: int) -> Path:
    return out / "runs" / f"{slug(row)}__s{seed}"


def _longer_dir(out: Path, seed: int) -> Path:
    return out / "runs" / f"{slug(PLATEAU_ROW)}__twice-as-long__s{seed}"


def longer_training(plateau: Dict[str, Any], s: Dict[str, Any], seed: int, out: Path,
                    log: Callable[[str], None]) -> Dict[str, Dict[str, float]]:
    """The plateau check: PLATEAU_ROW once more with twice the epochs (the cosine schedule stretched)."""
    folder = _longer_dir(out, seed)
    train_config(plateau, folder, log)
    return {"long": evaluate_run(folder, s["probe_epochs"]), "short": evaluate_run(_run_dir(out, PLATEAU_ROW, seed), s["probe_epochs"])}


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

    fig, ax = plt.subplots(figsize=(11, 4.5))
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
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # beside: 17 rows
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
