"""What every benchmark shares: one option parser, one interleaved timer, memory probes, reporting.

- :func:`parse_overrides` / :func:`resolve_options`: ``key=value`` words (values read as YAML
  scalars) checked against the benchmark's ``DEFAULTS``; an unknown key or a bad value is one
  :class:`~crossdistill.errors.ConfigError` line.
- :func:`interleave`: runs every variant once per round, in an order that rotates from round to
  round, and times each call with a device sync on both sides. Machine load that drifts during the
  run then hits every variant alike, so the *ratios* within one run are the numbers to read.
- :class:`Lap`: phase-by-phase wall-clock laps of one call, with the same device sync.
- :func:`peak_rss_mib` and :func:`in_fresh_process`: peak memory of one call on CPU (peak RSS above
  the RSS before it, in a fresh process whose allocator returns freed tensors to the OS) or on CUDA
  (``max_memory_allocated`` above the allocation before it).
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
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import yaml

from ...errors import ConfigError, did_you_mean

#: integer options that may be 0 (warm-up rounds, seeds, data-loader workers); the others must be >= 1
MAY_BE_ZERO = {"warmup", "seed", "workers"}


# ------------------------------------------------------------------------------ options

def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["n=5000", "memory=false"]`` → ``{"n": 5000, "memory": False}`` (values parsed as YAML)."""
    opts: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bench option '{item}' must look like key=value, e.g. steps=20")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        opts[key.strip()] = value
    return opts


def resolve_options(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any],
                    quick: Mapping[str, Any] = (), use_quick: bool = False,
                    choices: Mapping[str, Iterable[Any]] = ()) -> Dict[str, Any]:
    """The benchmark's defaults, then its quick settings (``--quick``), then the given options.

    Types follow the defaults: an int option takes an int (>= 1, or >= 0 for ``warmup``/``seed``),
    a bool a bool, a float a number; an option whose default is ``None`` takes ``None`` or a
    positive int; ``choices`` restricts the values of a text option.
    """
    for key in given:
        if key not in defaults:
            raise ConfigError(f"bench {name} has no option '{key}': {did_you_mean(key, list(defaults))}")
    out = dict(defaults)
    if use_quick:
        out.update(dict(quick))
    out.update(given)
    choices = dict(choices)
    for key, default in defaults.items():
        value = out[key]
        if key in choices:
            allowed = list(choices[key])
            if value not in allowed:
                raise ConfigError(f"bench {name} option {key}={value!r} is not one of: {', '.join(map(str, allowed))}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"bench {name} option {key}={value!r} must be true or false")
        elif isinstance(default, int) or default is None:
            low = 0 if key in MAY_BE_ZERO else 1
            if default is None and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                what = "a positive integer" if low else "an integer >= 0"
                raise ConfigError(f"bench {name} option {key}={value!r} must be {what}"
                                  + (" (or unset)" if default is None else ""))
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"bench {name} option {key}={value!r} must be a number")
            out[key] = float(value)
        elif isinstance(default, str) and key != "out" and not isinstance(value, str):
            raise ConfigError(f"bench {name} option {key}={value!r} must be text")
    return out


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench option device=cuda but no CUDA GPU is visible; use device=auto or cpu")
    return torch.device(name)


# ------------------------------------------------------------------------------ timing

def sync(device: torch.device) -> None:
    """Wait for the device: a timed call ends when its kernels have run, not when they are queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleave(variants: Mapping[str, Callable[[], Any]], rounds: int, warmup: int,
               device: torch.device = torch.device("cpu"), clock: str = "wall") -> Dict[str, List[float]]:
    """ms per call of every variant over ``rounds`` timed rounds (after ``warmup`` untimed ones).

    Each round calls every variant once; round ``r`` starts at the ``r``-th variant (the order
    rotates), so no variant always runs right after the same neighbour. Returns the per-round
    times, index-aligned across variants: ``times[a][r] / times[b][r]`` is a same-round ratio.
    ``clock="cpu"`` times the process's CPU time instead of the wall clock (CPU only): on a machine
    shared with other jobs it counts the work a call does rather than how long it waited for a core.
    """
    if clock == "cpu" and device.type != "cpu":
        raise ConfigError("bench option clock=cpu times CPU work: use it with device=cpu (on a GPU, clock=wall)")
    now = CLOCKS[clock]
    names = list(variants)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            sync(device)
            t0 = now()
            variants[name]()
            sync(device)
            if r >= warmup:
                times[name].append(1e3 * (now() - t0))
    return times


class Lap:
    """Wall-clock laps on one device: ``lap(name)`` adds the ms since the previous lap to ``name``."""

    def __init__(self, device: torch.device, into: Dict[str, List[float]]):
        self.device, self.into = device, into
        sync(device)
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.into.setdefault(name, []).append(1e3 * (now - self.t))
        self.t = now


def quartiles(xs: Sequence[float]) -> tuple:
    """(first quartile, median, third quartile); for fewer than 2 values all three are the value."""
    xs = sorted(xs)
    if len(xs) < 2:
        return (xs[0],) * 3 if xs else (float("nan"),) * 3
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def summarise(times: Sequence[float]) -> Dict[str, float]:
    q1, med, q3 = quartiles(times)
    return {"ms_median": med, "ms_q1": q1, "ms_q3": q3, "ms_min": min(times), "ms_max": max(times), "n": len(times)}


def ratios(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Same-round ratios ``a[r] / b[r]``: median and quartiles (the spread to report)."""
    q1, med, q3 = quartiles([x / y for x, y in zip(a, b)])
    return {"median": med, "q1": q1, "q3": q3}


# ------------------------------------------------------------------------------ memory

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_mib(fn: Callable[[], Any], device: torch.device) -> Dict[str, Any]:
    """Peak memory of one call of ``fn`` above the memory held before it.

    CUDA: ``max_memory_allocated`` above ``memory_allocated``. CPU: peak RSS (``VmHWM`` after
    resetting it, Linux >= 4.0) above the RSS before the call — meaningful in a process started by
    :func:`in_fresh_process`, where freed tensors go back to the OS; NaN where /proc is missing.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return {"peak_mib": (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20,
                "measure": "torch.cuda.max_memory_allocated above memory_allocated before the call"}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
        base = _status_kib("VmRSS")
        fn()
        peak = _status_kib("VmHWM")
    except OSError:
        return {"peak_mib": float("nan"), "measure": "unavailable (no /proc/self/clear_refs)"}
    return {"peak_mib": max(peak - base, 0) / 1024,
            "measure": "peak RSS (VmHWM after resetting it) above RSS before the call, fresh process, "
                       "glibc mmap threshold 64 KiB"}


def in_fresh_process(target: str, *args: Any) -> Any:
    """``module:function(*args)`` in a fresh Python process (JSON in, JSON out).

    glibc's mmap threshold is pinned to 64 KiB there, so every tensor above it gets its own mapping
    and is returned to the OS when freed: RSS then follows the live tensors instead of glibc's
    retained arenas. A failure returns ``{"error": last line of stderr}``.
    """
    env = dict(os.environ)
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    module, func = target.split(":")
    code = (f"import json, sys; from {module} import {func} as f; "
            "print(json.dumps(f(*json.loads(sys.argv[1]))))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(list(args))], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ reporting

def machine(device: torch.device) -> Dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
            "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}


def table(rows: Sequence[Sequence[str]], print_fn: Callable[[str], None] = print) -> None:
    """Left-aligned columns, the first row a header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print_fn("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def write_json(result: Dict[str, Any], out: Optional[str], print_fn: Callable[[str], None] = print) -> None:
    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print_fn(f"wrote {path}")
