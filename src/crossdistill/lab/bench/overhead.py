"""``crossdistill bench overhead [precision=both rounds=15 methods=all ...] [--quick]``: what each method
costs inside a real training step, against the compute no method can avoid.

For every registered method (the registry is read when the benchmark runs, so a new method is
measured without touching this file) and every recipe of the reference pair
(``configs/cifar100/resnet32x4_resnet8x4/*.yaml``, e.g. ``crd_kd`` = CRD + KD, ``fitnet_inverted``),
one training step — forward, backward, optimiser step — through the same ``Distiller`` that
``crossdistill train`` builds (``build.build_distiller``: the recipe's terms and options, init phases
and ``DataSetup`` as in training; a method without a recipe runs with its defaults), on
resnet32x4 → resnet8x4, batch 64, 32×32, 100 classes, CRD with n = 50 000 samples and K = 16 384.
The teacher is randomly initialised (its weights do not change the cost).

Each row is divided by the **unavoidable** compute timed in the same rounds at the same precision:
the student's supervised step (forward, cross-entropy, backward, SGD) plus one teacher forward under
``no_grad`` — or the student's step alone when no active term reads a teacher (``spectral``, AB in
its main phase). A recipe with several augmented views (MLKD's weak and strong, ``data.copies: 2``)
is divided by that compute on every view: one step of both networks on a batch of ``views × b``
(its teacher declared once per view, as the recipe declares it). Rows that read a teacher are also
divided by the KD step (the goal for CRD). Every variant is timed once per round, in an order that rotates round by round; ratios are medians of
same-round ratios, with their quartiles as the spread. Methods with extra phases (AB/FT/FSP init) get
a second row ``<method>:<phase>`` for that phase's step. Peak memory: one step of each variant in a
fresh process (``memory=false`` skips it).

``precision``: ``fp32``, ``bf16`` (bf16 autocast + channels_last, the trainer's CPU default where
the CPU has fast bf16), or ``both``. ``clock=cpu`` (with ``threads=1``) times process CPU time
instead of the wall clock, for a machine shared with other jobs (the final figures: ``clock=wall``
on a quiet machine). Output: one line per row ``<method> … <ratio>x``, JSON in
``runs/bench/overhead.json``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ...build import build_distiller, build_task
from ...config import RECIPES, load_config, read_yaml
from ...data.registry import DatasetInfo
from ...errors import CrossDistillError
from ...methods import METHODS
from ...models import create_model
from ...options import options_model
from .common import in_fresh_process, interleave, machine, peak_mib, pick_device, ratios, summarise, table, write_json
from ._steps import PRECISIONS, distiller_step, random_batch, supervised_step, teacher_student_step

DEFAULTS: Dict[str, Any] = {
    "student": "resnet8x4", "teacher": "resnet32x4", "b": 64, "size": 32, "classes": 100,
    "n": 50000, "k": 16384, "rounds": 15, "warmup": 2, "precision": "both", "methods": "all",
    "recipes": "cifar100/resnet32x4_resnet8x4", "phases": True, "memory": True, "device": "auto",
    "clock": "wall", "threads": None, "seed": 0, "out": "runs/bench/overhead.json",
}
QUICK = {"rounds": 3, "warmup": 1}
CHOICES = {"precision": ("both", "fp32", "bf16"), "device": ("auto", "cpu", "cuda"), "clock": ("wall", "cpu")}
#: precision option → the (autocast dtype, channels_last) pairs measured
MODES = {"fp32": ["fp32"], "bf16": ["bf16 + channels_last"], "both": ["fp32", "bf16 + channels_last"]}
STUDENT, STUDENT_TEACHER = "student step", "student step + teacher forward"


# ------------------------------------------------------------------------------ what is measured

def _recipe_dir(o: Dict[str, Any]) -> Path:
    return RECIPES / o["recipes"]


def rows(o: Dict[str, Any]) -> List[str]:
    """Every registered method and every recipe of the reference pair, or the ``methods`` list."""
    if o["methods"] != "all":
        return [m.strip() for m in str(o["methods"]).split(",") if m.strip()]
    recipes = {p.stem for p in _recipe_dir(o).glob("*.yaml") if not p.name.startswith("_")}
    return sorted(set(METHODS.names()) | recipes)


def row_config(o: Dict[str, Any], row: str):
    """The row's recipe (or the pair's base with the method at its defaults), with a random teacher
    of the benchmark's architecture and the benchmark's student, K and seed."""
    folder = _recipe_dir(o)
    recipe = folder / f"{row}.yaml"
    raw = read_yaml(recipe if recipe.is_file() else folder / "_base.yaml")
    if not recipe.is_file():
        raw.setdefault("distill", {})["terms"] = [{"method": row}]
    random_teacher = {"model": o["teacher"], "num_classes": o["classes"], "random_init": True}
    # every teacher the recipe declares (MLKD: the same one on the strong view) random, on its own input field
    raw["teachers"] = {name: {**random_teacher, **{k: v for k, v in spec.items() if k == "input_field"}}
                       for name, spec in {"default": {}, **raw.get("teachers", {})}.items()}
    raw["student"] = {"name": o["student"]}
    raw["seed"] = o["seed"]
    for term in raw.get("distill", {}).get("terms", []):
        if _accepts(term["method"], "nce_k"):
            term["nce_k"] = o["k"]
    return load_config(data=raw)


def _accepts(method: str, option: str) -> bool:
    return method in METHODS and option in options_model(METHODS.get(method)).model_fields


def _info(o: Dict[str, Any]):
    return DatasetInfo(num_classes=o["classes"], in_channels=3, image_size=(o["size"], o["size"]),
                       fields=("input", "label"))


def build_row(o: Dict[str, Any], row: str, batch, device: torch.device, channels_last: bool):
    """The row's Distiller as ``crossdistill train`` builds it, on ``device``, for a data set of
    ``n`` samples with balanced random labels, and its number of augmented views."""
    cfg = row_config(o, row)
    info = _info(o)
    g = torch.Generator().manual_seed(o["seed"])
    labels = (torch.arange(o["n"]) % o["classes"])[torch.randperm(o["n"], generator=g)]
    distiller, _ = build_distiller(cfg, info, build_task("classification", info), batch["input"][:2].cpu().contiguous(),
                                   o["n"], labels)
    distiller = distiller.to(device)
    if channels_last:  # as the trainer does
        distiller.student.to(memory_format=torch.channels_last)
    return distiller, cfg.data.copies


def with_views(batch: Dict[str, Any], views: int, seed: int) -> Dict[str, Any]:
    """``batch`` with the extra views ``input_1`` … ``input_{views-1}`` (other random images, the same layout)."""
    g = torch.Generator().manual_seed(seed + 1)
    x = batch["input"]
    extra = {f"input_{v}": torch.randn(x.shape, generator=g).to(x.device).contiguous(memory_format=_layout(x))
             for v in range(1, views)}
    return {**batch, **extra}


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def all_views(batch: Dict[str, Any], views: int) -> Dict[str, Any]:
    """One batch of every view's images and labels (the networks' compute on ``views`` views)."""
    keys = ["input"] + [f"input_{v}" for v in range(1, views)]
    x = torch.cat([batch[k] for k in keys]).contiguous(memory_format=_layout(batch["input"]))
    return {"input": x, "label": batch["label"].repeat(views)}


def with_sample_fields(distiller, batch: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """``batch`` with the per-sample fields the row's methods declare (CRD's contrast indices), drawn
    once beforehand: in training the loader's workers draw them, off the timed step."""
    fields = distiller.sample_fields()
    if not fields:
        return batch
    index = batch["index"].cpu().tolist()
    extra = {key: torch.stack([torch.as_tensor(fn(i, np.random.default_rng([seed, 0, i, k]))) for i in index])
             for k, (key, fn) in enumerate(fields.items())}
    return {**batch, **{key: v.to(batch["index"].device) for key, v in extra.items()}}


