"""The base class of every distillation method, the method registry, and the helpers methods share.

A method is one *term* of the total loss: it names the sides it reads (``student`` / ``teacher``:
``"output"``, a module path — its output, or its input with the suffix ``:input`` — or an alias such
as ``"@pooled"``, ``"@encoder"``, ``"@stage:-1"``, ``"@stages"``, ``"@preacts"``), builds its
projector(s) from one dry-run's tensors in :meth:`build`, and turns the captured tensors into a loss
in :meth:`forward` by calling a pure function from :mod:`crossdistill.losses`. State a loss truly
needs (CRD's memory banks) is a buffer of the method, so it lives in the ``state_dict`` and
checkpoints.

Options are the keyword arguments of the subclass's ``__init__``; their types and ranges (written in
the signature, e.g. ``T: Positive = 4.0``) are checked when the method is constructed — from a
config or directly (``KD(T="hot")`` raises :class:`~crossdistill.errors.ConfigError`).

What a method sees of the batch: ``batch["target"]`` is the task's target (the field the task reads:
class indices for classification, the mask, the depth map, …), ``batch["index"]`` the samples'
dataset positions, and the per-sample fields the method declared (:meth:`Method.sample_fields`).

Optional hooks, all generic (the trainer never asks which method it runs):

- :meth:`setup` — receives :class:`DataSetup` (dataset size, labels, task) before training.
- :meth:`sample_fields` — per-sample fields computed by the data pipeline (in loader workers) from
  ``(seed, epoch, index)``: CRD's contrast indices.
- :meth:`edits` — change a student module's output (or input) during the training forward, e.g. to
  mix teacher features into a student stage; the teachers then run first.
- :meth:`on_epoch_start` — per-epoch schedules.
- :meth:`extra_phases` / :meth:`phase_loss` / :meth:`phase_parameters` — phases that run before
  the main training; :class:`InitPhase` is the one-line version for an initialisation phase.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from pydantic import Field
from torch import Tensor

from ..errors import ConfigError
from ..options import validate_options
from ..registry import Registry
from ..taps import unwrap

Side = Union[str, Sequence[str]]
LossResult = Union[Tensor, Dict[str, Tensor]]
#: ``fn(output, teacher_tensors, batch) -> new output``: a student edit (see :meth:`Method.edits`)
Edit = Callable[[Tensor, List[Tensor], Dict[str, Any]], Tensor]
#: ``fn(index, rng) -> tensor``: one sample's field, from its dataset index and its own generator
SampleField = Callable[[int, np.random.Generator], Tensor]

# Option ranges, for method signatures (pydantic checks them when the method is constructed).
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

#: the batch key under which every method finds the task's target
TARGET = "target"


@dataclass
class DataSetup:
    """What a method may know about the training data before step 1."""

    num_samples: int
    num_classes: Optional[int] = None
    labels: Optional[Tensor] = None  # [N] long, class label of every training sample
    task: Optional[str] = None       # the task's name (what ``batch["target"]`` holds); the Distiller fills it


def _validated_init(init: Callable) -> Callable:
    """Wrap a method's ``__init__`` so that the outermost call checks the options of the class being
    built against its signature (names, types, ranges) and passes on the validated values."""
    if getattr(init, "_validates_options", False):
        return init

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if self.__dict__.get("_options_checked"):
            return init(self, *args, **kwargs)
        object.__setattr__(self, "_options_checked", True)
        cls = type(self)
        if args:  # positional options: name them from the signature
            params = [p for p in inspect.signature(cls.__init__).parameters.values()
                      if p.name != "self" and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(args) > len(params):
                raise ConfigError(f"method '{cls.name or cls.__name__}' takes at most {len(params)} positional "
                                  f"option(s); name the options")
            kwargs = {**{p.name: a for p, a in zip(params, args)}, **kwargs}
        kwargs = validate_options(cls, kwargs, f"method '{cls.name or cls.__name__}'")
        return init(self, **kwargs)

    __init__._validates_options = True  # type: ignore[attr-defined]
    return __init__


#: what a method's loss compares (``Method.kind``); the generated tables group and filter by it
KINDS = ("logits", "features", "relations", "contrastive", "prior", "regression", "self-supervised",
         "regulariser", "cross-architecture")


class Method(nn.Module):
    #: registry name, set by ``@register_method``
    name: ClassVar[str] = ""
    # -- what the method is (read by ``crossdistill list methods`` and the generated tables in the
    # README and docs/zoo.md, ``crossdistill.catalog``): declared in the method's own file, kept nowhere else
    #: the paper, as "Authors, VENUE YEAR — Title" (e.g. "Hinton et al., NeurIPS-W 2015 — Distilling the
    #: Knowledge in a Neural Network")
    paper: ClassVar[str] = ""
    #: the paper's year
    year: ClassVar[int] = 0
    #: what the loss compares: one of :data:`KINDS`
    kind: ClassVar[str] = ""
    #: a published CIFAR-100 distiller: it ships a recipe for each RepDistiller pair
    #: (``configs/cifar100/<pair>/<name>.yaml``, tested), and ``crossdistill reproduce zoo`` runs those
    #: recipes as the columns of its grid
    zoo: ClassVar[bool] = False
    #: the reference weight β of this term (RepDistiller's, see docs/zoo.md) used when the config gives none
    default_weight: ClassVar[float] = 1.0
    #: teacher-free methods set this to False; no teacher forward then happens for them
    needs_teacher: ClassVar[bool] = True
    #: the Distiller hands the term float32 tensors; a method whose losses read the networks' dtype
    #: (bf16 under autocast) and upcast inside their own reductions sets False, saving a full copy of
    #: every tapped map
    float32_inputs: ClassVar[bool] = True
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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _validated_init(cls.__dict__["__init__"])

    def __init__(self, student: Optional[Side] = None, teacher: Optional[Side] = None,
                 from_teacher: Union[str, List[str]] = "default", weight: Optional[NonNegative] = None):
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

    def sample_fields(self) -> Dict[str, SampleField]:
        """Per-sample fields (name → ``fn(index, rng) -> Tensor``) the data pipeline adds to every
        training sample, computed in the loader's workers. ``rng`` is a ``numpy.random.Generator``
        seeded from ``(run seed, epoch, index, name)``, so a draw is the same whatever the number of
        workers or ranks, and after a resume. The method reads ``batch[name]``. Called after
        :meth:`setup`; ``fn`` must be picklable (workers). Default: none."""
        return {}

    def edits(self) -> Dict[str, Edit]:
        """Student edits: side → ``fn(output, t, batch) -> new output``, where ``t`` is this term's
        teacher tensors (as :meth:`forward` gets them). The side is resolved like the method's sides;
        with ``:input`` the edit replaces the module's (first) input. Edits act only in the
        Distiller's training forward — never in the dry run, ``predict``, evaluation or export.
        Default: none."""
        return {}

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


Method.__init__ = _validated_init(Method.__init__)  # the base options (weight, sides) are checked too


class InitPhase:
    """Mix-in for a method that starts with an initialisation phase (AB, FT, FSP, as the reference).

    ``class AB(InitPhase, Method)``: the phase ``"init"`` runs for ``self.init_epochs`` epochs before
    main training, with its own optimiser over :meth:`init_parameters` on :meth:`init_loss`. The loss
    of an extra phase is *not* multiplied by the term's weight (β weighs a term against the task loss
    in main training; an init phase has no task loss). ``self.in_main`` says whether the term also
    contributes to main training (an inactive term costs nothing: no teacher forward for it).
    """

    init_epochs: int = 0
    in_main: bool = True

    def init_loss(self, s: List[Tensor], t: List[Tensor], batch: Dict[str, Tensor]) -> LossResult:
        raise NotImplementedError

    def init_parameters(self, student: nn.Module) -> Iterable[nn.Parameter]:
        return self.parameters()  # type: ignore[attr-defined]

    def extra_phases(self) -> Dict[str, int]:
        return {"init": self.init_epochs}

    def active_in(self, phase: str) -> bool:
        return self.in_main if phase == "main" else phase in self.extra_phases()

    def phase_loss(self, phase, s, t, batch) -> LossResult:
        return self.init_loss(s, t, batch)

    def phase_parameters(self, phase, student) -> Iterable[nn.Parameter]:
        return self.init_parameters(student)


class MethodRegistry(Registry):
    """The method registry; looking a method up first loads the opt-in plugins (entry points named by
    ``$CROSSDISTILL_PLUGINS``, see :func:`crossdistill.methods.load_plugins`) — once, and inside the
    command that needs them, so that a broken plugin is reported like any other bad input."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self._plugins_loaded = False
        # set by the package (crossdistill.methods.load_plugins), which imports this module: no import back
        self.plugin_loader: Optional[Callable[[], object]] = None

    def _load_plugins(self) -> None:
        if self._plugins_loaded or self.plugin_loader is None:
            return
        self._plugins_loaded = True
        try:
            self.plugin_loader()
        except Exception:
            self._plugins_loaded = False
            raise

    def get(self, name: str):
        self._load_plugins()
        return super().get(name)

    def names(self) -> list[str]:
        self._load_plugins()
        return super().names()

    def registered(self) -> Dict[str, type]:
        """What is registered now, without loading plugins."""
        return dict(self._items)


