"""CRD step: the reference-style gather vs the dense implementation, side by side.

    python -m crossdistill.lab.scripts.crd_bench [n=50000 k=16384 b=64 dim=128 steps=10 out=runs/bench/crd.json] [--quick]

The same as ``crossdistill bench crd ...`` (src/crossdistill/lab/bench/crd.py); see ``docs/crd.md``.
"""
import sys

from crossdistill.lab.bench import run_bench

if __name__ == "__main__":
    args = sys.argv[1:]
    quick = "--quick" in args
    overrides = [a for a in args if a != "--quick"]
    if "--out" in overrides:  # --out PATH is accepted as a synonym of out=PATH
        i = overrides.index("--out")
        overrides[i:i + 2] = [f"out={overrides[i + 1]}"]
    run_bench("crd", overrides, quick=quick)
