"""``crossdistill bench regulariser [side=@stage:-1 kind=tail_energy max_rows=512 steps=8 ...] [--quick]``.

The cost of the teacher-free spectral regulariser (method ``spectral``) as a fraction of a training
step: a plain supervised step, the same step through a ``Distiller`` with no term, and with the
regulariser, interleaved round by round (goal: ≤ 2 % over the plain step). JSON in
``runs/bench/regulariser.json``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch

from ...distiller import Distiller
from ...methods import build_method
from ...models import create_model
from ...tasks import create_task
from .common import interleave, machine, pick_device, ratios, summarise, table, write_json
from ._steps import PRECISIONS, distiller_step, random_batch, supervised_step

DEFAULTS: Dict[str, Any] = {"model": "resnet8x4", "b": 64, "size": 32, "classes": 100, "steps": 8, "warmup": 2,
                            "side": "@stage:-1", "kind": "tail_energy", "max_rows": 512, "precision": "fp32",
                            "device": "auto", "out": "runs/bench/regulariser.json"}
QUICK = {"steps": 3, "warmup": 1}
CHOICES = {"kind": ("tail_energy", "tail_ratio", "energy"), "precision": tuple(PRECISIONS),
           "device": ("auto", "cpu", "cuda")}

PLAIN, BARE, REG = "supervised step", "Distiller, no term", "+ spectral regulariser"


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    dev = pick_device(o["device"])
    dtype, channels_last = PRECISIONS[o["precision"]]
    batch = random_batch(o["b"], o["size"], o["classes"], device=dev, channels_last=channels_last)
    task = create_task("classification", o["classes"])

    def model():
        torch.manual_seed(0)  # the same weights in every variant
        m = create_model(o["model"], num_classes=o["classes"]).to(dev)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    def through_distiller(terms):
        d = Distiller(model(), None, terms, task=task, example_input=batch["input"][:2]).to(dev)
        return distiller_step(d, batch, dtype, dev)

    term = build_method("spectral", student=o["side"], kind=o["kind"], max_rows=o["max_rows"])
    variants = {PLAIN: supervised_step(model(), batch, dtype, dev), BARE: through_distiller([]),
                REG: through_distiller([term])}
    times = interleave(variants, o["steps"], o["warmup"], dev)
    stats = {k: summarise(v) for k, v in times.items()}
    overhead, own = ratios(times[REG], times[PLAIN]), ratios(times[REG], times[BARE])
    print_fn(f"teacher-free regulariser cost: {o['model']}, batch {o['b']}, {o['precision']}, side {o['side']}, "
             f"{o['kind']}, median of {o['steps']} interleaved steps")
    base = stats[PLAIN]["ms_median"]
    table([("variant", "ms/step", "vs supervised step"),
           *[(k, f"{s['ms_median']:.1f}", f"{s['ms_median'] / base:.3f}x") for k, s in stats.items()]], print_fn)
    print_fn(f"overhead vs a plain step: {(overhead['median'] - 1) * 100:+.1f} % (same-round quartiles "
             f"{(overhead['q1'] - 1) * 100:+.1f} … {(overhead['q3'] - 1) * 100:+.1f} %); of the regulariser alone "
             f"(vs the same Distiller without it): {(own['median'] - 1) * 100:+.1f} % (goal ≤ 2 %)")
    result = {"bench": "regulariser", "options": o, "machine": machine(dev),
              "results": {k: {"ms_per_step": round(s["ms_median"], 2), "timing": s} for k, s in stats.items()},
              "overhead": overhead["median"] - 1, "overhead_ratio": overhead,
              "regulariser_only": own["median"] - 1, "regulariser_only_ratio": own}
    write_json(result, o["out"], print_fn)
    return result