METHODS: MethodRegistry = MethodRegistry("method")


def register_method(name: str):
    def deco(cls):
        if cls.kind and cls.kind not in KINDS:  # a typo would silently drop the method from its group
            raise ValueError(f"method '{name}' ({cls.__module__}.{cls.__qualname__}): kind '{cls.kind}' is not "
                             f"one of {', '.join(KINDS)}")
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def as_list(side: Side) -> List[str]:
    return [side] if isinstance(side, str) else list(side)


def split_loss(result: LossResult) -> tuple[Tensor, Dict[str, Tensor]]:
    if isinstance(result, Tensor):
        return result, {}
    parts = dict(result)
    return parts.pop("loss"), parts


# -- helpers several methods share ---------------------------------------------------------------

def check_pairs(method: str, s: List[Tensor], t: List[Tensor], maps: bool = False, at_least: int = 1) -> None:
    """The same number (≥ ``at_least``) of tensors on each side — and ``[B, C, H, W]`` maps if ``maps``."""
    if len(s) != len(t) or len(s) < at_least or (maps and any(f.dim() != 4 for f in list(s) + list(t))):
        what = "[B, C, H, W] maps" if maps else "tensors"
        least = f" (≥ {at_least})" if at_least > 1 else ""
        raise ConfigError(f"{method}: needs the same number{least} of {what} on each side, got {len(s)} student "
                          f"and {len(t)} teacher {'shapes ' + str([tuple(f.shape) for f in s + t]) if maps else ''}"
                          .rstrip() + "; tap as many layers on each side")


def sum_over_pairs(loss: Callable[[Tensor, Tensor], Tensor], s: Sequence[Tensor], t: Sequence[Tensor]) -> Tensor:
    """``Σ_i loss(s_i, t_i)`` — the reference's ``sum(loss_group)`` over stages."""
    return torch.stack([loss(a, b) for a, b in zip(s, t)]).sum()


def student_body_parameters(student: nn.Module) -> List[nn.Parameter]:
    """The student's parameters except its classifier's (RepDistiller's ``get_feat_modules``)."""
    model = unwrap(student)
    head = getattr(model, "classifier", None)
    skip = {id(p) for p in model.get_submodule(head).parameters()} if head else set()
    return [p for p in model.parameters() if id(p) not in skip]
