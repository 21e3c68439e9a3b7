"""``crossdistill bench amp [model=resnet8x4 b=64 size=32 steps=8 ...] [--quick]``: precision and layout.

Full training steps (forward + backward + SGD) of one zoo model in fp32, fp32 + channels_last, bf16
autocast and bf16 + channels_last, interleaved round by round in one process; median ms/step and the
speed of each variant relative to fp32. The measurement behind the trainer's ``precision: auto`` and
``channels_last`` defaults on CPU. JSON in ``runs/bench/amp.json``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from ...models import create_model
from .common import interleave, machine, pick_device, summarise, table, write_json
from ._steps import PRECISIONS, random_batch, supervised_step

DEFAULTS: Dict[str, Any] = {"model": "resnet8x4", "b": 64, "size": 32, "classes": 100, "steps": 8, "warmup": 2,
                            "device": "auto", "out": "runs/bench/amp.json"}
QUICK = {"steps": 3, "warmup": 1}
CHOICES = {"device": ("auto", "cpu", "cuda")}


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    dev = pick_device(o["device"])
    variants = {}
    for name, (dtype, channels_last) in PRECISIONS.items():
        if dev.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            dtype = torch.float16
        torch.manual_seed(0)
        model = create_model(o["model"], num_classes=o["classes"]).to(dev)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        batch = random_batch(o["b"], o["size"], o["classes"], device=dev, channels_last=channels_last)
        variants[name] = supervised_step(model, batch, dtype, dev)
    times = interleave(variants, o["steps"], o["warmup"], dev)
    stats = {k: summarise(v) for k, v in times.items()}
    base = stats["fp32"]["ms_median"]
    print_fn(f"AMP on {dev.type}: {o['model']}, batch {o['b']}, {o['size']}px, forward + backward + SGD, "
             f"median of {o['steps']} interleaved steps")
    table([("variant", "ms/step", "speed vs fp32"),
           *[(k, f"{s['ms_median']:.1f}", f"{base / s['ms_median']:.2f}x") for k, s in stats.items()]], print_fn)
    result = {"bench": "amp", "options": o, "machine": machine(dev),
              "results": {k: {"ms_per_step": round(s["ms_median"], 2), "speed_vs_fp32": round(base / s["ms_median"], 3),
                              "timing": s} for k, s in stats.items()}}
    write_json(result, o["out"], print_fn)
    return result
