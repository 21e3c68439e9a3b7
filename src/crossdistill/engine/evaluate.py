"""The one evaluation loop, used by training (every ``eval_every`` epochs) and by
``crossdistill eval`` (:mod:`crossdistill.commands.evaluate`) — so the metric in ``summary.json``
is the metric ``eval`` measures.

Both score the student through :meth:`Distiller.predict` (which applies the student's input view),
at the same precision (fp32 unless asked), in the canonical memory layout, with the same batch
size; under DDP each rank scores every W-th test sample and the ranks' metric states are summed,
so every sample counts exactly once.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from .device import Precision, memory_format, to_device
from .sampler import ShardSampler


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world),
                      num_workers=num_workers, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def evaluate(distiller, loader: DataLoader, task, precision: Precision) -> Tuple[Dict[str, float], int]:
    """Score ``distiller.student`` on ``loader``: (metrics, number of samples scored over all ranks)."""
    metrics = task.metrics().to(precision.device)
    distiller.eval()
    seen = 0
    with precision.autocast(), memory_format(distiller.student, precision.channels_last):
        for batch in loader:
            batch = to_device(batch, precision.device, precision.channels_last)
            out = distiller.predict(batch["input"])
            task.update_metrics(metrics, out.float(), batch)
            seen += int(batch["input"].shape[0])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = torch.tensor([seen], dtype=torch.long, device=precision.device)
        dist.all_reduce(count)
        seen = int(count)
    return task.compute_metrics(metrics), seen  # torchmetrics sums the ranks' states here
