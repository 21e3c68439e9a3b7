"""NST's loss alone, forward + backward on resnet8x4's / resnet32x4's three stage maps (batch 64, fp32,
one thread, process CPU time; median and quartiles of 15 steps). docs/speed.md (NST) quotes it.

    python -m crossdistill.lab.scripts.nst_micro
"""
import time, torch
torch.set_num_threads(1)
from crossdistill.losses import nst_loss
g = torch.Generator().manual_seed(0)
shapes = [(64, 64, 32, 32), (64, 128, 16, 16), (64, 256, 8, 8)]
xs = [torch.randn(*s, generator=g).relu().requires_grad_() for s in shapes]
ts = [torch.randn(*s, generator=g).relu() for s in shapes]
def step():
    loss = sum(nst_loss(x, t) for x, t in zip(xs, ts))
    loss.backward()
for _ in range(2): step()
times = []
for _ in range(15):
    t0 = time.process_time(); step(); times.append(time.process_time() - t0)
times.sort(); print(f"median {1000*times[7]:.1f} ms  q1 {1000*times[3]:.1f}  q3 {1000*times[11]:.1f}")
