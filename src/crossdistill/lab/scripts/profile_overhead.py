"""Phase-by-phase profile of `bench overhead` rows against their baseline.

Used for docs/speed.md § "What remains, phase by phase". Steps are built by crossdistill.lab.bench.overhead.variants (the benchmark's own function); this script
only adds record_function labels through forward hooks / instance-attribute wrappers (no behaviour
change), times the steps unprofiled with the bench's own interleave(clock=cpu), then profiles a few
steps of each. Usage: python -m crossdistill.lab.scripts.profile_overhead MODE ROWS OUT.json [ROUNDS [PROFILED_STEPS]]  (MODE: 'fp32' or 'bf16 + channels_last')
"""
import inspect, json, statistics, sys, time
from collections import defaultdict

import torch
from torch.profiler import profile, ProfilerActivity, record_function

from crossdistill.lab.bench.overhead import DEFAULTS, variants, STUDENT, STUDENT_TEACHER
from crossdistill.lab.bench.common import interleave

torch.set_num_threads(1)
mode, want, out_path = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 6
PROF_STEPS = int(sys.argv[5]) if len(sys.argv) > 5 else 4
methods = sorted({r.split(":")[0] for r in want})
o = {**DEFAULTS, "methods": ",".join(methods), "device": "cpu", "phases": True}
t0 = time.process_time()
steps, baseline, teacher_rows, skipped = variants(o, mode, torch.device("cpu"))
print("built", list(steps), "skipped", skipped, f"{time.process_time()-t0:.1f}s cpu", flush=True)
sel = [STUDENT_TEACHER] + [r for r in want if r in steps]
if any(baseline.get(r) == STUDENT for r in want):
    sel.insert(0, STUDENT)
steps = {k: steps[k] for k in sel}

# ---------------------------------------------------------------- labels (instrumentation only)
L = "L:"


def label_module(m, name):
    def pre(mod, args):
        rf = record_function(L + name)
        rf.__enter__()
        mod.__dict__.setdefault("_prof_rf", []).append(rf)

    def post(mod, args, out):
        mod.__dict__["_prof_rf"].pop().__exit__(None, None, None)

    m.register_forward_pre_hook(pre)
    m.register_forward_hook(post, always_call=True)


def wrap_attr(obj, attr, name):
    fn = getattr(obj, attr)

    def wrapped(*a, **k):
        with record_function(L + name):
            return fn(*a, **k)

    setattr(obj, attr, wrapped)


def closure(fn):
    """The variables ``fn`` closes over, and those of the functions it closes over (a bench step is
    ``lambda: update(batch)`` around the function that holds the distiller)."""
    found = dict(inspect.getclosurevars(fn).nonlocals)
    for value in list(found.values()):
        if inspect.isfunction(value):
            for k, v in closure(value).items():
                found.setdefault(k, v)
    return found


for name, step in steps.items():
    nl = closure(step)
    if "distiller" in nl:
        d = nl["distiller"]
        label_module(d.student, "student.fwd")
        for tn, t in d.teachers.items():
            label_module(t, "teacher.fwd")
        for term, lab in zip(d.terms, d.labels):
            label_module(term, f"term.{lab}")
            wrap_attr(term, "phase_loss", f"term.{lab}")  # init phases call phase_loss, not forward
            for sub, m in term.named_modules():
                if sub and sub.count(".") <= 1 and not isinstance(m, (torch.nn.ModuleList, torch.nn.ParameterList)) \
                        and len(list(m.children())) > 0 or (sub and sub.count(".") == 0 and not isinstance(m, (torch.nn.ModuleList, torch.nn.ParameterList))):
                    label_module(m, f"term.{lab}.{sub}")
        wrap_attr(d, "_term_inputs", "distiller.term_inputs(casts)")
        if d.task is not None:
            wrap_attr(d.task, "loss", "task_loss")
    else:
        if "teacher" in nl:
            label_module(nl["teacher"], "teacher.fwd")
        label_module(nl["model"], "student.fwd")

# ---------------------------------------------------------------- unprofiled timing (bench's interleave, cpu clock)
t0 = time.process_time()
times = interleave(steps, ROUNDS, 2, torch.device("cpu"), "cpu") if ROUNDS else {n: [float("nan")] for n in steps}
print(f"timed {ROUNDS} rounds in {time.process_time()-t0:.1f}s cpu", flush=True)
timing = {}
for name in steps:
    base = baseline.get(name)
    r = {"ms_median": statistics.median(times[name]), "ms": times[name]}
    if base:
        r["baseline"] = base
        r["ratio_median"] = statistics.median(a / b for a, b in zip(times[name], times[base]))
        r["extra_ms_median"] = statistics.median(a - b for a, b in zip(times[name], times[base]))
    timing[name] = r
    print(f"  {name:35s} {r['ms_median']:8.1f} ms  ratio {r.get('ratio_median', 1):.3f}  extra {r.get('extra_ms_median', 0):.1f}")


