"""Precision regions of the terms: losses run in float32 whatever the networks' autocast precision,
while the terms' own convolutions and linear layers (projectors, regressors, paraphrasers, heads) run
at the networks' precision and hand float32 back (``docs/speed.md``)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


#: the compute-bound layers that run at the networks' precision inside a term (see :class:`TermAutocast`)
AUTOCAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d)
#: layers that may sit between them inside one low-precision region: elementwise activations, and
#: BatchNorm, which runs the same way in the networks (statistics accumulated in float32 by the kernel)
REGION_SAFE = AUTOCAST_MODULES + (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout,
                                  nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def runs_whole(m: nn.Module) -> bool:
    """A module that runs whole at low precision: a safe layer, an ``nn.Sequential`` of them (a
    Sequential's forward is its children in order: no hidden arithmetic), or a block that declares
    ``residual_region = True`` (its own forward adds nothing but a residual sum) over such children."""
    if isinstance(m, nn.Sequential) or getattr(m, "residual_region", False):
        return all(runs_whole(c) for c in m.children())
    return isinstance(m, REGION_SAFE)


def _has_residual(m: nn.Module) -> bool:
    return any(getattr(x, "residual_region", False) for x in m.modules())


class TermAutocast:
    """Runs the terms' convolutions and linear layers (projectors, regressors, paraphrasers, heads)
    under the networks' autocast, and hands their outputs back in float32.

    The terms themselves run with autocast off, so everything else — normalisations, resizing,
    reductions, the loss arithmetic — stays in float32; only regions whose cost is matrix products
    drop to the networks' precision: an ``nn.Sequential`` made only of convolutions / linear layers,
    elementwise activations and BatchNorm runs whole (one cast in, one out), any other convolution
    or linear layer alone. Without this, a bf16 network would pay fp32 convolutions for a method's
    regressors. A forward pre-hook enters the autocast that :meth:`Distiller.forward` recorded, the
    forward hook (``always_call``: also on an exception) leaves it and upcasts the output. Nothing
    happens when the networks run in fp32 or outside ``forward`` (the dry run).
    """

    def __init__(self) -> None:
        self.state: Optional[Tuple[str, torch.dtype]] = None  # (device type, dtype) while terms run
        self._open: List[torch.autocast] = []

    def install(self, module: nn.Module) -> List[torch.utils.hooks.RemovableHandle]:
        handles = []

        def visit(m: nn.Module, top: bool) -> None:
            if not top and runs_whole(m) and any(isinstance(x, AUTOCAST_MODULES) for x in m.modules()):
                # a region holding residual blocks gets its input in the networks' precision, so that
                # the residual sums stay there too (x + branch(x) would otherwise promote to float32)
                enter = self._enter_cast if _has_residual(m) else self._enter
                handles.append(m.register_forward_pre_hook(enter))
                handles.append(m.register_forward_hook(self._leave, always_call=True))
                return
            for child in m.children():
                visit(child, False)

        for term in module.children():
            visit(term, True)  # never the term itself: its forward holds the loss arithmetic
        return handles

    def _enter(self, _module, _args) -> None:
        if self.state is None:
            return
        ctx = torch.autocast(self.state[0], dtype=self.state[1])
        ctx.__enter__()
        self._open.append(ctx)

    def _enter_cast(self, module, args):
        self._enter(module, args)
        if self.state is None:
            return None
        dtype = self.state[1]
        return tuple(loss_input(a, dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)

    def _leave(self, _module, _args, output):
        if self.state is None or not self._open:
            return None
        self._open.pop().__exit__(None, None, None)
        if isinstance(output, Tensor) and output.is_floating_point() and output.dtype != torch.float32:
            # its gradient goes back in the region's own dtype and layout: a BatchNorm's backward is
            # ~10x slower on CPU when the gradient arrives in the other layout (profiled on DPK)
            return loss_input(output, torch.float32)
        return None


class LossInput(torch.autograd.Function):
    """A tapped student tensor as a term reads it: cast to ``dtype`` (or a view when ``dtype`` is
    None); its gradient goes back in the tensor's own dtype *and memory layout*. Computations on
    the term's side (``flatten``, channel means) return NCHW gradients; a channels_last network
    would otherwise get them in the other layout, and its convolutions' backward would pay for it."""

    @staticmethod
    def forward(ctx, x: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
        ctx.dtype = x.dtype
        ctx.layout = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and \
            x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return x.to(dtype) if dtype is not None and dtype != x.dtype else x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.to(dtype=ctx.dtype, memory_format=ctx.layout), None


def loss_input(x: Tensor, dtype: Optional[torch.dtype] = torch.float32) -> Tensor:
    """``x`` for a loss: in ``dtype`` (None: as it is), its gradient back in ``x``'s dtype and layout."""
    if x.requires_grad and torch.is_grad_enabled():
        return LossInput.apply(x, dtype)
    return x.to(dtype) if dtype is not None else x
