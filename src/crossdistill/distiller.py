"""The Distiller: a student, frozen teacher(s), and a list of weighted terms.

``loss, parts = distiller(batch)`` — works in any training loop::

    distiller = Distiller(student, teacher, [KD(T=4), FitNet(student="layer2", teacher="layer2",
                          projector="inverted")], task=create_task("classification", 100),
                          example_input=x[:2])
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    loss, parts = distiller({"input": x, "label": y}); loss.backward(); opt.step()

Teachers are frozen, kept in eval mode and run under ``no_grad``; they are not part of
``state_dict()`` (which holds the student and the methods' projectors/state, for resuming).
``distiller.student.state_dict()`` is the student alone, for export.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .errors import ConfigError, ShapeError
from .methods.base import DataSetup, Method, as_list, split_loss
from .taps import OUTPUT, FeatureTap, unwrap

Batch = Dict[str, Tensor]
MAIN = "main"


def resolve_side(model: nn.Module, side: str, role: str) -> List[str]:
    """Expand an alias (``@pooled``, ``@encoder``, ``@stage:N``, ``@stages``) to module paths."""
    if not side.startswith("@"):
        return [side]
    m = unwrap(model)
    stages = list(getattr(m, "feature_layers", ()))
    try:
        if side == "@pooled":
            return [m.pooled_layer]
        if side == "@encoder":
            return [getattr(m, "encoder_layer", None) or stages[-1]]
        if side == "@stages":
            if not stages:
                raise IndexError
            return stages
        if side.startswith("@stage:"):
            return [stages[int(side[len("@stage:"):])]]
    except (AttributeError, IndexError, ValueError):
        raise ConfigError(
            f"{role} ({type(m).__name__}) cannot resolve '{side}': it declares feature_layers={stages} "
            f"and pooled_layer={getattr(m, 'pooled_layer', None)!r}; give a module path instead"
        ) from None
    raise ConfigError(f"unknown side alias '{side}': use @pooled, @encoder, @stage:N, @stages or a module path")


def as_batch(batch) -> Batch:
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return {"input": batch[0], "label": batch[1]}
    if isinstance(batch, Tensor):
        return {"input": batch}
    raise ConfigError(f"a batch must be a dict with an 'input' field, an (input, label) pair or a tensor, not {type(batch).__name__}")


class Distiller(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teachers: Union[nn.Module, Mapping[str, nn.Module], None] = None,
        terms: Sequence[Method] = (),
        task=None,
        task_weight: float = 1.0,
        example_input: Optional[Tensor] = None,
        input_transforms: Optional[Mapping[str, Callable[[Tensor], Tensor]]] = None,
    ):
        super().__init__()
        self.student = student
        if teachers is None:
            teachers = {}
        elif isinstance(teachers, nn.Module):
            teachers = {"default": teachers}
        self.teachers = nn.ModuleDict(dict(teachers))
        for t in self.teachers.values():
            t.requires_grad_(False)
            t.eval()
        self.terms = nn.ModuleList(terms)
        self.task = task
        self.task_weight = float(task_weight)
        # per-network input views (cross-modal transfer): keys "student" or a teacher name
        self.input_transforms = dict(input_transforms or {})
        self.phase = MAIN
        self.labels = self._labels()
        self._wire()
        self.built = False
        if example_input is not None:
            self.build(example_input)

    # -- wiring -----------------------------------------------------------------------------
    def _labels(self) -> List[str]:
        labels, seen = [], {}
        for term in self.terms:
            base = term.name or type(term).__name__.lower()
            seen[base] = seen.get(base, 0) + 1
            labels.append(base if seen[base] == 1 else f"{base}_{seen[base] - 1}")
        return labels

    def _wire(self) -> None:
        """Resolve every side to module paths and hook them (fails now, not at step 1000)."""
        self._s_paths: List[List[str]] = []
        self._t_paths: List[List[str]] = []
        teacher_paths: Dict[str, List[str]] = {}
        for term in self.terms:
            s = [p for side in as_list(term.student_side) for p in resolve_side(self.student, side, "student")]
            self._s_paths.append(s)
            t: List[str] = []
            if term.needs_teacher:
                for name in term.from_teacher:
                    if name not in self.teachers:
                        have = ", ".join(self.teachers) or "none"
                        raise ConfigError(f"method '{term.name}' reads teacher '{name}', but the teachers are: {have}; "
                                          "add it under `teachers:` or set from_teacher")
                # all teachers of an ensemble must expose the same sides
                t = [p for side in as_list(term.teacher_side)
                     for p in resolve_side(self.teachers[term.from_teacher[0]], side, f"teacher '{term.from_teacher[0]}'")]
                for name in term.from_teacher:
                    teacher_paths.setdefault(name, []).extend(t)
            self._t_paths.append(t)
        self._s_tap = FeatureTap(self.student, [p for ps in self._s_paths for p in ps], "student")
        # a teacher whose output no term reads stops its forward at its last tapped layer
        self._t_taps = {n: FeatureTap(self.teachers[n], ps, f"teacher '{n}'", stop_when_complete=OUTPUT not in ps)
                        for n, ps in teacher_paths.items()}

    @torch.no_grad()
    def build(self, example_input: Tensor) -> "Distiller":
        """One dry run (eval mode, no grad) to infer shapes and create the projectors."""
        was_training = self.student.training
        self.student.eval()
        try:
            x = example_input[:2] if example_input.shape[0] > 2 else example_input
            s_feats, t_feats = self._forward_networks(x, [True] * len(self.terms))
            for i, term in enumerate(self.terms):
                s, t = self._term_inputs(i, s_feats, t_feats)
                term.build(s, t)
        finally:
            self.student.train(was_training)
        device = next(self.student.parameters()).device
        self.terms.to(device)
        self.built = True
        return self

    # -- phases -----------------------------------------------------------------------------
    def phases(self) -> List[Tuple[str, int]]:
        """Extra phases declared by the methods (name, epochs), in order, before ``main``."""
        out: Dict[str, int] = {}
        for term in self.terms:
            for name, epochs in term.extra_phases().items():
                out[name] = max(out.get(name, 0), int(epochs))
        return [(n, e) for n, e in out.items() if e > 0]

    def trainable_parameters(self, phase: str = MAIN) -> List[nn.Parameter]:
        if phase == MAIN:
            params = list(self.student.parameters()) + list(self.terms.parameters())
        else:
            params = [p for term in self.terms if phase in term.extra_phases()
                      for p in term.phase_parameters(phase, self.student)]
        unique = {id(p): p for p in params if p.requires_grad}
        return list(unique.values())

    def parameter_groups(self, phase: str = MAIN, weight_decay: float = 0.0) -> List[Dict[str, object]]:
        """:meth:`trainable_parameters` as optimiser parameter groups: parameters that carry their own
        weight decay (``projectors.set_weight_decay``, e.g. a projector's ``weight_decay`` option) get
        a group of their own; the rest share ``weight_decay``. Order is deterministic (resume-safe)."""
        from .projectors import WEIGHT_DECAY_HINT

        groups: Dict[float, List[nn.Parameter]] = {}
        for p in self.trainable_parameters(phase):
            groups.setdefault(float(getattr(p, WEIGHT_DECAY_HINT, weight_decay)), []).append(p)
        return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]

    def setup(self, data: DataSetup) -> None:
        for term in self.terms:
            term.setup(data)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        for term in self.terms:
            term.on_epoch_start(epoch, num_epochs)

    # -- forward ----------------------------------------------------------------------------
    def _view(self, who: str, x: Tensor) -> Tensor:
        fn = self.input_transforms.get(who)
        return fn(x) if fn is not None else x

    def _forward_networks(self, x: Tensor, active: List[bool]):
        out = self.student(self._view("student", x))
        s_feats = self._s_tap.pop()
        s_feats[OUTPUT] = out
        t_feats: Dict[str, Dict[str, Tensor]] = {}
        needed = {n for i, term in enumerate(self.terms) if active[i] and term.needs_teacher for n in term.from_teacher}
        with torch.no_grad():
            for name in needed:
                t_out = None
                with self._t_taps[name].cut_short():  # ends at the last tapped layer if the output is unused
                    t_out = self.teachers[name](self._view(name, x))
                feats = self._t_taps[name].pop()
                if t_out is not None:
                    feats[OUTPUT] = t_out
                t_feats[name] = feats
        return s_feats, t_feats

    def _term_inputs(self, i: int, s_feats, t_feats) -> Tuple[List[Tensor], List[Tensor]]:
        term = self.terms[i]
        s = [s_feats[p].float() for p in self._s_paths[i]]
        t: List[Tensor] = []
        if term.needs_teacher:
            for p in self._t_paths[i]:
                views = [t_feats[n][p].float() for n in term.from_teacher]
                if len({tuple(v.shape) for v in views}) > 1:
                    raise ShapeError(f"ensemble teachers {term.from_teacher} give different shapes at '{p}': "
                                     f"{[tuple(v.shape) for v in views]}")
                t.append(views[0] if len(views) == 1 else torch.stack(views).mean(0))
        return s, t

    def forward(self, batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        if not self.built:
            raise RuntimeError("Distiller is not built: pass example_input=... or call distiller.build(x) before "
                               "creating the optimiser (projector shapes come from one dry run)")
        batch = as_batch(batch)
        phase = self.phase
        active = [term.active_in(phase) for term in self.terms]
        s_feats, t_feats = self._forward_networks(batch["input"], active)
        parts: Dict[str, Tensor] = {}
        total = s_feats[OUTPUT].new_zeros((), dtype=torch.float32)
        if phase == MAIN and self.task is not None:
            task_loss = self.task.loss(s_feats[OUTPUT].float(), batch)
            parts["task"] = task_loss.detach()
            total = total + self.task_weight * task_loss
        # losses run in float32 whatever the networks' autocast precision
        autocast_off = torch.autocast(s_feats[OUTPUT].device.type, enabled=False) \
            if torch.is_autocast_enabled(s_feats[OUTPUT].device.type) else contextlib.nullcontext()
        with autocast_off:
            for i, (term, label) in enumerate(zip(self.terms, self.labels)):
                if not active[i]:
                    continue
                s, t = self._term_inputs(i, s_feats, t_feats)
                result = term(s, t, batch) if phase == MAIN else term.phase_loss(phase, s, t, batch)
                loss, logs = split_loss(result)
                parts[label] = loss.detach()
                for k, v in logs.items():
                    parts[f"{label}/{k}"] = v.detach()
                # β weighs a term against the task loss; extra phases have no task loss to weigh against
                total = total + (term.weight if phase == MAIN else 1.0) * loss
        return total, parts

    def predict(self, x: Tensor) -> Tensor:
        """The student's output alone (what is deployed): no teacher, no loss."""
        out = self.student(self._view("student", x))
        self._s_tap.pop()
        return out

    # -- modes and state ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        for t in self.teachers.values():
            t.eval()  # a frozen teacher never updates its BN statistics
        return self

    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for k in [k for k in sd if k.startswith(prefix + "teachers.")]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = {k for k in super().state_dict() if not k.startswith("teachers.")}
        if strict:
            missing = sorted(own - set(state_dict))
            unexpected = sorted(set(state_dict) - own)
            if missing or unexpected:
                from .errors import CheckpointError
                raise CheckpointError(
                    f"checkpoint does not match this distiller: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                    "was it written by a run with another model or method config?")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def remove_hooks(self) -> None:
        self._s_tap.remove()
        for tap in self._t_taps.values():
            tap.remove()
