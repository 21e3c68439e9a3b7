"""``crossdistill bench throughput [sizes=32,224 methods=... steps=20 ...] [--quick]``: training images
per second of the student alone and with KD, CRD, DPK and SimReg, at CIFAR and ImageNet sizes.

One training step — forward, backward, SGD step — of the Distiller ``crossdistill train`` builds
(:func:`crossdistill.lab.bench.overhead.build_row`: the reference pair's recipe where there is one, the
method's defaults otherwise; a random teacher), timed over ``steps`` steps after ``warmup``, the
device synchronised before the clock is read. The pairs: 32 px — resnet32x4 → resnet8x4, 100
classes (the CIFAR-100 pair); 224 px — ResNet34 → ResNet18, 1 000 classes (the ImageNet pair).
Precision: bf16 autocast + channels_last on a GPU (fp16 where bf16 is unsupported), fp32 on a CPU
unless ``precision`` says otherwise. Not an interleaved ratio measurement (``bench overhead`` is):
an absolute rate, for the GPU figures (``scripts/gpu_figures.sh``, docs/results/gpu.md).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List

import torch

from ...models import create_model
from ._steps import PRECISIONS, distiller_step, random_batch, supervised_step
from .common import machine, pick_device, sync, table, write_json
from .overhead import build_row, with_sample_fields, with_views

DEFAULTS: Dict[str, Any] = {
    "sizes": "32,224", "methods": "student,kd,crd,dpk,simreg", "b32": 128, "b224": 64, "steps": 20,
    "warmup": 3, "precision": "auto", "device": "auto", "n": 50000, "k": 16384, "seed": 0, "threads": None,
    "out": "runs/bench/throughput.json",
}
QUICK = {"steps": 3, "warmup": 1}
CHOICES = {"device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "bf16"), "sizes": ("32,224", 32, 224)}
#: image size → (teacher, student, classes, recipe folder whose recipes configure the methods)
PAIRS = {32: ("resnet32x4", "resnet8x4", 100, "cifar100/resnet32x4_resnet8x4"),
         224: ("ResNet34", "ResNet18", 1000, "cifar100/resnet32x4_resnet8x4")}


def _mode(o: Dict[str, Any], device: torch.device) -> str:
    if o["precision"] == "fp32" or (o["precision"] == "auto" and device.type == "cpu"):
        return "fp32"
    return "bf16 + channels_last"


def _step(o: Dict[str, Any], size: int, method: str, device: torch.device) -> Callable[[], None]:
    teacher, student, classes, recipes = PAIRS[size]
    mode = _mode(o, device)
    dtype, channels_last = PRECISIONS[mode]
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    b = int(o[f"b{size}"]) if f"b{size}" in o else int(o["b32"])
    batch = random_batch(b, size, classes, seed=o["seed"], device=device, channels_last=channels_last)
    batch["index"] = torch.randperm(o["n"], generator=torch.Generator().manual_seed(o["seed"]))[:b].to(device)
    if method == "student":
        net = create_model(student, num_classes=classes).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        return supervised_step(net, batch, dtype, device)
    opts = {"student": student, "teacher": teacher, "b": b, "size": size, "classes": classes, "n": o["n"],
            "k": o["k"], "seed": o["seed"], "recipes": recipes, "methods": method}
    distiller, views = build_row(opts, method, batch, device, channels_last)
    batch = with_views(batch, views, o["seed"])
    return distiller_step(distiller, with_sample_fields(distiller, batch, o["seed"]), dtype, device)


def images_per_second(step: Callable[[], None], b: int, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return b * steps / (time.perf_counter() - t0)


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    device = pick_device(o["device"])
    if o.get("threads"):
        torch.set_num_threads(int(o["threads"]))
    sizes = [int(s) for s in str(o["sizes"]).split(",") if s.strip()]
    methods = [m.strip() for m in str(o["methods"]).split(",") if m.strip()]
    rows: List[Dict[str, Any]] = []
    for size in sizes:
        b = int(o.get(f"b{size}", o["b32"]))
        for method in methods:
            step = _step(o, size, method, device)
            rate = images_per_second(step, b, int(o["steps"]), int(o["warmup"]), device)
            rows.append({"size": size, "method": method, "batch": b, "images_per_s": rate,
                         "pair": f"{PAIRS[size][0]} → {PAIRS[size][1]}", "precision": _mode(o, device)})
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    alone = {r["size"]: r["images_per_s"] for r in rows if r["method"] == "student"}
    table([["size", "pair", "method", "batch", "images/s", "vs student alone"]]
          + [[str(r["size"]), r["pair"], r["method"], str(r["batch"]), f"{r['images_per_s']:.1f}",
              f"{alone[r['size']] / r['images_per_s']:.2f}x" if r["size"] in alone else "–"] for r in rows], print_fn)
    result = {"options": o, "machine": machine(device), "rows": rows}
    write_json(result, o.get("out"), print_fn)
    return result