def _reads_teacher(distiller, phase: str) -> bool:
    return any(t.needs_teacher and t.active_in(phase) for t in distiller.terms)


def variants(o: Dict[str, Any], mode: str, device: torch.device):
    """``{name: step}``, ``{row name: baseline name}``, the rows that read a teacher, and skipped rows."""
    dtype, channels_last = PRECISIONS[mode]
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    batch = random_batch(o["b"], o["size"], o["classes"], seed=o["seed"], device=device, channels_last=channels_last)
    batch["index"] = torch.randperm(o["n"], generator=torch.Generator().manual_seed(o["seed"]))[: o["b"]].to(device)

    def net(name: str, layout: bool) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o["seed"])
            m = create_model(name, num_classes=o["classes"]).to(device)
        return m.to(memory_format=torch.channels_last) if layout else m

    # the layouts the trainer uses: the student in channels_last (where the precision says so), the teacher as built
    steps: Dict[str, Callable[[], None]] = {
        STUDENT: supervised_step(net(o["student"], channels_last), batch, dtype, device),
        STUDENT_TEACHER: teacher_student_step(net(o["student"], channels_last), net(o["teacher"], False), batch,
                                              dtype, device),
    }
    baseline: Dict[str, str] = {}
    teacher_rows: List[str] = []
    skipped: Dict[str, str] = {}
    for row in rows(o):
        try:
            distiller, views = build_row(o, row, batch, device, channels_last)
        except CrossDistillError as e:
            skipped[row] = str(e)
            continue
        row_batch = with_views(batch, views, o["seed"])
        phases = ["main"] + ([p for p, _ in distiller.phases()] if o["phases"] else [])
        for phase in phases:
            name = row if phase == "main" else f"{row}:{phase}"
            if phase != "main":  # each phase its own Distiller, as the trainer's phases each have their optimiser
                distiller, _ = build_row(o, row, batch, device, channels_last)
            steps[name] = distiller_step(distiller, with_sample_fields(distiller, row_batch, o["seed"]), dtype, device, phase)
            reads = _reads_teacher(distiller, phase)
            baseline[name] = STUDENT_TEACHER if reads else STUDENT
            if views > 1:  # the networks' own compute on every view
                baseline[name] += f", {views} views"
                if baseline[name] not in steps:
                    both = all_views(row_batch, views)
                    steps[baseline[name]] = (teacher_student_step if reads else supervised_step)(
                        *([net(o["student"], channels_last)] + ([net(o["teacher"], False)] if reads else [])),
                        both, dtype, device)
            if reads:
                teacher_rows.append(name)
    return steps, baseline, teacher_rows, skipped


