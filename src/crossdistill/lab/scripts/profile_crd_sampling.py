"""Profile ways to draw one row of CRD negatives without replacement (what docs/crd.md reports).

    .venv/bin/python -m crossdistill.lab.scripts.profile_crd_sampling [m=49500] [k=16384]

One thread, median of repeated draws, ms per row. The machine's load changes the absolute numbers;
compare the rows of one run.
"""
import statistics
import sys
import time

import numpy as np
import torch


def main() -> None:
    args = dict(a.split("=") for a in sys.argv[1:])
    m, k = int(args.get("m", 49500)), int(args.get("k", 16384))
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    ways = {
        "numpy Generator.choice(replace=False, shuffle=False)": lambda: rng.choice(m, k, replace=False, shuffle=False),
        "numpy default_rng(seed) + choice (one generator per sample)":
            lambda: np.random.default_rng([0, 1, 2]).choice(m, k, replace=False, shuffle=False),
        "torch.randperm(m)[:k]": lambda: torch.randperm(m, generator=g)[:k],
        "random keys + topk": lambda: torch.rand(m, generator=g).topk(k, sorted=False).indices,
        "torch.multinomial(ones, k, replacement=False)": lambda: torch.multinomial(torch.ones(m), k, generator=g),
        "(with replacement) torch.randint": lambda: torch.randint(0, m, (k,), generator=g),
    }
    print(f"one row of {k} distinct integers below {m}, ms (median of 5 × 20 draws)")
    for name, fn in ways.items():
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            times.append(1e3 * (time.perf_counter() - t0) / 20)
        print(f"  {statistics.median(times):7.3f}  {name}")


if __name__ == "__main__":
    main()