# ---------------------------------------------------------------- profile
def category(e, seq_label):
    """(phase, label) of an event, from its ancestors."""
    chain = []
    p = e
    while p is not None:
        chain.append(p)
        p = p.cpu_parent
    for p in chain:
        if p.name.startswith("autograd::engine::evaluate_function:"):
            if "AccumulateGrad" in p.name:
                return ("bwd", "accumulate_grad")
            return ("bwd", seq_label.get(p.sequence_nr, "other"))
        if p.name.startswith("Optimizer.step"):
            return ("opt", "step")
        if p.name.startswith("Optimizer.zero_grad"):
            return ("opt", "zero_grad")
    for p in chain:
        if p.name.startswith(L):
            return ("fwd", p.name[len(L):])
    return ("fwd", "other")


def analyse(prof):
    evs = list(prof.events())
    seq_label = {}
    # ops run in grad mode on inputs that need no gradient are recorded with the *next* node's sequence
    # number; the node's creator is the last forward op to start with that number (so: last one wins)
    for e in sorted(evs, key=lambda e: e.time_range.start):
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not e.name.startswith("autograd::") \
                and "Backward" not in e.name:
            c = category(e, {})
            if c[0] == "fwd":
                seq_label[e.sequence_nr] = c[1]
    def root(e):
        while e.cpu_parent is not None:
            e = e.cpu_parent
        return e
    by_step = defaultdict(list)
    for e in evs:
        r = root(e)
        if r.name == "STEP" and e is not r:
            by_step[id(r)].append(e)
    step_evs = sorted([e for e in evs if e.name == "STEP"], key=lambda e: e.time_range.start)
    per_step, per_step_n = [], []
    ops = defaultdict(float)
    for s in step_evs:
        cat, cnt = defaultdict(float), defaultdict(int)
        for e in by_step[id(s)]:
            c = category(e, seq_label)
            cat[c] += e.self_cpu_time_total / 1e3
            cnt[c] += 1
            key = c + ((e.name, str(e.input_shapes) if e.input_shapes else "") if not e.name.startswith(L)
                       else ("(python/glue in label)", ""))
            ops[key] += e.self_cpu_time_total / 1e3
        cat[("fwd", "other")] += s.self_cpu_time_total / 1e3
        ops[("fwd", "other", "(python/glue at top)", "")] += s.self_cpu_time_total / 1e3
        cat[("total", "step")] = (s.time_range.end - s.time_range.start) / 1e3
        cnt[("total", "step")] = len(by_step[id(s)])
        per_step.append(cat)
        per_step_n.append(cnt)
    keys = sorted({k for c in per_step for k in c})
    med = {f"{k[0]}|{k[1]}": statistics.median(c.get(k, 0.0) for c in per_step) for k in keys}
    nev = {f"{k[0]}|{k[1]}": statistics.median(c.get(k, 0) for c in per_step_n) for k in keys}
    n = len(step_evs)
    top = sorted(((f"{k[0]}|{k[1]}", k[2], k[3], v / n) for k, v in ops.items()), key=lambda x: -x[3])
    return {"steps": n, "category_ms_median": med, "category_events": nev, "ops_ms_mean": top[:500]}


def keys_str(keys):
    return [f"{k[0]}|{k[1]}" for k in keys]


# interleaved: round r profiles one step of every variant (rotating order), so load drift hits all alike
sessions = defaultdict(list)
names = list(steps)
c0 = time.process_time()
for r in range(PROF_STEPS):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
            with record_function("STEP"):
                steps[name]()
        sessions[name].append(analyse(prof))
print(f"profiled {PROF_STEPS} interleaved rounds [{time.process_time()-c0:.1f}s cpu]", flush=True)
profiles = {}
for name in names:
    ss = sessions[name]
    keys = sorted({k for s in ss for k in s["category_ms_median"]})
    res = {"steps": len(ss),
           "category_ms_median": {k: statistics.median(s["category_ms_median"].get(k, 0.0) for s in ss) for k in keys},
           "category_events": {k: statistics.median(s["category_events"].get(k, 0) for s in ss) for k in keys}}
    opkeys = defaultdict(list)
    for s in ss:
        agg = defaultdict(float)
        for cat, op, shp, ms in s["ops_ms_mean"]:
            agg[(cat, op)] += ms
        for k, v in agg.items():
            opkeys[k].append(v)
    res["ops_by_name_ms_median"] = sorted(((k[0], k[1], statistics.median(v + [0.0] * (len(ss) - len(v))))
                                           for k, v in opkeys.items()), key=lambda x: -x[2])
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof2:
        with record_function("STEP"):
            steps[name]()
    res["ops_with_shapes_1step"] = analyse(prof2)["ops_ms_mean"]
    profiles[name] = res
    cm = res["category_ms_median"]
    print(f"  {name:35s} profiled step {cm['total|step']:.1f} ms wall (median of {len(ss)})", flush=True)

json.dump({"mode": mode, "timing": timing, "baseline": baseline, "profiles": profiles,
           "loadavg": __import__("os").getloadavg()}, open(out_path, "w"), indent=1)
print("wrote", out_path)
