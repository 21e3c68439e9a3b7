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

Inputs: every network reads the batch field ``"input"`` unless ``input_fields`` names another one
(``{"teacher_a": "input_1"}``: an independently augmented copy, see ``data.copies``), then its
``input_transforms`` view. A term that needs the student on further fields (two views for a
self-supervised objective) lists them in ``Method.extra_student_inputs``; the student then runs
once per distinct field, and the term's student tensors are its sides for each field in turn.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .errors import ConfigError, DataError, ShapeError
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
        input_fields: Optional[Mapping[str, str]] = None,
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
        # which batch field each network reads (keys "student" or a teacher name); default "input"
        self.input_fields = dict(input_fields or {})
        for who in self.input_fields:
            if who != "student" and who not in self.teachers:
                raise ConfigError(f"input_fields names '{who}', which is neither 'student' nor a teacher "
                                  f"({', '.join(self.teachers) or 'none'})")
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
        self._t_paths: List[List[str]] = []  # the first teacher's paths, per term
        self._t_paths_of: List[Dict[str, List[str]]] = []  # every teacher's paths, per term
        teacher_paths: Dict[str, List[str]] = {}
        for term in self.terms:
            s = [p for side in as_list(term.student_side) for p in resolve_side(self.student, side, "student")]
            self._s_paths.append(s)
            per: Dict[str, List[str]] = {}
            if term.needs_teacher:
                for name in term.from_teacher:
                    if name not in self.teachers:
                        have = ", ".join(self.teachers) or "none"
                        raise ConfigError(f"method '{term.name}' reads teacher '{name}', but the teachers are: {have}; "
                                          "add it under `teachers:` or set from_teacher")
                # each teacher resolves the aliases itself: teachers may differ in architecture
                for name in term.from_teacher:
                    per[name] = [p for side in as_list(term.teacher_side)
                                 for p in resolve_side(self.teachers[name], side, f"teacher '{name}'")]
                    teacher_paths.setdefault(name, []).extend(per[name])
                counts = {n: len(ps) for n, ps in per.items()}
                if term.combine_teachers == "mean" and len(set(counts.values())) > 1:
                    raise ConfigError(f"method '{term.name}' averages teachers {term.from_teacher}, but their sides "
                                      f"{term.teacher_side!r} resolve to different numbers of layers {counts}")
            self._t_paths.append(per[term.from_teacher[0]] if per else [])
            self._t_paths_of.append(per)
        # the task may score a student side other than the output (a backbone's pooled feature)
        side = getattr(self.task, "output_side", OUTPUT) if self.task is not None else OUTPUT
        self._out_path = OUTPUT if side == OUTPUT else resolve_side(self.student, side, "student")[0]
        self._s_tap = FeatureTap(self.student, [p for ps in self._s_paths for p in ps] + [self._out_path], "student")
        self._t_taps = {n: FeatureTap(self.teachers[n], ps, f"teacher '{n}'") for n, ps in teacher_paths.items()}

    @torch.no_grad()
    def build(self, example_input: Tensor) -> "Distiller":
        """One dry run (eval mode, no grad) to infer shapes and create the projectors."""
        was_training = self.student.training
        self.student.eval()
        try:
            x = example_input[:2] if example_input.shape[0] > 2 else example_input
            active = [True] * len(self.terms)
            s_feats, t_feats = self._forward_networks({f: x for f in self._fields_read(active)}, active)
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

    def _field(self, who: str) -> str:
        return self.input_fields.get(who, "input")

    def _student_fields(self, i: int) -> List[str]:
        """The batch fields term ``i`` sees the student on: the student's own, then the term's extras."""
        return [self._field("student"), *self.terms[i].extra_student_inputs]

    def _teachers_needed(self, active: List[bool]) -> List[str]:
        names = [n for i, term in enumerate(self.terms) if active[i] and term.needs_teacher for n in term.from_teacher]
        return list(dict.fromkeys(names))

    def _fields_read(self, active: List[bool]) -> Dict[str, str]:
        """Batch field → who reads it (the first reader), for the active terms."""
        readers: Dict[str, str] = {self._field("student"): "the student"}
        for i, (term, label) in enumerate(zip(self.terms, self.labels)):
            if active[i]:
                for f in term.extra_student_inputs:
                    readers.setdefault(f, f"term '{label}' (the student's extra input)")
        for n in self._teachers_needed(active):
            readers.setdefault(self._field(n), f"teacher '{n}'")
        return readers

    def fields_read(self) -> Dict[str, str]:
        """Every batch field some network reads in some phase (``input``, ``input_1``, ...) → its first reader."""
        return self._fields_read([True] * len(self.terms))

    def _read(self, batch: Batch, field: str, who: str) -> Tensor:
        if field not in batch:
            raise DataError(f"{who} reads the batch field '{field}', but the batch has only {sorted(batch)}; "
                            "independently augmented copies input_1, input_2, ... come from data.copies")
        return batch[field]

    def _forward_networks(self, batch: Batch, active: List[bool]):
        """Student features by batch field (``{field: {path: tensor}}``) and teacher features by name."""
        s_feats: Dict[str, Dict[str, Tensor]] = {}
        main = self._field("student")
        extra = [f for i in range(len(self.terms)) if active[i] for f in self.terms[i].extra_student_inputs]
        for field in dict.fromkeys([main, *extra]):
            out = self.student(self._view("student", self._read(batch, field, "the student")))
            feats = self._s_tap.pop()
            feats[OUTPUT] = out
            s_feats[field] = feats
        t_feats: Dict[str, Dict[str, Tensor]] = {}
        with torch.no_grad():
            for name in self._teachers_needed(active):
                t_out = self.teachers[name](self._view(name, self._read(batch, self._field(name), f"teacher '{name}'")))
                feats = self._t_taps[name].pop()
                feats[OUTPUT] = t_out
                t_feats[name] = feats
        return s_feats, t_feats

    def _term_inputs(self, i: int, s_feats, t_feats) -> Tuple[List[Tensor], List[Tensor]]:
        term = self.terms[i]
        s = [s_feats[f][p].float() for f in self._student_fields(i) for p in self._s_paths[i]]
        t: List[Tensor] = []
        if term.needs_teacher:
            paths = self._t_paths_of[i]
            if term.combine_teachers == "separate":  # every teacher's sides in turn, for independent heads
                return s, [t_feats[n][p].float() for n in term.from_teacher for p in paths[n]]
            for j in range(len(paths[term.from_teacher[0]])):
                views = [t_feats[n][paths[n][j]].float() for n in term.from_teacher]
                if len({tuple(v.shape) for v in views}) > 1:
                    raise ShapeError(f"ensemble teachers {term.from_teacher} give different shapes at "
                                     f"{[paths[n][j] for n in term.from_teacher]}: {[tuple(v.shape) for v in views]}; "
                                     "for independent heads per teacher use a method that reads them separately")
                t.append(views[0] if len(views) == 1 else torch.stack(views).mean(0))
        return s, t

    def forward(self, batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        if not self.built:
            raise RuntimeError("Distiller is not built: pass example_input=... or call distiller.build(x) before "
                               "creating the optimiser (projector shapes come from one dry run)")
        batch = as_batch(batch)
        phase = self.phase
        active = [term.active_in(phase) for term in self.terms]
        s_feats, t_feats = self._forward_networks(batch, active)
        main = s_feats[self._field("student")]
        parts: Dict[str, Tensor] = {}
        total = main[OUTPUT].new_zeros((), dtype=torch.float32)
        if phase == MAIN and self.task is not None:
            task_loss = self.task.loss(main[self._out_path].float(), batch)
            if task_loss is not None:  # None: a task without a labelled loss (self-supervised)
                parts["task"] = task_loss.detach()
                total = total + self.task_weight * task_loss
        # losses run in float32 whatever the networks' autocast precision
        autocast_off = torch.autocast(main[OUTPUT].device.type, enabled=False) \
            if torch.is_autocast_enabled(main[OUTPUT].device.type) else contextlib.nullcontext()
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
        """The student's output alone (what is deployed): no teacher, no loss. A task whose
        ``output_side`` is a feature (self-supervised: ``@pooled``) gets that feature."""
        out = self.student(self._view("student", x))
        feats = self._s_tap.pop()
        return out if self._out_path == OUTPUT else feats[self._out_path]

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
