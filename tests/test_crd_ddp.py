"""CRD under DDP: two gloo processes see different samples; their banks (or queues) and Z must stay
bitwise identical, because every rank updates them with the embeddings gathered from all ranks."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import TinyNet, toy_batch

WORLD = 2
N = 32
PER_RANK = 4
STEPS = 3


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_indices(step: int, rank: int) -> torch.Tensor:
    start = step * WORLD * PER_RANK + rank * PER_RANK
    return torch.arange(start, start + PER_RANK)


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from crossdistill.distiller import Distiller
    from crossdistill.methods import DataSetup, build_method

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        full = toy_batch(n=N, size=8, seed=0)  # the same data set on both ranks
        for memory in ("bank", "queue"):
            torch.manual_seed(100 + rank)  # deliberately different: the method must agree anyway
            term = build_method("crd", nce_k=8, memory=memory, queue_size=12)
            d = Distiller(TinyNet(width=4), TinyNet(width=8), [term], example_input=full["input"][:2])
            d.setup(DataSetup(num_samples=N, labels=full["label"]))
            initial = {k: v.clone() for k, v in term.memory.state_dict().items()}
            ddp = DDP(d, broadcast_buffers=False, find_unused_parameters=True)
            opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05)
            d.train()
            for step in range(STEPS):
                idx = _rank_indices(step, rank)
                opt.zero_grad()
                loss, _ = ddp({k: v[idx] for k, v in full.items()})
                loss.backward()
                opt.step()
            torch.save({"initial": initial, "final": term.memory.state_dict()},
                       os.path.join(out_dir, f"{memory}_rank{rank}.pt"))
        dist.barrier()  # leave together: gloo can abort a rank whose peer tears down first
    finally:
        dist.destroy_process_group()


def test_banks_and_z_stay_identical_across_ranks(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    for memory in ("bank", "queue"):
        r0 = torch.load(tmp_path / f"{memory}_rank0.pt")
        r1 = torch.load(tmp_path / f"{memory}_rank1.pt")
        assert set(r0["final"]) == set(r1["final"])
        for key, value in r0["final"].items():
            assert torch.equal(value, r1["final"][key]), f"{memory}: '{key}' differs between ranks"
        assert float(r0["final"]["Z_s"]) > 0 and float(r0["final"]["Z_t"]) > 0
        # the ranks started from different random states; both now follow rank 0's
        first = "bank_s" if memory == "bank" else "queue_s"
        assert not torch.equal(r0["initial"][first], r1["initial"][first])

    bank0 = torch.load(tmp_path / "bank_rank0.pt")
    init, final = bank0["initial"], bank0["final"]
    seen = {r: torch.cat([_rank_indices(s, r) for s in range(STEPS)]) for r in range(WORLD)}
    unseen = torch.tensor(sorted(set(range(N)) - set(torch.cat(list(seen.values())).tolist())))
    for name in ("bank_s", "bank_t"):
        # rows that rank 0 never saw were updated on rank 0 with rank 1's embeddings
        assert not torch.isclose(final[name][seen[1]], init[name][seen[1]]).all(dim=1).any()
        assert torch.equal(final[name][unseen], init[name][unseen])
        torch.testing.assert_close(final[name][seen[1]].norm(dim=1), torch.ones(len(seen[1])))

    queue0 = torch.load(tmp_path / "queue_rank0.pt")["final"]
    # 3 steps × 2 ranks × 4 = 24 entries through a 12-slot queue: the last 12 remain
    newest = torch.cat([_rank_indices(1, 1), _rank_indices(2, 0), _rank_indices(2, 1)])
    assert sorted(queue0["queue_index"].tolist()) == sorted(newest.tolist())
