"""The GPU figures (``scripts/gpu_figures.sh``): on one GPU, in under 8 minutes, ``bench overhead``,
``bench crd``, ``bench amp`` and ``bench throughput`` (images/s of the student alone, KD, CRD, DPK
and SimReg at 32 px and 224 px), written to ``docs/results/gpu.md`` (and each benchmark's JSON
beside it under ``--json-dir``).

``--tiny`` runs the same four benchmarks on the CPU with toy sizes in seconds — a smoke test of the
script (the test suite runs it), not a measurement: its numbers say nothing about any GPU.

    python -m crossdistill.lab.scripts.gpu_figures [--tiny] [--out docs/results/gpu.md] [--json-dir runs/gpu_figures]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ...errors import ConfigError
from ..bench import run_bench

#: benchmark → options on a GPU. Sized for < 8 minutes in all on one GPU (the step counts of the
#: CPU defaults; the overhead benchmark skips its CPU-only peak-memory processes)
GPU: Dict[str, List[str]] = {
    "overhead": ["device=cuda", "precision=both", "rounds=10", "warmup=2", "memory=false"],
    "crd": ["device=cuda", "steps=10", "warmup=2"],
    "amp": ["device=cuda", "steps=8", "warmup=2"],
    "throughput": ["device=cuda", "sizes=32,224", "steps=20", "warmup=3"],
}
#: the same on a CPU with toy sizes: seconds, for the test suite
TINY: Dict[str, List[str]] = {
    "overhead": ["device=cpu", "precision=fp32", "rounds=1", "warmup=0", "memory=false", "methods=kd,crd",
                 "student=resnet8", "teacher=resnet14", "b=4", "size=16", "n=256", "k=64", "threads=1"],
    "crd": ["device=cpu", "n=256", "k=64", "b=4", "steps=1", "warmup=0", "memory=false", "threads=1"],
    "amp": ["device=cpu", "model=resnet8", "b=2", "size=16", "steps=1", "warmup=0"],
    "throughput": ["device=cpu", "sizes=32", "b32=4", "steps=1", "warmup=0", "n=256", "k=64", "threads=1"],
}


def run(tiny: bool, out: Path, json_dir: Path, only: Optional[Sequence[str]] = None) -> str:
    if not tiny and not torch.cuda.is_available():
        raise ConfigError("gpu_figures needs a CUDA GPU (none is visible); --tiny (GPU_FIGURES_TINY=1) runs a "
                          "CPU smoke test instead")
    plan = TINY if tiny else GPU
    json_dir.mkdir(parents=True, exist_ok=True)
    device = "CPU (tiny smoke run: not a measurement)" if tiny else torch.cuda.get_device_name(0)
    parts = [f"# GPU figures{' — TINY CPU SMOKE RUN, NOT GPU NUMBERS' if tiny else ''}", "",
             f"Device: {device}; torch {torch.__version__}. Written by `scripts/gpu_figures.sh`"
             f"{' --tiny' if tiny else ''} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).", ""]
    t_all = time.time()
    for name, options in plan.items():
        if only and name not in only:
            continue
        lines: List[str] = []
        t0 = time.time()
        result = run_bench(name, options + [f"out={json_dir / (name + '.json')}"], print_fn=lines.append)[name]
        seconds = time.time() - t0
        print("\n".join(lines), flush=True)
        parts += [f"## bench {name} ({seconds:.0f} s)", "", f"`crossdistill bench {name} {' '.join(options)}`", ""]
        if name == "throughput":
            parts += throughput_table(result)
        else:
            parts += ["```"] + [ln for ln in lines if not ln.startswith("wrote ")] + ["```"]
        parts.append("")
    parts.append(f"Total: {time.time() - t_all:.0f} s.")
    md = "\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(f"wrote {out}")
    return md


def throughput_table(result: Dict) -> List[str]:
    rows = result["rows"]
    alone = {r["size"]: r["images_per_s"] for r in rows if r["method"] == "student"}
    lines = ["| image size | pair | method | batch | precision | images/s | student alone ÷ this |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = f"{alone[r['size']] / r['images_per_s']:.2f}×" if r["size"] in alone else "–"
        lines.append(f"| {r['size']} px | {r['pair']} | {r['method']} | {r['batch']} | {r['precision']} | "
                     f"{r['images_per_s']:.0f} | {rel} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run in seconds (not a measurement)")
    p.add_argument("--out", default=None, help="Markdown output (default docs/results/gpu.md; --tiny: runs/gpu_figures/gpu.md)")
    p.add_argument("--json-dir", default="runs/gpu_figures")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(GPU))
    args = p.parse_args(argv)
    # a tiny run never overwrites the documented figures unless told to
    out = Path(args.out or ("runs/gpu_figures/gpu.md" if args.tiny else "docs/results/gpu.md"))
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    run(args.tiny, out, Path(args.json_dir), only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