# ------------------------------------------------------------------------------ memory

def memory_worker(o: Dict[str, Any], mode: str) -> Dict[str, Any]:
    """Peak memory of one step of every variant (run in a fresh process on CPU)."""
    device = pick_device(o["device"])
    if o.get("threads") is not None:
        torch.set_num_threads(o["threads"])
    steps, _, _, _ = variants(o, mode, device)
    out: Dict[str, Any] = {}
    for name, step in steps.items():
        step()  # optimiser state, lazy buffers
        out[name] = peak_mib(step, device)
    return out


def _memory(o: Dict[str, Any], mode: str, device: torch.device) -> Dict[str, Any]:
    if device.type != "cpu":
        return memory_worker(o, mode)
    res = in_fresh_process("crossdistill.lab.bench.overhead:memory_worker", o, mode)
    return {} if "error" in res else res


# ------------------------------------------------------------------------------ entry point

def _measure(o: Dict[str, Any], mode: str, device: torch.device, print_fn) -> Dict[str, Any]:
    steps, baseline, teacher_rows, skipped = variants(o, mode, device)
    print_fn(f"{mode}: {len(steps)} variants, {o['warmup']} warm-up + {o['rounds']} timed rounds, "
             f"{torch.get_num_threads()} threads, {o['clock']} clock")
    times = interleave(steps, o["rounds"], o["warmup"], device, o["clock"])
    memory = _memory(o, mode, device) if o["memory"] else {}
    kd = "kd" if "kd" in times else None
    out: Dict[str, Any] = {"baselines": {}, "methods": {}, "skipped": skipped, "threads": torch.get_num_threads()}
    for name in dict.fromkeys([STUDENT, STUDENT_TEACHER, *baseline.values()]):
        out["baselines"][name] = {**summarise(times[name]), "peak_mib": memory.get(name, {}).get("peak_mib")}
    for name, base in baseline.items():
        row = {**summarise(times[name]), "baseline": base, "ratio": ratios(times[name], times[base]),
               "peak_mib": memory.get(name, {}).get("peak_mib")}
        if kd and name in teacher_rows:
            row["ratio_vs_kd"] = ratios(times[name], times[kd])
        out["methods"][name] = row
    if memory:
        out["memory_measure"] = next(iter(memory.values())).get("measure")
    return out


