"""``crossdistill bench amp`` and ``crossdistill bench regulariser``.

Both time full training steps (forward + backward + SGD) of a zoo model, variants interleaved
round by round in one process so that machine load hits every variant alike; each reports the
median ms/step and ratios against the first variant, and writes JSON under ``runs/bench/``.

- ``amp``: fp32 / fp32+channels_last / bf16 autocast / bf16+channels_last — the measurement behind
  the trainer's ``precision: auto`` and ``channels_last`` defaults on CPU.
- ``regulariser``: a plain supervised step vs the same step plus the teacher-free spectral
  regulariser (method ``spectral``) — its cost as a fraction of a step (goal ≤ 2 %).
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from .errors import ConfigError, did_you_mean

DEFAULTS = {"model": "resnet8x4", "b": 64, "size": 32, "classes": 100, "steps": 8, "warmup": 2,
            "side": "@stage:-1", "kind": "tail_energy", "max_rows": 512}


def _opts(opts: Dict[str, Any], quick: bool, allowed: List[str]) -> Dict[str, Any]:
    for k in opts:
        if k not in allowed and k != "out":
            raise ConfigError(f"bench option '{k}' is unknown: {did_you_mean(k, allowed)}")
    o = {**DEFAULTS, **({"steps": 3, "warmup": 1} if quick else {}), **opts}
    return o


def _interleaved(variants: Dict[str, Callable[[], None]], steps: int, warmup: int) -> Dict[str, float]:
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _step_fn(model, x, y, amp: bool, extra=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext():
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        if extra is not None:
            loss = loss + extra()
        loss.backward()
        opt.step()

    return step


def _report(title: str, med: Dict[str, float], base: str, path: Path, meta: Dict[str, Any]) -> Dict[str, Any]:
    rows = {k: {"ms_per_step": round(v, 2), "ratio_vs_" + base: round(med[base] / v, 3)} for k, v in med.items()}
    print(f"{title}")
    print(f"{'variant':28s} {'ms/step':>9s} {'speed vs ' + base:>16s}")
    for k, r in rows.items():
        print(f"{k:28s} {r['ms_per_step']:9.1f} {med[base] / med[k]:15.2f}x")
    result = {"meta": meta, "results": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


def _model_and_batch(o):
    from .models import create_model

    torch.manual_seed(0)
    x = torch.randn(o["b"], 3, o["size"], o["size"])
    y = torch.randint(0, o["classes"], (o["b"],))
    return (lambda: create_model(o["model"], num_classes=o["classes"])), x, y


def bench_amp(opts: Dict[str, Any], quick: bool = False) -> Dict[str, Any]:
    o = _opts(opts, quick, ["model", "b", "size", "classes", "steps", "warmup"])
    make, x, y = _model_and_batch(o)
    cl = x.contiguous(memory_format=torch.channels_last)
    variants = {}
    for name, amp, channels_last in (("fp32", False, False), ("fp32 + channels_last", False, True),
                                     ("bf16", True, False), ("bf16 + channels_last", True, True)):
        m = make()
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        variants[name] = _step_fn(m, cl if channels_last else x, y, amp)
    med = _interleaved(variants, o["steps"], o["warmup"])
    meta = {**o, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return _report(f"AMP on CPU: {o['model']}, batch {o['b']}, {o['size']}px, fwd+bwd+SGD", med, "fp32",
                   Path(opts.get("out", "runs/bench/amp.json")), meta)


def bench_regulariser(opts: Dict[str, Any], quick: bool = False) -> Dict[str, Any]:
    from .distiller import Distiller
    from .methods import build_method
    from .tasks import create_task

    o = _opts(opts, quick, ["model", "b", "size", "classes", "steps", "warmup", "side", "kind", "max_rows"])
    make, x, y = _model_and_batch(o)
    task = create_task("classification", o["classes"])
    plain = make()

    def distiller_step(terms):
        model = make()
        model.load_state_dict(plain.state_dict())
        d = Distiller(model, None, terms, task=task, example_input=x[:2])
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _ = d({"input": x, "label": y})
            loss.backward()
            opt.step()

        return step

    term = build_method("spectral", student=o["side"], kind=o["kind"], max_rows=o["max_rows"])
    variants = {"supervised step": _step_fn(plain, x, y, False),
                "Distiller, no term": distiller_step([]),
                "+ spectral regulariser": distiller_step([term])}
    med = _interleaved(variants, o["steps"], o["warmup"])
    overhead = med["+ spectral regulariser"] / med["supervised step"] - 1
    own = med["+ spectral regulariser"] / med["Distiller, no term"] - 1
    meta = {**o, "torch": torch.__version__, "threads": torch.get_num_threads(), "overhead": round(overhead, 4),
            "regulariser_only": round(own, 4)}
    res = _report(f"Teacher-free regulariser cost: {o['model']}, batch {o['b']}, side {o['side']}, {o['kind']}",
                  med, "supervised step", Path(opts.get("out", "runs/bench/regulariser.json")), meta)
    print(f"overhead vs a plain step: {overhead * 100:+.1f} %; of the regulariser alone (vs the same Distiller "
          f"without it): {own * 100:+.1f} % (goal ≤ 2 %)")
    res["overhead"], res["regulariser_only"] = overhead, own
    return res
