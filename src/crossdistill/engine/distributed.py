"""Process-group set-up from the environment ``torchrun`` provides (nothing to do otherwise), and the
collectives methods use to keep state identical on every rank."""
from __future__ import annotations

import contextlib
import inspect
import os
from typing import List

import torch
import torch.distributed as dist

from ..phases import MAIN


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


def all_gather_cat(*tensors: torch.Tensor) -> List[torch.Tensor]:
    """Each tensor concatenated over all ranks along dim 0, in rank order (the first dimension may
    differ between ranks: padded for the collective, trimmed after). Every rank ends with the same
    tensors. Alone: the tensors themselves. Not differentiable (the inputs are detached)."""
    rank, world = world_info()
    if world == 1:
        return list(tensors)
    device = tensors[0].device
    size = torch.tensor([tensors[0].shape[0]], device=device, dtype=torch.long)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    out = []
    for x in tensors:
        pad = x.new_zeros((top - x.shape[0],) + tuple(x.shape[1:]))
        padded = torch.cat([x.detach(), pad], 0).contiguous()
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)], 0))
    return out


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` from rank ``src`` to all ranks (nothing to do alone)."""
    rank, world = world_info()
    if world == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src)


def wrap_ddp(distiller, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """The Distiller under DDP. Buffers are not re-broadcast at each forward: BatchNorm statistics
    stay per rank (rank 0's are saved), and method state such as CRD's memory banks is kept
    identical by the methods themselves (gathered updates), which a broadcast would only repeat."""
    # Parameters that get no gradient in some step — those of a method's extra phase (e.g. FT's
    # paraphraser, fixed in the main phase), or of a term inactive in the main phase — need DDP's
    # unused-parameter search; without them the search costs a graph traversal per step and a warning.
    find_unused = any(term.extra_phases() or (not term.active_in(MAIN) and any(True for _ in term.parameters()))
                      for term in distiller.terms)
    options = {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else {"broadcast_buffers": False}
    return torch.nn.parallel.DistributedDataParallel(
        distiller, find_unused_parameters=find_unused,
        device_ids=[device.index] if device.type == "cuda" else None, **options)


_DDP_ARGS = set(inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters)