def _print(mode: str, res: Dict[str, Any], print_fn) -> None:
    def mib(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:.0f}"

    rows_: List[Tuple[str, ...]] = [("method", "ms/step", "baseline", "ratio", "q1–q3", "vs kd", "peak MiB")]
    for name, r in res["baselines"].items():
        rows_.append((f"[{name}]", f"{r['ms_median']:.1f}", "", "", "", "", mib(r["peak_mib"])))
    for name, r in sorted(res["methods"].items()):
        q = r["ratio"]
        vs_kd = f"{r['ratio_vs_kd']['median']:.2f}x" if "ratio_vs_kd" in r else ""
        rows_.append((name, f"{r['ms_median']:.1f}", _short(r["baseline"]),
                      f"{q['median']:.2f}x", f"{q['q1']:.2f}–{q['q3']:.2f}", vs_kd, mib(r["peak_mib"])))
    print_fn(f"-- {mode}: ratio = step / unavoidable compute in the same round "
             f"(s+t: {STUDENT_TEACHER}; s: {STUDENT}; ×N: on N views)")
    table(rows_, print_fn)
    for row, why in res["skipped"].items():
        print_fn(f"{row}: skipped ({why})")


def _short(baseline: str) -> str:
    """``student step + teacher forward, 2 views`` → ``s+t×2``."""
    head, _, views = baseline.partition(", ")
    return ("s+t" if head == STUDENT_TEACHER else "s") + (f"×{views.split()[0]}" if views else "")


def markdown(result: Dict[str, Any]) -> str:
    """The tables for ``docs/results.md`` (one per precision), ready to paste."""
    lines: List[str] = []
    o = result["options"]
    for mode, res in result["precisions"].items():
        lines += [f"**{mode}** ({o['clock']} clock, {res.get('threads', '?')} threads, {o['rounds']} rounds; "
                  "ratio = median of same-round ratios, quartiles in brackets)", "", "| method | ms/step | ratio (q1–q3) | vs KD step | peak MiB |", "|---|---|---|---|---|"]
        for name, r in res["baselines"].items():
            peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| *{name}* | {r['ms_median']:.1f} | 1 | | {peak} |")
        for name, r in sorted(res["methods"].items()):
            q = r["ratio"]
            peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            vs_kd = f"{r['ratio_vs_kd']['median']:.2f}×" if "ratio_vs_kd" in r else ""
            base = "" if r["baseline"] == STUDENT_TEACHER else f" (vs {r['baseline']})"
            lines.append(f"| {name}{base} | {r['ms_median']:.1f} | {q['median']:.2f}× ({q['q1']:.2f}–{q['q3']:.2f}) "
                         f"| {vs_kd} | {peak} |")
        lines.append("")
    return "\n".join(lines)


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    device = pick_device(o["device"])
    o = {**o, "device": device.type}
    if o["threads"] is not None:
        torch.set_num_threads(o["threads"])
    print_fn(f"overhead: {o['teacher']} → {o['student']}, batch {o['b']}, {o['size']}px, {o['classes']} classes, "
             f"CRD n={o['n']} K={o['k']}, on {device.type}")
    result: Dict[str, Any] = {"bench": "overhead", "options": o, "precisions": {}}
    for mode in MODES[o["precision"]]:
        res = _measure(o, mode, device, print_fn)
        result["precisions"][mode] = res
        _print(mode, res, print_fn)
    result["machine"] = machine(device)
    result["markdown"] = markdown(result)
    if o["out"]:
        md = Path(os.path.splitext(o["out"])[0] + ".md")
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(result["markdown"])
    write_json(result, o["out"], print_fn)
    return result
