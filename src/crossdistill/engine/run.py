"""A run ready to train: what :func:`crossdistill.build.start_run` hands the
:class:`~crossdistill.engine.trainer.Trainer`, which only reads it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .device import Precision
from .run_folder import FolderLock
from .sampler import EpochSampler


@dataclass(frozen=True)
class TrainingRun:
    run: Any                        # crossdistill.build.Run: config, data sets, task, distiller, student spec
    out: Path                       # the run folder
    rank: int
    world: int
    precision: Precision            # training: device, autocast dtype, memory layout
    eval_precision: Precision
    lock: FolderLock                # held (rank 0) from the start until the loop ends: release it when done
    resume_state: Optional[Dict[str, Any]]  # the checkpoint to resume from (checked against the run), or None
    train_set: Dataset              # the training set with per-sample fields and, if configured, the teacher cache
    cache_info: Dict[str, Any]      # what the teacher cache did ({} without one)
    data_identity: Dict[str, Any]   # what a resume must find again (engine.resume)
    sampler: EpochSampler
    loader_generator: torch.Generator  # the workers' base seed, reseeded every epoch by the loop
    train_loader: DataLoader
    eval_loader: DataLoader
    make_optimizer: Callable[[str], torch.optim.Optimizer]  # phase name → a fresh optimiser for it

    @property
    def cfg(self):
        return self.run.cfg
