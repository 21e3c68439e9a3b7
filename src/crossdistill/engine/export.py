"""The exported student: weights + how to rebuild them, never non-finite ones."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

import torch

from ..taps import unwrap
from .checkpoint import FORMAT, VERSION, atomic_save


def non_finite(state: Mapping[str, Any]) -> List[str]:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an Inf (one device wait)."""
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    flags = [torch.isfinite(state[k]).all() for k in names]
    try:
        finite = torch.stack(flags).tolist()
    except RuntimeError:  # tensors on several devices
        finite = [bool(f) for f in flags]
    return [k for k, ok in zip(names, finite) if not ok]


def export_student(path: Path, student: torch.nn.Module, spec: Dict[str, Any], metrics: Dict[str, Any],
                   evaluation: Dict[str, Any] | None = None) -> None:
    """The student alone: weights + how to rebuild it. No teacher, projector or optimiser.
    The caller checks :func:`non_finite` first (a NaN student is never exported)."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(student).state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "kind": "student", "model_spec": spec,
           "student": state, "metrics": metrics}
    if evaluation is not None:
        obj["evaluation"] = evaluation
    atomic_save(obj, path)
