"""The base class of every distillation method, and the method registry.

A method is one *term* of the total loss: it names the sides it reads (``student`` / ``teacher``:
``"output"``, a module path, or an alias such as ``"@pooled"``, ``"@encoder"``, ``"@stage:-1"``,
``"@stages"``), builds its projector(s) from one dry-run's tensors in :meth:`build`, and turns the
captured tensors into a loss in :meth:`forward` by calling a pure function from
:mod:`crossdistill.losses`. State a loss truly needs (CRD's memory banks, DPK's running CKA) is a
buffer of the method, so it lives in the ``state_dict`` and checkpoints.

Optional hooks, all generic (the trainer never asks which method it runs):

- :meth:`setup` — receives :class:`DataSetup` (dataset size and labels) before training.
- :meth:`on_epoch_start` — per-epoch schedules.
- :meth:`extra_phases` / :meth:`phase_loss` / :meth:`phase_parameters` — phases that run before
  the main training (e.g. AB/FT/FSP initialisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor

from ..registry import Registry

Side = Union[str, Sequence[str]]
LossResult = Union[Tensor, Dict[str, Tensor]]


@dataclass
class DataSetup:
    """What a method may know about the training data before step 1."""

    num_samples: int
    num_classes: Optional[int] = None
    labels: Optional[Tensor] = None  # [N] long, class label of every training sample


class Method(nn.Module):
    #: registry name, set by ``@register_method``
    name: ClassVar[str] = ""
    #: the reference weight β of this term (REFERENCE.md §3) used when the config gives none
    default_weight: ClassVar[float] = 1.0
    #: teacher-free methods set this to False; no teacher forward then happens for them
    needs_teacher: ClassVar[bool] = True
    #: default sides, overridable per instance
    default_student: ClassVar[Side] = "output"
    default_teacher: ClassVar[Side] = "output"
    #: how a term that reads several teachers (``from_teacher: [a, b]``) receives their tensors:
    #: ``"mean"`` — averaged into one set of sides (an ensemble); ``"separate"`` — each teacher's
    #: sides in turn, ``t = [a's sides..., b's sides...]`` (independent heads, e.g. SimReg)
    combine_teachers: ClassVar[Literal["mean", "separate"]] = "mean"
    #: further batch fields the student is run on for this term (e.g. ``("input_1",)``: a second
    #: augmented view); ``s`` then holds the sides for the student's own input, then for each of these
    extra_student_inputs: Tuple[str, ...] = ()

    def __init__(self, student: Optional[Side] = None, teacher: Optional[Side] = None,
                 from_teacher: Union[str, List[str]] = "default", weight: Optional[float] = None):
        super().__init__()
        self.student_side = student if student is not None else self.default_student
        self.teacher_side = teacher if teacher is not None else self.default_teacher
        # several teacher names: averaged before the loss (an ensemble), or handed over one by one
        # when the class sets combine_teachers = "separate"
        self.from_teacher = [from_teacher] if isinstance(from_teacher, str) else list(from_teacher)
        self.weight = float(self.default_weight if weight is None else weight)

    # -- wiring ---------------------------------------------------------------------------
    def build(self, s: List[Tensor], t: List[Tensor]) -> None:
        """Create projectors / heads from one dry-run's tensors (shapes, dtypes). Default: none."""

    def forward(self, s: List[Tensor], t: List[Tensor], batch: Dict[str, Tensor]) -> LossResult:
        """Return the (unweighted) loss, or a dict with ``"loss"`` plus named parts to log."""
        raise NotImplementedError

    # -- optional generic hooks ----------------------------------------------------------
    def setup(self, data: DataSetup) -> None:
        pass

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        pass

    def active_in(self, phase: str) -> bool:
        """Whether this term contributes in ``phase`` (an inactive term costs nothing: no teacher
        forward on its behalf). Default: the main phase and the phases it declares."""
        return phase == "main" or phase in self.extra_phases()

    def extra_phases(self) -> Dict[str, int]:
        """Phases (name → epochs) to run before main training."""
        return {}

    def phase_loss(self, phase: str, s: List[Tensor], t: List[Tensor], batch: Dict[str, Tensor]) -> LossResult:
        raise NotImplementedError(f"{self.name} declares phase '{phase}' but has no phase_loss")

    def phase_parameters(self, phase: str, student: nn.Module) -> Iterable[nn.Parameter]:
        """What trains during an extra phase. Default: this method's own parameters."""
        return self.parameters()

    def extra_repr(self) -> str:
        return f"student={self.student_side!r}, teacher={self.teacher_side!r}, weight={self.weight}"


METHODS: Registry[type] = Registry("method")


def register_method(name: str):
    def deco(cls):
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def as_list(side: Side) -> List[str]:
    return [side] if isinstance(side, str) else list(side)


def parameters_of(modules: Iterable[Any]) -> List[nn.Parameter]:
    out: List[nn.Parameter] = []
    for m in modules:
        out += list(m.parameters())
    return out


def split_loss(result: LossResult) -> tuple[Tensor, Dict[str, Tensor]]:
    if isinstance(result, Tensor):
        return result, {}
    parts = dict(result)
    return parts.pop("loss"), parts
