"""Where and at what precision a run computes: device, autocast dtype, memory format.

Training and evaluation pick these the same way; evaluation is fp32 unless asked otherwise (see
``train.eval_precision`` and ``crossdistill eval --precision``), so the metric a run reports is
the metric ``crossdistill eval`` measures on its ``student.pt``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError
from .defaults import cpu_precision, training_channels_last


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap.upper() or "AVX512" in cap.upper()


def pick_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """None = fp32. ``auto``: bf16 where the hardware has it fast (measured: `crossdistill bench amp`)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cpu_precision(device)  # the measured table in engine/defaults.py
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def channels_last_trips_cpu_bug(model: torch.nn.Module) -> Optional[str]:
    """The first convolution of ``model`` that torch's CPU channels_last backward mishandles, or None.

    Measured on torch 2.13 (CPU, AVX2): the backward of a strided convolution with 2 to 7 input
    channels in channels_last corrupts the heap or hangs (1×1 stride 2: 2, 4 and 7 channels abort with
    ``double free or corruption``, 4 and 6 hang with two threads; 1 and ≥ 8 channels are fine), e.g.
    the shortcut of a CIFAR ResNet of width 4; a 3×3 stride-2 one with 4 channels passed, but every
    strided convolution in that range is refused, to be safe. The measured default then stays contiguous."""
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and 1 < m.in_channels // m.groups < 8 and max(m.stride) > 1:
            return name
    return None


def pick_channels_last(setting: Optional[bool], device: torch.device, dtype: Optional[torch.dtype],
                       training: bool = False) -> bool:
    """``None`` = the measured default. Training: the table in ``engine/defaults.py`` (per device kind
    and precision, e.g. fp32 on an AVX2 CPU). Evaluation: channels_last for reduced precision on CPU
    only, so an fp32 evaluation runs in the canonical layout ``crossdistill eval`` uses."""
    if setting is not None:
        return bool(setting)
    if training:
        return training_channels_last(device, dtype)
    return device.type == "cpu" and dtype is not None


@dataclass(frozen=True)
class Precision:
    """How a forward pass runs: on which device, under which autocast dtype, in which memory format."""

    device: torch.device
    dtype: Optional[torch.dtype] = None  # None = fp32, no autocast
    channels_last: bool = False

    @classmethod
    def pick(cls, device: str, precision: str, channels_last: Optional[bool] = None,
             training: bool = False) -> "Precision":
        dev = pick_device(device)
        dtype = pick_precision(precision, dev)
        return cls(dev, dtype, pick_channels_last(channels_last, dev, dtype, training))

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> Dict[str, Any]:
        """For summary.json: how a metric was computed."""
        name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return {"precision": name, "channels_last": self.channels_last, "device": str(self.device.type)}


def to_device(batch: Dict[str, Any], device: torch.device, channels_last: bool) -> Dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if (k == "input" or k.startswith("input_")) and v.dim() == 4:  # every augmented copy
                v = v.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out[k] = v
    return out


@contextlib.contextmanager
def memory_format(model: torch.nn.Module, channels_last: bool) -> Iterator[None]:
    """Run ``model`` with its 4-d weights in the given layout, and put them back afterwards.

    The layout of the weights chooses the convolution kernels as much as the input's does; an
    evaluation in the canonical layout gives the numbers ``crossdistill eval`` gets from the
    exported (contiguous) ``student.pt``. A layout change moves data, never values.
    """
    was_cl = any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                 and not p.is_contiguous() for p in model.parameters())
    if was_cl == channels_last:
        yield
        return
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    try:
        yield
    finally:
        model.to(memory_format=torch.channels_last if was_cl else torch.contiguous_format)
