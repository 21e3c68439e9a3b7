"""Training steps of zoo models that several benchmarks time (shared code, not a benchmark)."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

#: the precisions a model benchmark compares: (autocast dtype or None, channels_last)
PRECISIONS: Dict[str, Tuple[Optional[torch.dtype], bool]] = {
    "fp32": (None, False),
    "fp32 + channels_last": (None, True),
    "bf16": (torch.bfloat16, False),
    "bf16 + channels_last": (torch.bfloat16, True),
}


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """The networks' autocast, as the trainer enters it (nothing for fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def random_batch(b: int, size: int, classes: int, channels: int = 3, seed: int = 0,
                 device: torch.device = torch.device("cpu"), channels_last: bool = False) -> Dict[str, Tensor]:
    """A fixed batch (``input``, ``label``, ``index``) in the layout the trainer would hand over."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, channels, size, size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return {"input": x, "label": torch.randint(0, classes, (b,), generator=g).to(device),
            "index": torch.randperm(max(b, 1), generator=g)[:b].to(device)}


def sgd(params) -> torch.optim.Optimizer:
    """The CIFAR recipes' optimiser (SGD, momentum 0.9, weight decay 5e-4)."""
    return torch.optim.SGD(list(params), lr=0.01, momentum=0.9, weight_decay=5e-4)


def supervised_step(model: nn.Module, batch: Dict[str, Tensor], dtype: Optional[torch.dtype],
                    device: torch.device, extra: Optional[Callable[[], Tensor]] = None) -> Callable[[], None]:
    """One plain training step of ``model`` (forward, cross-entropy, backward, SGD)."""
    opt = sgd(model.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            out = model(batch["input"])
        loss = F.cross_entropy(out.float(), batch["label"])
        if extra is not None:
            loss = loss + extra()
        loss.backward()
        opt.step()

    return step


def distiller_update(distiller: nn.Module, dtype: Optional[torch.dtype], device: torch.device,
                     phase: str = "main") -> Callable[[Dict[str, Any]], None]:
    """One training step through a :class:`~crossdistill.distiller.Distiller` on the batch it is
    given, as the trainer takes it: the phase's optimiser over ``trainable_parameters(phase)``, the
    networks' autocast around the Distiller, backward and the optimiser step (loss parts stay
    tensors: no host sync)."""
    distiller.train()
    distiller.phase = phase
    opt = sgd(distiller.trainable_parameters(phase))

    def update(batch: Dict[str, Any]) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss, _ = distiller(batch)
        loss.backward()
        opt.step()

    return update


def distiller_step(distiller: nn.Module, batch: Dict[str, Any], dtype: Optional[torch.dtype],
                   device: torch.device, phase: str = "main") -> Callable[[], None]:
    """:func:`distiller_update` on one fixed ``batch``."""
    update = distiller_update(distiller, dtype, device, phase)
    return lambda: update(batch)


def teacher_student_step(student: nn.Module, teacher: nn.Module, batch: Dict[str, Tensor],
                         dtype: Optional[torch.dtype], device: torch.device) -> Callable[[], None]:
    """The unavoidable compute of a distillation step: the student's supervised step plus one
    teacher forward under ``no_grad`` at the same precision (its outputs are not used)."""
    student_step = supervised_step(student, batch, dtype, device)
    teacher.eval()

    def step() -> None:
        with torch.no_grad(), autocast(device, dtype):
            teacher(batch["input"])
        student_step()

    return step
