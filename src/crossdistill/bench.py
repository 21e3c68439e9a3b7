"""``crossdistill bench``: speed and memory, as ratios measured side by side in one run.

``crossdistill bench crd [n=50000 k=16384 b=64 dim=128 steps=10 ...] [--quick]`` times one CRD
step — score both directions, NCE loss, backward to the embeddings, momentum-update both banks —
for the reference-style ``gather`` implementation and the
``dense`` one, on the same banks and the same indices, in the same process (interleaved steps,
median after warm-up, threads left at torch's default). It checks that both give the same loss and
the same gradient w.r.t. the embeddings, measures peak memory, times the dense step phase by phase
and its four GEMMs alone (the arithmetic floor of an exact float32 dense step on this machine, hence
a bound on the ratio), prints a table and writes JSON to
``runs/bench/crd.json`` (``out=PATH`` to change). The networks and embedding heads are left out:
they are the same for both implementations. The ``[B, K+1]`` contrast indices are drawn outside the
step, as in training, where the loader's workers draw them (per sample, without replacement); their
cost per batch is timed apart and reported next to the ratio (with the ratio they would give if
they were drawn on the training step).

``amp`` and ``regulariser`` live in :mod:`crossdistill.benchmarks_extra`.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError, did_you_mean

CRD_DEFAULTS: Dict[str, Any] = {
    "n": 50000, "k": 16384, "b": 64, "dim": 128, "classes": 100, "t": 0.07, "m": 0.5,
    "steps": 10, "warmup": 2, "device": "auto", "seed": 0, "memory": True, "out": "runs/bench/crd.json",
    "threads": None,  # None: torch's default
}
QUICK = {"steps": 3, "warmup": 1}
SHARED = {"b", "steps", "warmup", "classes"}  # names other benchmarks use too (`bench all`)
IMPLS = ("gather", "dense")


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    import yaml

    opts: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bench option '{item}' must look like key=value, e.g. n=50000")
        key, raw = item.split("=", 1)
        try:
            opts[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            opts[key.strip()] = raw
    return opts


def crd_options(opts: Dict[str, Any], quick: bool) -> Dict[str, Any]:
    unknown = [k for k in opts if k not in CRD_DEFAULTS]
    if unknown:
        raise ConfigError(f"bench crd has no option '{unknown[0]}': {did_you_mean(unknown[0], CRD_DEFAULTS)}")
    out = dict(CRD_DEFAULTS)
    if quick:
        out.update(QUICK)
    out.update(opts)
    for key in ("n", "k", "b", "dim", "classes", "steps"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 1:
            raise ConfigError(f"bench crd option {key}={out[key]!r} must be a positive integer")
    if out["threads"] is not None and (not isinstance(out["threads"], int) or out["threads"] < 1):
        raise ConfigError(f"bench crd option threads={out['threads']!r} must be a positive integer (or unset)")
    if out["device"] == "auto":
        out["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return out


# ------------------------------------------------------------------------------ the CRD step

class _CRDState:
    """Banks, sampler and anchors for one implementation (everything a step touches)."""

    def __init__(self, o: Dict[str, Any], impl: str):
        from .methods.crd_memory import ContrastMemory
        from .methods.crd_sampler import NegativeSampler

        dev = torch.device(o["device"])
        g = torch.Generator().manual_seed(o["seed"])
        self.impl = impl
        self.memory = ContrastMemory(o["dim"], o["t"], o["m"]).to(dev)
        self.memory.allocate(o["n"], g)
        labels = torch.arange(o["n"]) % o["classes"]
        labels = labels[torch.randperm(o["n"], generator=g)]
        self.sampler = NegativeSampler(o["n"], o["k"], labels)
        self.o, self.dev, self.g = o, dev, g

    def batch(self, step: int):
        o = self.o
        g = torch.Generator().manual_seed(o["seed"] * 1000 + step)
        index = torch.randperm(o["n"], generator=g)[: o["b"]].to(self.dev)
        v_s = F.normalize(torch.randn(o["b"], o["dim"], generator=g), dim=1).to(self.dev).requires_grad_()
        v_t = F.normalize(torch.randn(o["b"], o["dim"], generator=g), dim=1).to(self.dev).requires_grad_()
        return index, v_s, v_t

    def contrast_indices(self, index):
        """What the loader's workers add to the batch: one row per sample (timed apart from the step)."""
        return self.sampler.sample(index.cpu()).to(self.dev)

    def step(self, index, v_s, v_t, contrast_idx):
        loss = self.memory.loss(v_s, v_t, contrast_idx, self.impl)
        loss.backward()
        self.memory.update(v_s.detach(), v_t.detach(), index)
        return loss


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _float64_reference(st: "_CRDState", index, v_s, v_t, contrast_idx):
    """Loss and embedding gradients in float64 from the state before the step (the ground truth)."""
    from .losses import crd_loss_from_logits

    mem, T = st.memory, st.o["t"]
    a, b = v_s.detach().double().requires_grad_(), v_t.detach().double().requires_grad_()
    l_s = torch.gather(a @ mem.bank_t.double().T, 1, contrast_idx) / T
    l_t = torch.gather(b @ mem.bank_s.double().T, 1, contrast_idx) / T
    z_s, z_t = mem.Z_s.double(), mem.Z_t.double()
    if float(z_s) < 0:
        z_s, z_t = torch.exp(l_s.detach()).mean() * mem.n, torch.exp(l_t.detach()).mean() * mem.n
    loss = crd_loss_from_logits(l_s, l_t, z_s, z_t, mem.n)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _check_equal(o: Dict[str, Any]) -> Dict[str, float]:
    """Same banks, same indices, same anchors: loss, gradients and updated banks of both impls,
    against each other and against a float64 evaluation of the same step."""
    a, b = _CRDState(o, "gather"), _CRDState(o, "dense")
    out: Dict[str, float] = {}
    for step in range(2):  # step 0 estimates Z, step 1 uses it and the updated banks
        index, v_s, v_t = a.batch(step)
        contrast_idx = a.contrast_indices(index)
        ref = _float64_reference(a, index, v_s, v_t, contrast_idx)
        w_s, w_t = v_s.detach().clone().requires_grad_(), v_t.detach().clone().requires_grad_()
        loss_a = a.step(index, v_s, v_t, contrast_idx)
        loss_b = b.step(index, w_s, w_t, contrast_idx)
        out[f"loss_step{step}"] = float(loss_a.detach())
        out[f"loss_rel_diff_step{step}"] = _rel(loss_b.detach(), loss_a.detach())
        out[f"grad_rel_diff_step{step}"] = max(_rel(w_s.grad, v_s.grad), _rel(w_t.grad, v_t.grad))
        for impl, (loss, gs, gt) in (("gather", (loss_a, v_s.grad, v_t.grad)), ("dense", (loss_b, w_s.grad, w_t.grad))):
            out[f"{impl}_loss_rel_err_vs_float64_step{step}"] = _rel(loss.detach(), ref[0])
            out[f"{impl}_grad_rel_err_vs_float64_step{step}"] = max(_rel(gs, ref[1]), _rel(gt, ref[2]))
    out["bank_max_abs_diff"] = float(max((a.memory.bank_s - b.memory.bank_s).abs().max(),
                                         (a.memory.bank_t - b.memory.bank_t).abs().max()))
    out["z_rel_diff"] = max(_rel(b.memory.Z_s, a.memory.Z_s), _rel(b.memory.Z_t, a.memory.Z_t))
    return out


