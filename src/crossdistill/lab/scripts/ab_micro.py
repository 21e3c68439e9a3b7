"""AB's margin loss alone, forward + backward on resnet8x4's / resnet32x4's three pre-activation maps
(batch 64, one thread, process CPU time, the two variants interleaved round by round): the masked
formula left to autograd (the reference's form, as ``ab_loss`` computed it before) against the closed
form with its hand-written backward (``ab_loss`` now). docs/speed.md (AB) quotes it.

    python -m crossdistill.lab.scripts.ab_micro [ROUNDS (default 15)]
"""
import statistics
import sys

import torch

from crossdistill.lab.bench.common import interleave
from crossdistill.losses import ab_loss


def masked(s, t, m=1.0):
    on = t > 0
    down = ((s > -m) & ~on).to(s.dtype)
    up = ((s <= m) & on).to(s.dtype)
    return ((s + m).pow(2) * down + (s - m).pow(2) * up).sum() / s.shape[0]


if __name__ == "__main__":
    torch.set_num_threads(1)
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    g = torch.Generator().manual_seed(0)
    shapes = [(64, 64, 32, 32), (64, 128, 16, 16), (64, 256, 8, 8)]
    for dtype in (torch.float32, torch.bfloat16):
        xs = [torch.randn(*s, generator=g).to(dtype).requires_grad_() for s in shapes]
        ts = [torch.randn(*s, generator=g).to(dtype) for s in shapes]

        def step(fn):
            # the masked form reads float32 maps, as the method handed them to it before (a cast per map)
            cast = (lambda x: x.float()) if fn is masked else (lambda x: x)
            sum(fn(cast(x), cast(t)) for x, t in zip(xs, ts)).backward()

        variants = {"masked, autograd": lambda: step(masked), "closed form": lambda: step(ab_loss)}
        times = interleave(variants, rounds, warmup=2, clock="cpu")
        a, b = times["masked, autograd"], times["closed form"]
        ratios = sorted(x / y for x, y in zip(a, b))
        q = statistics.quantiles(ratios, n=4)
        print(f"{str(dtype).removeprefix('torch.')}: masked {statistics.median(a):.1f} ms, closed form "
              f"{statistics.median(b):.1f} ms; speed-up {statistics.median(ratios):.2f}x (quartiles {q[0]:.2f}-{q[2]:.2f})")
