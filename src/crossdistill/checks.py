"""Checks of what a user hands the package — networks, terms, weights, batches — that turn a raw
Python or torch error into one of the package's own errors naming the argument and the fix.
Used by the :class:`~crossdistill.distiller.Distiller` (Python API) and by ``build.py`` (configs)."""
from __future__ import annotations

import numbers
from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn
from torch import Tensor

from .errors import CheckpointError, ConfigError, DataError, ShapeError
from .taps import unwrap


def check_module(obj: Any, arg: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"{arg} must be a torch.nn.Module, not {type(obj).__name__} ({short_repr(obj)})")
    return obj


def check_teachers(teachers: Any) -> Dict[str, nn.Module]:
    """The Distiller's teachers as a dict: ``None`` (none), one module (``default``), or a mapping."""
    if teachers is None:
        return {}
    if isinstance(teachers, nn.Module):
        return {"default": teachers}
    if not isinstance(teachers, Mapping):
        check_module(teachers, "teachers")
    return {n: check_module(t, f"teachers['{n}']") for n, t in teachers.items()}


def check_state_keys(own: set, state_dict: Mapping[str, Any]) -> None:
    """A training state must hold exactly the Distiller's own entries (student, terms; no teachers)."""
    missing, unexpected = sorted(own - set(state_dict)), sorted(set(state_dict) - own)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match this distiller: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            "was it written by a run with another model or method config, or by an older crossdistill "
            "(AB's connectors were stored differently before)? Resume with the config and version that wrote it")


def check_weight(value: Any, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{arg} must be a number, not {type(value).__name__} ({short_repr(value)})")
    value = float(value)
    if not value == value or value in (float("inf"), float("-inf")) or value < 0:
        raise ConfigError(f"{arg} must be a finite number >= 0, got {value}")
    return value


def expected_input_channels(model: nn.Module) -> Optional[int]:
    """The channel count the first convolution of ``model`` reads (None: no convolution first)."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
        if isinstance(m, nn.Linear):
            return None
    return None


def check_input_channels(model: nn.Module, x: Tensor, role: str, view_key: str = "an input view") -> None:
    want = expected_input_channels(model)
    if want is not None and x.dim() >= 2 and int(x.shape[1]) != want:
        raise ShapeError(f"{role} ({type(unwrap(model)).__name__}) reads {want} input channel(s) but is given "
                         f"{int(x.shape[1])} (input {tuple(x.shape)}); give it data with {want} channel(s) or an "
                         f"input view that makes them ({view_key}=... in a config, input_transforms= in Python)")


def check_student_output(student: nn.Module, task, batch: Mapping[str, Tensor], name: str) -> None:
    """One forward of the student on an example batch, through the task's loss and metrics: a student
    whose output the task cannot use fails here, naming both, not at step 1."""
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            out = student(batch["input"])
            if not isinstance(out, Tensor):
                raise ShapeError(f"the student '{name}' returns {type(out).__name__}, not a tensor; "
                                 f"task '{task.name}' needs {_wanted(task)}")
            try:
                task.loss(out.float(), dict(batch))
                task.update_metrics(task.metrics(), out.float(), dict(batch))
            except (RuntimeError, ValueError, IndexError) as e:
                raise ShapeError(f"the student '{name}' outputs {tuple(out.shape)}, which task '{task.name}' cannot use "
                                 f"({_first_line(e)}); it needs {_wanted(task)}: pick a student model made for this "
                                 "task (`crossdistill list models`)") from None
    finally:
        student.train(was)


def check_class_targets(target: Tensor, num_classes: int, field: str, task: str, ignore: Optional[int] = None) -> None:
    """Called when a loss failed: if the cause is a class index out of range, say so."""
    values = target[target != ignore] if ignore is not None else target
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= num_classes):
        bad = int(values.max()) if int(values.max()) >= num_classes else int(values.min())
        raise DataError(f"batch field '{field}' holds class {bad}, outside 0..{num_classes - 1} for task '{task}' "
                        f"with {num_classes} classes; check the labels or num_classes")


def _wanted(task) -> str:
    try:
        c = task.output_channels()
    except Exception:
        return "another output"
    return f"logits [B, {c}]" if getattr(task, "target_key", "") == "label" else f"maps [B, {c}, H, W]"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def short_repr(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."