class _Lap:
    """Wall-clock laps on one device: ``lap(name)`` adds the time since the previous lap to ``name``."""

    def __init__(self, dev: torch.device, into: Dict[str, List[float]]):
        self.dev, self.into = dev, into
        _sync(dev)
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        _sync(self.dev)
        now = time.perf_counter()
        self.into.setdefault(name, []).append(1e3 * (now - self.t))
        self.t = now


def _time_steps(o: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """Median, min and max ms per step of each implementation, interleaved step by step."""
    states = {impl: _CRDState(o, impl) for impl in IMPLS}
    laps: Dict[str, List[float]] = {}
    dev = torch.device(o["device"])
    for step in range(o["warmup"] + o["steps"]):
        for impl in (IMPLS if step % 2 == 0 else IMPLS[::-1]):  # interleaved: drifting load hits both
            index, v_s, v_t = states[impl].batch(step)
            contrast_idx = states[impl].contrast_indices(index)  # the loader's work, not the step's
            lap = _Lap(dev, laps if step >= o["warmup"] else {})
            states[impl].step(index, v_s, v_t, contrast_idx)
            lap(impl)
    return {impl: {"ms_median": statistics.median(ts), "ms_min": min(ts), "ms_max": max(ts)}
            for impl, ts in laps.items()}


def _breakdown(o: Dict[str, Any]) -> Dict[str, float]:
    """Median ms of each phase of the dense step, and of its four GEMMs alone; and of drawing one
    batch's contrast indices (``"sample indices"``: loader-worker work, not part of the step).

    The GEMMs (``[B, D]×[D, n]`` twice for the scores, ``[B, n]×[n, D]`` twice for the gradient)
    are arithmetic that any exact float32 dense step must do, so ``gather / gemms`` bounds the
    speed-up reachable on this machine without giving up float32 or the reference's sampling.
    """
    from .losses import crd_dense_grad, crd_dense_logits, crd_nce_terms
    from .matmul import matmul_nt

    st = _CRDState(o, "dense")
    mem, dev = st.memory, st.dev
    laps: Dict[str, List[float]] = {}
    G = torch.rand(o["b"], o["n"], generator=st.g).to(dev)
    with torch.no_grad():
        for step in range(o["warmup"] + o["steps"]):
            index, v_s, v_t = st.batch(step)
            into = laps if step >= o["warmup"] else {}
            lap = _Lap(dev, into)
            idx = st.contrast_indices(index)
            lap("sample indices")
            banks = (mem.bank_t, mem.bank_s)
            logits = crd_dense_logits((v_s, v_t), banks, idx, mem.T)
            lap("scores: 2 GEMMs + 2 gathers")
            _, g = crd_nce_terms(logits, mem.normalisers(logits, mem.n, True), mem.n, mem.eps)
            lap("loss and dL/dlogits")
            crd_dense_grad(g, idx, banks, mem.T)
            lap("grad: scatter + 2 GEMMs")
            mem.update(v_s, v_t, index)
            lap("bank update")
            for bank in (mem.bank_t, mem.bank_s):
                matmul_nt(v_s, bank)
                matmul_nt(G, bank.T)
            lap("the 4 GEMMs alone")
    return {name: statistics.median(ts) for name, ts in laps.items()}


# ------------------------------------------------------------------------------ memory

def _peak_worker(o: Dict[str, Any], impl: str) -> Dict[str, Any]:
    """Peak memory of one step above the memory held before it (run in a fresh process on CPU)."""
    if o.get("threads") is not None:
        torch.set_num_threads(o["threads"])
    st = _CRDState(o, impl)
    dev = torch.device(o["device"])
    first = st.batch(0)
    st.step(*first, st.contrast_indices(first[0]))  # Z estimated, lazy initialisations done
    batch = st.batch(1)
    batch = (*batch, st.contrast_indices(batch[0]))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        st.step(*batch)
        torch.cuda.synchronize(dev)
        return {"peak_mib": (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20,
                "measure": "torch.cuda.max_memory_allocated above memory_allocated before the step"}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
        base = _status_kib("VmRSS")
        st.step(*batch)
        peak = _status_kib("VmHWM")
        how = "peak RSS (VmHWM after resetting it) above RSS before the step"
    except OSError:
        import resource

        base = _status_kib("VmRSS")
        st.step(*batch)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "ru_maxrss above RSS before the step (upper bound: includes earlier peaks)"
    return {"peak_mib": max(peak - base, 0) / 1024, "measure": how + ", fresh process per impl, glibc mmap threshold 64 KiB"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _measure_memory(o: Dict[str, Any], impl: str) -> Dict[str, Any]:
    if o["device"] != "cpu":
        return _peak_worker(o, impl)
    env = dict(os.environ)
    # every tensor above 64 KiB gets its own mapping and is returned to the OS when freed, so RSS
    # follows the live tensors instead of glibc's retained arenas
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    code = ("import json, sys; from crossdistill.bench import _peak_worker; "
            "o, impl = json.loads(sys.argv[1]), sys.argv[2]; print(json.dumps(_peak_worker(o, impl)))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(o), impl], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"peak_mib": float("nan"), "measure": f"failed: {res.stderr.strip().splitlines()[-1:]}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ entry points

def bench_crd(opts: Dict[str, Any], quick: bool = False, print_fn: Callable[[str], None] = print) -> Dict[str, Any]:
    o = crd_options(opts, quick)
    if o["threads"] is not None:
        torch.set_num_threads(o["threads"])
    torch.manual_seed(o["seed"])
    print_fn(f"crd step: n={o['n']} K={o['k']} B={o['b']} dim={o['dim']} on {o['device']} "
             f"({torch.get_num_threads()} threads), {o['warmup']} warm-up + {o['steps']} timed steps per impl")
    check = _check_equal(o)
    timing = _time_steps(o)
    phases = _breakdown(o)
    memory = {impl: _measure_memory(o, impl) for impl in IMPLS} if o["memory"] else {}
    g, d = timing["gather"]["ms_median"], timing["dense"]["ms_median"]
    result = {
        "bench": "crd", "options": o,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": o["device"],
                    "cpu_count": os.cpu_count(), "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "ms_per_step": {"gather": g, "dense": d}, "timing": timing, "speedup": g / d,
        "sampling_ms_per_batch": phases["sample indices"],
        "speedup_if_sampled_on_the_step": (g + phases["sample indices"]) / (d + phases["sample indices"]),
        "dense_phases_ms": phases, "speedup_bound_at_gemm_floor": g / phases["the 4 GEMMs alone"],
        "equality": check, "peak_memory": memory,
    }
    loss_diff = max(check["loss_rel_diff_step0"], check["loss_rel_diff_step1"])
    grad_diff = max(check["grad_rel_diff_step0"], check["grad_rel_diff_step1"])
    mem = {impl: (f"{memory[impl]['peak_mib']:.1f}" if impl in memory else "-") for impl in IMPLS}
    rows = [("impl", "ms/step (median)", "min–max", "peak MiB"),
            *[(impl, f"{timing[impl]['ms_median']:.1f}", f"{timing[impl]['ms_min']:.1f}–{timing[impl]['ms_max']:.1f}",
               mem[impl]) for impl in IMPLS]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print_fn("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    smp = phases["sample indices"]
    print_fn(f"speed-up dense vs gather: {g / d:.1f}x   (drawing one batch's contrast indices, without "
             f"replacement, takes {smp:.1f} ms in the loader's workers, off the step; on the step it would be "
             f"{(g + smp) / (d + smp):.1f}x)")
    print_fn(f"max relative difference dense vs gather: loss {loss_diff:.2e}, grad wrt embeddings {grad_diff:.2e}, "
             f"Z {check['z_rel_diff']:.2e}; banks after update max |diff| {check['bank_max_abs_diff']:.2e}")
    floor = phases["the 4 GEMMs alone"]
    print_fn("dense step by phase (median ms): " +
             ", ".join(f"{name} {ms:.1f}" for name, ms in phases.items()
                       if name not in ("the 4 GEMMs alone", "sample indices")))
    print_fn(f"its four GEMMs alone take {floor:.1f} ms: no exact float32 dense step beats "
             f"{g / floor:.1f}x over gather on this machine")
    err = {impl: (max(check[f"{impl}_loss_rel_err_vs_float64_step{s}"] for s in (0, 1)),
                  max(check[f"{impl}_grad_rel_err_vs_float64_step{s}"] for s in (0, 1))) for impl in IMPLS}
    print_fn("error vs a float64 evaluation (loss, grad): " +
             ", ".join(f"{impl} {e[0]:.1e}, {e[1]:.1e}" for impl, e in err.items()))
    if memory:
        print_fn(f"memory: {memory['dense'].get('measure', '')}")
    out = o.get("out")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print_fn(f"wrote {path}")
    return result


def _extra(name: str, opts: Dict[str, Any], quick: bool) -> Optional[Any]:
    try:
        import crossdistill.benchmarks_extra as extra
    except ImportError:
        print(f"{name.replace('bench_', '')}: not available yet")
        return None
    fn = getattr(extra, name, None)
    if fn is None:
        print(f"{name.replace('bench_', '')}: not available yet")
        return None
    return fn(opts, quick)


def run_bench(what: str, overrides: Sequence[str], quick: bool = False) -> Dict[str, Any]:
    opts = parse_overrides(overrides)
    if what not in ("crd", "amp", "regulariser", "all"):
        raise ConfigError(f"unknown benchmark '{what}': valid choices: crd, amp, regulariser, all")
    results: Dict[str, Any] = {}
    # `all`: each benchmark gets the options it may know; the CRD-only ones stay with crd
    crd_only = set(CRD_DEFAULTS) - SHARED
    extra_opts = opts if what != "all" else {k: v for k, v in opts.items() if k not in crd_only}
    if what in ("crd", "all"):
        crd_opts = opts if what == "crd" else {k: v for k, v in opts.items() if k in CRD_DEFAULTS}
        results["crd"] = bench_crd(crd_opts, quick)
    if what in ("amp", "all"):
        results["amp"] = _extra("bench_amp", extra_opts, quick)
    if what in ("regulariser", "all"):
        results["regulariser"] = _extra("bench_regulariser", extra_opts, quick)
    return results
