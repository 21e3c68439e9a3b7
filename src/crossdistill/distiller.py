"""The Distiller: a student, frozen teacher(s), and a list of weighted terms.

``loss, parts = distiller(batch)`` — works in any training loop::

    distiller = Distiller(student, teacher, [KD(T=4), FitNet(student="layer2", teacher="layer2",
                          projector="inverted")], task=create_task("classification", 100),
                          example_input=x[:2])
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    loss, parts = distiller({"input": x, "label": y}); loss.backward(); opt.step()

Teachers are frozen, kept in eval mode and run under ``no_grad``, their BatchNorms that no term
reads folded into their convolutions (``fast_teacher``, ``teacher_runtime.py``); they are not part of
``state_dict()`` (which holds the student and the methods' projectors/state, for resuming).
``distiller.student.state_dict()`` is the student alone, for export.

Inputs: every network reads the batch field ``"input"`` unless ``input_fields`` names another
(``{"teacher_a": "input_1"}``, see ``data.copies``), then its ``input_transforms`` view; a term's
``Method.extra_student_inputs`` run the student once more per field (two views), its sides for each.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .checks import check_input_channels, check_module, check_state_keys, check_teachers, check_weight
from .errors import ConfigError, NotBuiltError
from .methods.base import TARGET, DataSetup, Method, SampleField, split_loss
from .phases import MAIN
from .precision import AUTOCAST_MODULES, REGION_SAFE, LossInput, TermAutocast, loss_input  # noqa: F401 (re-exported)
from .sides import resolve_side, teacher_key  # noqa: F401 (re-exported)
from .taps import OUTPUT, FeatureTap, StudentEdits
from .teacher_runtime import prepare_teachers
from .terms import (Batch, TermPlan, as_batch, bind_edit, cached_teacher, check_terms, extra_phases, fields_read, plan_terms,
                    read_field, teachers_needed, weight_decay_groups)


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
        fast_teacher: bool = True,
    ):
        super().__init__()
        self.student = check_module(student, "student")
        terms = check_terms(terms)
        self.teachers = nn.ModuleDict(check_teachers(teachers))
        for t in self.teachers.values():
            t.requires_grad_(False)
            t.eval()
        self.terms = nn.ModuleList(terms)
        self.task = task
        self.task_weight = check_weight(task_weight, "task_weight")
        # per-network input views (cross-modal transfer): keys "student" or a teacher name
        self.input_transforms = dict(input_transforms or {})
        # which batch field each network reads (keys "student" or a teacher name); default "input"
        self.input_fields = dict(input_fields or {})
        for who in self.input_fields:
            if who != "student" and who not in self.teachers:
                raise ConfigError(f"input_fields names '{who}', which is neither 'student' nor a teacher "
                                  f"({', '.join(self.teachers) or 'none'})")
        self.phase = MAIN
        self._term_autocast = TermAutocast()
        self._autocast_handles: List[torch.utils.hooks.RemovableHandle] = []
        self._wire()
        if fast_teacher:  # in place: the teachers never train, and their state is never saved
            prepare_teachers(self.teachers, self.student, self._teacher_reads)
        self.built = False
        if example_input is not None:
            self.build(example_input)

    def _wire(self) -> None:
        """Resolve every term (:class:`TermPlan`) and hook the paths they read and edit."""
        self.plans: List[TermPlan] = plan_terms(list(self.terms), self.student, self.teachers, self._field("student"))
        self.labels = [p.label for p in self.plans]
        teacher_paths = {n: [p for plan in self.plans for p in plan.teacher_paths.get(n, ())] for n in
                         teachers_needed(self.plans, [True] * len(self.plans))}
        # the task may score a student side other than the output (a backbone's pooled feature)
        side = getattr(self.task, "output_side", OUTPUT) if self.task is not None else OUTPUT
        self._out_path = OUTPUT if side == OUTPUT else resolve_side(self.student, side, "student")[0]
        self._s_tap = FeatureTap(self.student, [p for plan in self.plans for p in plan.student_paths] + [self._out_path],
                                 "student")
        self._t_taps = {n: FeatureTap(self.teachers[n], ps, f"teacher '{n}'") for n, ps in teacher_paths.items()}
        self._s_edits = StudentEdits(self.student, [p for plan in self.plans for p, _ in plan.edits], "student")
        self._teacher_reads = {n: list(dict.fromkeys(ps)) for n, ps in teacher_paths.items()}

    @torch.no_grad()
    def build(self, example_input: Tensor) -> "Distiller":
        """One dry run (eval mode, no grad) to infer shapes and create the projectors."""
        if not isinstance(example_input, Tensor):
            raise ConfigError(f"example_input must be a tensor batch [B, C, H, W], not {type(example_input).__name__}")
        was_training = self.student.training
        self.student.eval()
        try:
            x = example_input[:2] if example_input.shape[0] > 2 else example_input
            self._check_channels(x)
            active = [True] * len(self.terms)
            s_feats, t_feats = self._forward_networks({f: x for f in fields_read(self.plans, active, self._field)}, active)
            for plan in self.plans:
                plan.method.build(*plan.inputs(s_feats, t_feats))
        finally:
            self.student.train(was_training)
        self.terms.to(next(self.student.parameters()).device)
        for h in self._autocast_handles:
            h.remove()
        self._autocast_handles = self._term_autocast.install(self.terms)
        self.built = True
        return self

    def phases(self) -> List[Tuple[str, int]]:
        """Extra phases declared by the methods (name, epochs), in order, before ``main``."""
        return extra_phases(self.terms)
    def trainable_parameters(self, phase: str = MAIN) -> List[nn.Parameter]:
        if not self.built and len(self.terms):
            raise NotBuiltError("the Distiller is not built yet, so its projectors do not exist and an optimiser made "
                                "now would leave them out; pass example_input=... or call distiller.build(x) first")
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
        return weight_decay_groups(self.trainable_parameters(phase), weight_decay)

    def setup(self, data: DataSetup) -> None:
        if data.task is None and self.task is not None:
            data = dataclasses.replace(data, task=self.task.name)
        for term in self.terms:
            term.setup(data)

    def sample_fields(self) -> Dict[str, SampleField]:
        """Every term's per-sample fields, keyed ``"<term label>.<field>"`` (the data pipeline adds
        them to each training sample: :class:`crossdistill.data.SampleFieldsDataset`). After :meth:`setup`."""
        return {f"{plan.label}.{name}": fn for plan in self.plans for name, fn in plan.method.sample_fields().items()}

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        for term in self.terms:
            term.on_epoch_start(epoch, num_epochs)

    def _check_channels(self, x: Tensor) -> None:
        check_input_channels(self.student, self._view("student", x), "the student", "distill.student_input")
        for name, teacher in self.teachers.items():
            check_input_channels(teacher, self._view(name, x), f"teacher '{name}'", f"teachers.{name}.input")

    # -- forward ----------------------------------------------------------------------------
    def _view(self, who: str, x: Tensor) -> Tensor:
        fn = self.input_transforms.get(who)
        return fn(x) if fn is not None else x

    def teacher_reads(self) -> Dict[str, List[str]]:
        """Per teacher, the paths (``output`` or module paths) that some term reads."""
        return {n: list(ps) for n, ps in self._teacher_reads.items()}

    @torch.no_grad()
    def teacher_features(self, name: str, x: Tensor) -> Dict[str, Tensor]:
        """Teacher ``name`` on input ``x`` (its own input view applied): every tensor a term reads of it."""
        out = self.teachers[name](self._view(name, x))
        feats = self._t_taps[name].pop()
        feats[OUTPUT] = out
        return {p: feats[p] for p in self._teacher_reads[name]}

    def _field(self, who: str) -> str:
        return self.input_fields.get(who, "input")

    def fields_read(self) -> Dict[str, str]:
        """Every batch field some network reads in some phase (``input``, ``input_1``, ...) → its first reader."""
        return fields_read(self.plans, [True] * len(self.terms), self._field)

    def _forward_networks(self, batch: Batch, active: List[bool], term_batches: Optional[List[Batch]] = None):
        """Student features by batch field (``{field: {path: tensor}}``) and teacher features by name.

        With ``term_batches`` (the training forward: each term's view of the batch), the active terms'
        student edits apply to the student's own input: the teachers then run first, so that an edit
        can read their tensors."""
        editing = term_batches is not None and any(on and plan.edits for plan, on in zip(self.plans, active))
        t_feats = self._forward_teachers(batch, active) if editing else None
        main = self._field("student")
        extra = [f for plan, on in zip(self.plans, active) if on for f in plan.student_fields[1:]]
        s_feats: Dict[str, Dict[str, Tensor]] = {}
        for field in dict.fromkeys([main, *extra]):
            x = self._view("student", read_field(batch, field, "the student"))
            if editing and field == main:
                fns: Dict[str, Callable] = {}
                for plan, on, term_batch in zip(self.plans, active, term_batches):
                    if on and plan.edits:
                        t = plan.teacher_inputs(t_feats)
                        for path, fn in plan.edits:
                            fns[path] = bind_edit(fn, t, term_batch, fns.get(path))
                with self._s_edits.active(fns):
                    out = self.student(x)
            else:
                out = self.student(x)
            feats = self._s_tap.pop()
            feats[OUTPUT] = out
            s_feats[field] = feats
        if t_feats is None:
            t_feats = self._forward_teachers(batch, active)
        return s_feats, t_feats

    def _forward_teachers(self, batch: Batch, active: List[bool]) -> Dict[str, Dict[str, Tensor]]:
        t_feats: Dict[str, Dict[str, Tensor]] = {}
        for name in teachers_needed(self.plans, active):
            # the batch may carry the teacher's tensors (the teacher cache): then it does not run
            t_feats[name] = cached_teacher(batch, name, self._teacher_reads.get(name, ())) or self.teacher_features(
                name, read_field(batch, self._field(name), f"teacher '{name}'"))
        return t_feats

    def _term_inputs(self, i: int, s_feats, t_feats) -> Tuple[List[Tensor], List[Tensor]]:  # (tests, profiler)
        return self.plans[i].inputs(s_feats, t_feats)

    def forward(self, batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        if not self.built:
            raise NotBuiltError("Distiller is not built: pass example_input=... or call distiller.build(x) before "
                                "creating the optimiser (projector shapes come from one dry run)")
        batch = as_batch(batch)
        if self.task is not None and self.task.target_key in batch:
            batch[TARGET] = batch[self.task.target_key]  # methods find the task's target under one key
        phase = self.phase
        active = [term.active_in(phase) for term in self.terms]
        term_batches = [plan.batch(batch) if on else batch for plan, on in zip(self.plans, active)]
        try:
            # edits act in the training forward only (never in eval mode, predict, or the dry run)
            s_feats, t_feats = self._forward_networks(batch, active, term_batches if self.training else None)
        except RuntimeError:
            self._check_channels(batch["input"])  # the likely cause, named; otherwise torch's own error
            raise
        main = s_feats[self._field("student")]
        parts: Dict[str, Tensor] = {}
        total = main[OUTPUT].new_zeros((), dtype=torch.float32)
        if phase == MAIN and self.task is not None:
            task_loss = self.task.loss(main[self._out_path].float(), batch)
            if task_loss is not None:  # None: a task without a labelled loss (self-supervised)
                parts["task"] = task_loss.detach()
                total = total + self.task_weight * task_loss
        # losses run in float32 whatever the networks' autocast precision; the terms' convolutions and
        # linear layers run at the networks' precision (precision.TermAutocast)
        dev = main[OUTPUT].device.type
        amp = torch.is_autocast_enabled(dev)
        self._term_autocast.state = (dev, torch.get_autocast_dtype(dev)) if amp else None
        try:
            with torch.autocast(dev, enabled=False) if amp else contextlib.nullcontext():
                for i, (term, label) in enumerate(zip(self.terms, self.labels)):
                    if not active[i]:
                        continue
                    s, t = self._term_inputs(i, s_feats, t_feats)
                    b = term_batches[i]
                    result = term(s, t, b) if phase == MAIN else term.phase_loss(phase, s, t, b)
                    loss, logs = split_loss(result)
                    parts[label] = loss.detach()
                    for k, v in logs.items():
                        parts[f"{label}/{k}"] = v.detach()
                    # β weighs a term against the task loss; extra phases have no task loss to weigh against
                    total = total + (term.weight if phase == MAIN else 1.0) * loss
        finally:
            self._term_autocast.state = None
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
        if strict:
            check_state_keys({k for k in super().state_dict() if not k.startswith("teachers.")}, state_dict)
        return super().load_state_dict(state_dict, strict=False, assign=assign)
