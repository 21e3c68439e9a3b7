"""``crossdistill bench peer [methods=kd,fitnet,crd,dpk rounds=5 ...] [--quick]``: the default
crossdistill training step against the plain fp32 PyTorch loop, on the same models, data and machine.

Per method (resnet32x4 → resnet8x4, batch 64, 32 px, 100 classes by default; the reference pair's
recipes, as ``bench overhead`` builds them):

- **crossdistill**: the step ``crossdistill train`` takes with every default for this machine — the
  precision and memory format the measured table picks (``engine/defaults.py``: fp32 + channels_last
  on an AVX2 CPU, bf16 + channels_last on AVX-512/AMX), the teacher prepared as an inference engine
  (``distill.fast_teacher``: unread BatchNorms folded) and in the same layout;
- **plain**: the loop users write (RepDistiller's ``train_distill``): fp32, the models as built
  (NCHW), the teacher's forward under ``no_grad`` with every BatchNorm, then the student's forward,
  the loss, backward and SGD. For KD it is written out by hand here (cross-entropy + Hinton's KL at
  T = 4); for the other methods it is the same method's terms in a Distiller with every speed option
  off (``fast_teacher=False``, fp32, NCHW) — the method's own arithmetic is identical, only the way
  the networks run differs;
- **teacher cache** (``cache=true``): the crossdistill KD step with the teacher's logits in the batch
  (as the teacher cache's loader hands them over), so the teacher never runs; against plain KD.

Every variant runs once per round, in an order that rotates; the ratio is the median of same-round
ratios plain / crossdistill (> 1: crossdistill faster), with quartiles. The machine is printed with
the table (CPU model, torch's CPU capability, threads, load): the ratios depend on it. JSON in
``runs/bench/peer.json``.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from ...build import build_distiller, build_task
from ...engine.defaults import device_kind, precision_name
from ...engine.device import Precision
from ...models import create_model
from ...sides import teacher_key
from ...taps import OUTPUT
from .common import interleave, machine, pick_device, ratios, summarise, table, write_json
from ._steps import distiller_step, random_batch, sgd
from .overhead import _info, row_config, with_sample_fields

DEFAULTS: Dict[str, Any] = {
    "student": "resnet8x4", "teacher": "resnet32x4", "b": 64, "size": 32, "classes": 100,
    "methods": "kd,fitnet,crd,dpk", "n": 50000, "k": 16384, "rounds": 5, "warmup": 1, "cache": True,
    "recipes": "cifar100/resnet32x4_resnet8x4", "device": "auto", "clock": "wall", "threads": None,
    "seed": 0, "out": "runs/bench/peer.json",
}
QUICK = {"rounds": 2, "warmup": 1}
CHOICES = {"device": ("auto", "cpu", "cuda"), "clock": ("wall", "cpu")}
FAST, PLAIN, CACHE = "crossdistill", "plain", "crossdistill + teacher cache"


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s "Model name", read from /proc/cpuinfo), or the platform's word."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plain_kd_step(student: torch.nn.Module, teacher: torch.nn.Module, batch: Dict[str, torch.Tensor],
                  T: float = 4.0) -> Callable[[], None]:
    """RepDistiller's ``train_distill`` for KD, fp32: teacher under ``no_grad``, CE + T²·KL(p_t ‖ p_s)."""
    opt = sgd(student.parameters())
    teacher.eval()
    x, y = batch["input"], batch["label"]

    def step() -> None:
        with torch.no_grad():
            logit_t = teacher(x)
        logit_s = student(x)
        kd = F.kl_div(F.log_softmax(logit_s / T, dim=1), F.softmax(logit_t / T, dim=1), reduction="batchmean") * T * T
        loss = F.cross_entropy(logit_s, y) + kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def build(o: Dict[str, Any], method: str, batch: Dict[str, Any], device: torch.device, fast_teacher: bool):
    """The method's Distiller as ``crossdistill train`` builds it from the pair's recipe (``bench
    overhead``'s rows: random teacher, n samples for CRD), with ``distill.fast_teacher`` as given."""
    cfg = row_config(o, method)
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"fast_teacher": fast_teacher})})
    info = _info(o)
    g = torch.Generator().manual_seed(o["seed"])
    labels = (torch.arange(o["n"]) % o["classes"])[torch.randperm(o["n"], generator=g)]
    distiller, _ = build_distiller(cfg, info, build_task("classification", info),
                                   batch["input"][:2].cpu().contiguous(), o["n"], labels)
    return distiller.to(device)


