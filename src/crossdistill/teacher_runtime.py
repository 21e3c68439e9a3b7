"""A frozen teacher run the way an inference engine would run it.

The teacher never trains: its BatchNorms are fixed affine maps, so each one that directly follows a
convolution can be folded into that convolution's weights and bias (one pass over the map fewer per
BN, forward only). :func:`prepare_teacher` does that *in place* on the teacher module, for the pairs
nobody reads:

- a pair is folded only when the convolution's output goes to the BatchNorm alone, and neither of the
  two modules is hooked (a tap, an edit) or named in ``keep`` — a tapped module keeps its exact
  output — and no module that takes the BatchNorm's output *directly* is hooked or kept (a
  ``"relu1:input"`` tap reads ``bn1``'s output);
- a hooked module is treated as opaque: nothing inside it is folded (its output may be a BN's);
- the data flow comes from a ``torch.fx`` trace of the teacher; a teacher fx cannot trace is left as it
  is (:attr:`TeacherReport.skipped` says why).

Everything downstream of a folded pair equals the plain teacher within float rounding (tests:
``tests/test_teacher_runtime.py`` on the CIFAR zoo, with taps inside folded blocks and ``:input`` taps).
The folded BatchNorm becomes an ``nn.Identity`` at the same path and the convolution gets a bias, so
the module's ``state_dict`` changes: :func:`unfolded_state_dict` gives the teacher's original state
(the teacher cache keys on it, so a cache filled with or without folding stays valid). Teachers are
never saved in checkpoints (``Distiller.state_dict`` drops them), so folding is invisible there.

Folding happens once, when a ``Distiller`` is made (``fast_teacher=True``): the paths read *then* are
kept. A teacher module reused in a second Distiller that taps a folded BatchNorm gets the folded
convolution's output at that path (equal within rounding), but its ``:input`` is then that output,
not the convolution's: build each Distiller from a freshly loaded teacher, or pass ``fast_teacher=False``.

The teacher's forward keeps running under ``no_grad`` (not ``inference_mode``): its outputs go into
losses whose backward saves them, which inference tensors cannot be, and the ``clone()`` that would
make them usable cost more than ``inference_mode`` saved (docs/speed.md, "The frozen teacher").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .taps import split_path, unwrap

__all__ = ["TeacherReport", "prepare_teacher", "fold_batchnorms", "unfolded_state_dict"]

#: where the original (conv weight, conv bias, BatchNorm) of each folded pair is kept on the teacher
_FOLDED_ATTR = "_crossdistill_folded"


@dataclass
class TeacherReport:
    """What :func:`prepare_teacher` did: the folded (conv, bn) paths and why others were not."""

    folded: List[Tuple[str, str]] = field(default_factory=list)
    kept: List[str] = field(default_factory=list)  # BNs left alone because something reads them
    skipped: Optional[str] = None  # why nothing was folded (a teacher fx cannot trace)
    channels_last: bool = False


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_always_called", None))


def _find_pairs(model: nn.Module, keep: Iterable[str]) -> Tuple[List[Tuple[str, str]], List[str]]:
    """(conv path, bn path) pairs safe to fold, and the BNs left alone because something reads them."""
    keep_modules = {split_path(p)[0] for p in keep}
    opaque = {name for name, m in model.named_modules() if name and (_hooked(m) or name in keep_modules)}

    class Tracer(fx.Tracer):
        # a read module is a leaf: its inside is never folded, and its output stays what it was
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname in opaque or super().is_leaf_module(m, qualname)

    graph = Tracer().trace(model)
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs, kept = [], []
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or len(node.args) != 1:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        conv = model.get_submodule(src.target)
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
            continue
        read = (node.target in opaque or src.target in opaque or len(src.users) != 1
                or calls[node.target] != 1 or calls[src.target] != 1
                or any(u.op == "call_module" and u.target in opaque for u in node.users))
        if read:
            kept.append(node.target)
        else:
            pairs.append((src.target, node.target))
    return pairs, kept


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    model.get_submodule(parent)._modules[name] = module


@torch.no_grad()
def fold_batchnorms(model: nn.Module, keep: Iterable[str] = ()) -> TeacherReport:
    """Fold every unread eval-mode BatchNorm into the convolution before it, in place."""
    report = TeacherReport()
    base = unwrap(model)
    try:
        pairs, report.kept = _find_pairs(base, keep)
    except Exception as e:  # any model fx cannot trace (data-dependent control flow, …) runs unfolded
        report.skipped = f"torch.fx could not trace {type(base).__name__}: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
        return report
    folded = getattr(base, _FOLDED_ATTR, {})
    for conv_path, bn_path in pairs:
        conv, bn = base.get_submodule(conv_path), base.get_submodule(bn_path)
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                    bn.weight, bn.bias)
        folded[conv_path] = (conv.weight, conv.bias, bn_path, bn)
        # same memory format as the original weight: the layout chooses the convolution kernel
        fmt = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
            and not conv.weight.is_contiguous() else torch.contiguous_format
        conv.weight = nn.Parameter(w.detach().contiguous(memory_format=fmt), requires_grad=False)
        conv.bias = nn.Parameter(b.detach(), requires_grad=False)
        _set_submodule(base, bn_path, nn.Identity())
        report.folded.append((conv_path, bn_path))
    object.__setattr__(base, _FOLDED_ATTR, folded)  # not a submodule: invisible to state_dict/modules()
    return report


def unfolded_state_dict(model: nn.Module) -> Dict[str, Tensor]:
    """The teacher's ``state_dict`` as it was before :func:`fold_batchnorms` (the same dict when nothing
    was folded): original convolution weights and biases, and every folded BatchNorm's entries."""
    base = unwrap(model)
    folded = getattr(base, _FOLDED_ATTR, {})
    if not folded:
        return model.state_dict()
    sd = base.state_dict()
    for conv_path, (weight, bias, bn_path, bn) in folded.items():
        sd[f"{conv_path}.weight"] = weight
        if bias is None:
            sd.pop(f"{conv_path}.bias", None)
        else:
            sd[f"{conv_path}.bias"] = bias
        for k, v in bn.state_dict().items():
            sd[f"{bn_path}.{k}"] = v
    return sd


def prepare_teacher(model: nn.Module, keep: Iterable[str] = (), channels_last: Optional[bool] = None) -> TeacherReport:
    """Make a frozen teacher cheaper to run, in place, with the same outputs within float rounding:
    BatchNorms folded (see :func:`fold_batchnorms`; ``keep``: paths read by taps, ``:input`` allowed —
    hooked modules are kept anyway) and, with ``channels_last``, its weights in channels_last."""
    model.eval()
    model.requires_grad_(False)
    report = fold_batchnorms(model, keep)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        report.channels_last = True
    return report


def prepare_teachers(teachers: Dict[str, nn.Module], student: nn.Module, reads: Dict[str, Iterable[str]]) -> None:
    """:func:`prepare_teacher` on every teacher, keeping the paths each one is read at (``reads``);
    never on a teacher that shares parameters with the student (it trains)."""
    mine = {id(p) for p in student.parameters()}
    for name, teacher in teachers.items():
        if not any(id(p) in mine for p in teacher.parameters()):
            prepare_teacher(teacher, reads.get(name, ()))
