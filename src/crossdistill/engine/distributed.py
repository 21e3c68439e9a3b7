"""Process-group set-up from the environment ``torchrun`` provides (nothing to do otherwise)."""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


@contextlib.contextmanager
def distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        yield
        dist.barrier()  # leave together: a gloo peer torn down mid-operation can abort the other rank
    finally:
        dist.destroy_process_group()


def world_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (equal shapes); ``x`` itself when alone."""
    rank, world = world_info()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)