def variants(o: Dict[str, Any], device: torch.device):
    """``{name: step}`` and ``{crossdistill row: plain row}`` for the chosen methods."""
    fast = Precision.pick(device.type, "auto", None, training=True)  # what the trainer picks here
    plain_batch = random_batch(o["b"], o["size"], o["classes"], seed=o["seed"], device=device)
    plain_batch["index"] = torch.randperm(o["n"], generator=torch.Generator().manual_seed(o["seed"]))[: o["b"]].to(device)
    fast_batch = {k: (v.contiguous(memory_format=torch.channels_last) if k == "input" and fast.channels_last else v)
                  for k, v in plain_batch.items()}

    def net(name: str) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o["seed"])
            return create_model(name, num_classes=o["classes"]).to(device)

    steps: Dict[str, Callable[[], None]] = {}
    pairs: Dict[str, str] = {}
    methods = [m.strip() for m in str(o["methods"]).split(",") if m.strip()]
    for method in methods:
        # crossdistill: the run's defaults (fast teacher; the trainer's precision and layout)
        d = build(o, method, fast_batch, device, True)
        if fast.channels_last:  # as the trainer does
            d.student.to(memory_format=torch.channels_last)
            d.teachers.to(memory_format=torch.channels_last)
        steps[f"{method}: {FAST}"] = distiller_step(d, with_sample_fields(d, fast_batch, o["seed"]), fast.dtype, device)
        # plain: fp32, NCHW, the teacher as built
        if method == "kd":
            steps[f"{method}: {PLAIN}"] = plain_kd_step(net(o["student"]), net(o["teacher"]), plain_batch)
        else:
            p = build(o, method, plain_batch, device, False)
            steps[f"{method}: {PLAIN}"] = distiller_step(p, with_sample_fields(p, plain_batch, o["seed"]), None, device)
        pairs[f"{method}: {FAST}"] = f"{method}: {PLAIN}"
    if o["cache"]:
        if "kd" not in methods:  # the cache row is read against plain KD
            steps[f"kd: {PLAIN}"] = plain_kd_step(net(o["student"]), net(o["teacher"]), plain_batch)
        d = build(o, "kd", fast_batch, device, True)
        if fast.channels_last:
            d.student.to(memory_format=torch.channels_last)
        with torch.no_grad():
            logits = d.teachers["default"](fast_batch["input"])
        cached = {**fast_batch, teacher_key("default", OUTPUT): logits.half().float()}  # stored as float16
        steps[f"kd: {CACHE}"] = distiller_step(d, cached, fast.dtype, device)
        pairs[f"kd: {CACHE}"] = f"kd: {PLAIN}"
    return steps, pairs, fast


def run(o: Dict[str, Any], print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    dev = pick_device(o["device"])
    if o["threads"] is not None:
        torch.set_num_threads(o["threads"])
    steps, pairs, fast = variants(o, dev)
    times = interleave(steps, o["rounds"], o["warmup"], dev, o["clock"])
    stats = {k: summarise(v) for k, v in times.items()}
    where = machine(dev)
    where.update(cpu_model=cpu_model(), device_kind=device_kind(dev))
    if dev.type == "cuda":
        where["gpu"] = torch.cuda.get_device_name(dev)
    print_fn(f"bench peer on {where.get('gpu') or where['cpu_model']} ({where['device_kind']}; torch CPU capability "
             f"{where['cpu_capability']}, {where['threads']} threads, load {' '.join(f'{x:.1f}' for x in where['loadavg_at_end'] or ())})")
    print_fn(f"{o['teacher']} -> {o['student']}, batch {o['b']}, {o['size']} px, {o['classes']} classes, "
             f"{o['rounds']} interleaved rounds ({o['clock']} clock); crossdistill defaults here: "
             f"{precision_name(fast.dtype)}, channels_last={fast.channels_last}, fast teacher")
    rows: List[tuple] = [("step", "ms/step", "plain ms/step", "speed-up vs plain [q1-q3]")]
    result_rows: Dict[str, Any] = {}
    for name, base in pairs.items():
        r = ratios(times[base], times[name])
        rows.append((name, f"{stats[name]['ms_median']:.0f}", f"{stats[base]['ms_median']:.0f}",
                     f"{r['median']:.2f}x [{r['q1']:.2f}-{r['q3']:.2f}]"))
        result_rows[name] = {"plain": base, "ms_per_step": round(stats[name]["ms_median"], 2),
                             "plain_ms_per_step": round(stats[base]["ms_median"], 2), "speedup": r}
    table(rows, print_fn)
    result = {"bench": "peer", "options": o, "machine": where,
              "defaults": {"precision": precision_name(fast.dtype), "channels_last": fast.channels_last,
                           "fast_teacher": True},
              "rows": result_rows, "timing": stats}
    write_json(result, o["out"], print_fn)
    return result
