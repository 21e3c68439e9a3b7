"""``crossdistill bench cache [method=kd views=8 n=1024 rounds=3 ...] [--quick]``: a training epoch
with a warm teacher cache against the student-only epoch and the live-teacher epoch.

Three runs built from configs as ``crossdistill train`` builds them (``build_run``) on the built-in
``shapes`` data (``n`` training images, ``size``×``size``, the data-loader and its augmentation
included): the student alone (no teacher, no term), the student distilled with ``method`` from a
live teacher, and the same with ``teacher_cache: {views, dtype, topk}``. The cache is filled first
(its one-off cost is reported, next to a live-teacher epoch); then one epoch of each variant per
round, interleaved, ``rounds`` rounds. Reported: ms per epoch, same-round ratios to the
student-only epoch (goal for the warm cache: ≤ 1.1×), fill time, and size on disk in total and per
10 000 samples. Precision ``bf16`` (bf16 autocast + channels_last, the CPU default) or ``fp32``.
JSON in ``runs/bench/cache.json``.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict

import torch
from torch.utils.data import DataLoader

from ...build import build_run
from ...config import load_config
from ...engine.device import to_device
from ...engine.sampler import set_data_epoch
from ...teacher_cache import attach
from .common import interleave, machine, pick_device, ratios, summarise, table, write_json
from ._steps import PRECISIONS, distiller_update

DEFAULTS: Dict[str, Any] = {
    "student": "resnet8x4", "teacher": "resnet32x4", "method": "kd", "n": 1024, "b": 64, "size": 32,
    "classes": 10, "views": 8, "dtype": "float16", "topk": None, "precision": "bf16", "workers": 0,
    "rounds": 3, "warmup": 1, "dir": "", "device": "auto", "seed": 0, "out": "runs/bench/cache.json",
}
QUICK = {"rounds": 1, "warmup": 0}
CHOICES = {"precision": ("bf16", "fp32"), "dtype": ("float16", "float32"), "device": ("auto", "cpu", "cuda")}
STUDENT, LIVE, CACHED = "student only", "live teacher", "warm cache"


def _config(o: Dict[str, Any], variant: str, folder: Path):
    raw: Dict[str, Any] = {
        "seed": o["seed"], "output_dir": str(folder / "run"),
        "data": {"name": "shapes", "batch_size": o["b"], "augment": "crop_flip",
                 "options": {"num_classes": o["classes"], "image_size": o["size"], "train_size": o["n"],
                             "test_size": o["b"]}},
        "student": {"name": o["student"]},
        "train": {"device": o["device"], "precision": "bf16" if o["precision"] == "bf16" else "fp32", "progress": False},
    }
    if variant != STUDENT:
        raw["teachers"] = {"default": {"model": o["teacher"], "num_classes": o["classes"], "random_init": True}}
        raw["distill"] = {"terms": [{"method": o["method"]}]}
    if variant == CACHED:
        raw["teacher_cache"] = {"views": o["views"], "dtype": o["dtype"], "topk": o["topk"],
                                "dir": str(Path(o["dir"]) if o["dir"] else folder / "cache")}
    return load_config(data=copy.deepcopy(raw))


def _epoch(run, o: Dict[str, Any], device: torch.device) -> Callable[[], None]:
    """One epoch as the trainer runs it: the loader (augmentation, cache reads), the step."""
    dtype, channels_last = PRECISIONS["bf16 + channels_last" if o["precision"] == "bf16" else "fp32"]
    distiller = run.distiller.to(device)
    if channels_last:
        distiller.student.to(memory_format=torch.channels_last)
    update = distiller_update(distiller, dtype, device)
    loader = DataLoader(run.train_set, batch_size=o["b"], shuffle=True, num_workers=o["workers"],
                        generator=torch.Generator().manual_seed(o["seed"]))
    epoch = [0]

    def run_epoch() -> None:
        set_data_epoch(run.train_set, epoch[0])
        epoch[0] += 1
        for batch in loader:
            update(to_device(batch, device, channels_last))  # moved as the trainer moves a batch

    return run_epoch


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    device = pick_device(o["device"])
    o = {**o, "device": device.type}
    work = Path(tempfile.mkdtemp(prefix="crossdistill-bench-cache-"))
    try:
        runs = {v: build_run(_config(o, v, work)) for v in (STUDENT, LIVE, CACHED)}
        dtype, channels_last = PRECISIONS["bf16 + channels_last" if o["precision"] == "bf16" else "fp32"]
        runs[CACHED].distiller.to(device)
        t0 = time.perf_counter()
        info = attach(runs[CACHED], device, dtype, channels_last, output_dir=work / "run")
        fill_s = time.perf_counter() - t0
        print_fn(f"cache: {o['teacher']} → {o['student']} ({o['method']}), {o['n']} images of {o['size']}px, "
                 f"batch {o['b']}, {o['precision']}, V = {o['views']} {o['dtype']} views"
                 + (f", top-{o['topk']}" if o["topk"] else "") + f"; filled in {fill_s:.1f} s")
        epochs = {v: _epoch(r, o, device) for v, r in runs.items()}
        times = interleave(epochs, o["rounds"], o["warmup"], device)
        stats = {k: summarise(v) for k, v in times.items()}
        vs = {k: ratios(times[k], times[STUDENT]) for k in times}
        per_10k = info["bytes"] / o["n"] * 10_000
        table([("epoch", "s/epoch", "vs student only", "q1–q3"),
               *[(k, f"{s['ms_median'] / 1e3:.2f}", f"{vs[k]['median']:.2f}x", f"{vs[k]['q1']:.2f}–{vs[k]['q3']:.2f}")
                 for k, s in stats.items()]], print_fn)
        print_fn(f"fill: {fill_s:.1f} s once = {fill_s / (stats[LIVE]['ms_median'] / 1e3):.1f} live-teacher epochs "
                 f"(V = {o['views']} teacher passes over the data, no backward); on disk {info['bytes'] / 2**20:.1f} MiB "
                 f"= {per_10k / 2**20:.1f} MiB per 10 000 samples")
        result = {"bench": "cache", "options": o, "machine": machine(device),
                  "epochs": {k: {"s_per_epoch": s["ms_median"] / 1e3, "timing": s, "ratio_vs_student": vs[k]}
                             for k, s in stats.items()},
                  "warm_cache_vs_student": vs[CACHED]["median"], "live_vs_student": vs[LIVE]["median"],
                  "fill_seconds": fill_s, "bytes": info["bytes"], "bytes_per_10k_samples": per_10k}
        write_json(result, o["out"], print_fn)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
