"""The Distiller: a student, frozen teacher(s), and a list of weighted terms.

``loss, parts = distiller(batch)`` — works in any training loop::

    distiller = Distiller(student, teacher, [KD(T=4), FitNet(student="layer2", teacher="layer2",
                          projector="inverted")], task=create_task("classification", 100),
                          example_input=x[:2])
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05)
    loss, parts = distiller({"input": x, "label": y}); loss.backward(); opt.step()

Teachers are frozen, kept in eval mode and run under ``no_grad``, their BatchNorms that no term
reads folded into their convolutions (``fast_teacher``, see ``teacher_runtime.py``); they are not part of
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
import dataclasses
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .checks import check_input_channels, check_module, check_terms, check_weight
from .errors import ConfigError, DataError, NotBuiltError, ShapeError
from .methods.base import TARGET, DataSetup, Method, SampleField, as_list, split_loss
from .taps import INPUT_SUFFIX, OUTPUT, FeatureTap, StudentEdits, split_path, unwrap
from .teacher_runtime import prepare_teacher

Batch = Dict[str, Tensor]
MAIN = "main"


def teacher_key(name: str, path: str) -> str:
    """The batch field that may carry teacher ``name``'s tensor at ``path`` (e.g. from the teacher
    cache); when a batch has every tensor the terms read of a teacher, that teacher does not run."""
    return f"teacher/{name}/{path}"


def resolve_side(model: nn.Module, side: str, role: str) -> List[str]:
    """Expand a side to module paths: an alias (``@pooled``, ``@encoder``, ``@stage:N``, ``@stages``,
    ``@preacts``, ``@preact:N``) or a module path, either one with the suffix ``:input`` to read the
    module's input instead of its output."""
    base, is_input = split_path(side)
    paths = _resolve_alias(model, base, role)
    return [p + INPUT_SUFFIX for p in paths] if is_input else paths


def _resolve_alias(model: nn.Module, side: str, role: str) -> List[str]:
    if not side.startswith("@"):
        return [side]
    m = unwrap(model)
    stages = list(getattr(m, "feature_layers", ()))
    # the reference's pre-activation maps where the model declares them, else its stage outputs
    preacts = list(getattr(m, "preact_layers", ()) or stages)
    try:
        if side == "@pooled":
            return [m.pooled_layer]
        if side == "@encoder":
            return [getattr(m, "encoder_layer", None) or stages[-1]]
        if side in ("@stages", "@preacts"):
            chosen = stages if side == "@stages" else preacts
            if not chosen:
                raise IndexError
            return chosen
        if side.startswith("@stage:"):
            return [stages[int(side[len("@stage:"):])]]
        if side.startswith("@preact:"):
            return [preacts[int(side[len("@preact:"):])]]
    except (AttributeError, IndexError, ValueError):
        raise ConfigError(
            f"{role} ({type(m).__name__}) cannot resolve '{side}': it declares feature_layers={stages}, "
            f"preact_layers={list(getattr(m, 'preact_layers', ()))} and pooled_layer={getattr(m, 'pooled_layer', None)!r}; "
            "give a module path instead"
        ) from None
    raise ConfigError(f"unknown side alias '{side}': use @pooled, @encoder, @stage:N, @stages, @preact:N, @preacts "
                      "or a module path (add ':input' to read a module's input)")


def as_batch(batch) -> Batch:
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return {"input": batch[0], "label": batch[1]}
    if isinstance(batch, Tensor):
        return {"input": batch}
    raise ConfigError(f"a batch must be a dict with an 'input' field, an (input, label) pair or a tensor, not {type(batch).__name__}")


#: the compute-bound layers that run at the networks' precision inside a term (see ``_TermAutocast``)
AUTOCAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                    nn.ConvTranspose3d)
#: layers that may sit between them inside one low-precision region: elementwise activations, and
#: BatchNorm, which runs the same way in the networks (statistics accumulated in float32 by the kernel)
REGION_SAFE = AUTOCAST_MODULES + (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout,
                                  nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _region(m: nn.Module) -> bool:
    """A module that runs whole at low precision: a safe layer, or an ``nn.Sequential`` of them
    (a Sequential's forward is its children in order: no hidden arithmetic)."""
    if isinstance(m, nn.Sequential):
        return all(_region(c) for c in m.children())
    return isinstance(m, REGION_SAFE)


class _TermAutocast:
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
            if not top and _region(m) and any(isinstance(x, AUTOCAST_MODULES) for x in m.modules()):
                handles.append(m.register_forward_pre_hook(self._enter))
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

    def _leave(self, _module, _args, output):
        if self.state is None or not self._open:
            return None
        self._open.pop().__exit__(None, None, None)
        if isinstance(output, Tensor) and output.is_floating_point() and output.dtype != torch.float32:
            # its gradient goes back in the region's own dtype and layout: a BatchNorm's backward is
            # ~10x slower on CPU when the gradient arrives in the other layout (profiled on DPK)
            return loss_input(output, torch.float32)
        return None


class _LossInput(torch.autograd.Function):
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
        return _LossInput.apply(x, dtype)
    return x.to(dtype) if dtype is not None else x


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
        if teachers is None:
            teachers = {}
        elif isinstance(teachers, nn.Module):
            teachers = {"default": teachers}
        elif not isinstance(teachers, Mapping):
            check_module(teachers, "teachers")
        teachers = {n: check_module(t, f"teachers['{n}']") for n, t in teachers.items()}
        terms = check_terms(terms)
        self.teachers = nn.ModuleDict(dict(teachers))
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
        self._term_autocast = _TermAutocast()
        self._autocast_handles: List[torch.utils.hooks.RemovableHandle] = []
        self.labels = self._labels()
        self._wire()
        if fast_teacher:  # fold the BatchNorms no tap reads into their convolutions, in place (teacher_runtime.py)
            mine = {id(p) for p in self.student.parameters()}
            for name, teacher in self.teachers.items():
                if not any(id(p) in mine for p in teacher.parameters()):  # never a teacher that is the student
                    prepare_teacher(teacher, self._teacher_reads.get(name, ()))
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
        # student edits, resolved like the sides: per term, (module path, fn) pairs
        self._edits: List[List[Tuple[str, Callable]]] = []
        for term in self.terms:
            pairs = []
            for side, fn in term.edits().items():
                if not callable(fn):
                    raise ConfigError(f"method '{term.name}': the edit for side '{side}' is not callable")
                pairs += [(p, fn) for p in resolve_side(self.student, side, "student")]
            self._edits.append(pairs)
        self._s_edits = StudentEdits(self.student, [p for pairs in self._edits for p, _ in pairs], "student")
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
            s_feats, t_feats = self._forward_networks({f: x for f in self._fields_read(active)}, active)
            for i, term in enumerate(self.terms):
                s, t = self._term_inputs(i, s_feats, t_feats)
                term.build(s, t)
        finally:
            self.student.train(was_training)
        device = next(self.student.parameters()).device
        self.terms.to(device)
        for h in self._autocast_handles:
            h.remove()
        self._autocast_handles = self._term_autocast.install(self.terms)
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
        from .projectors import WEIGHT_DECAY_HINT

        groups: Dict[float, List[nn.Parameter]] = {}
        for p in self.trainable_parameters(phase):
            groups.setdefault(float(getattr(p, WEIGHT_DECAY_HINT, weight_decay)), []).append(p)
        return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]

    def setup(self, data: DataSetup) -> None:
        if data.task is None and self.task is not None:
            data = dataclasses.replace(data, task=self.task.name)
        for term in self.terms:
            term.setup(data)

    def sample_fields(self) -> Dict[str, SampleField]:
        """Every term's per-sample fields, keyed ``"<term label>.<field>"`` (the data pipeline adds
        them to each training sample: :class:`crossdistill.data.SampleFieldsDataset`). After :meth:`setup`."""
        return {f"{label}.{name}": fn for term, label in zip(self.terms, self.labels)
                for name, fn in term.sample_fields().items()}

    def _term_batch(self, i: int, batch: Batch) -> Batch:
        """The batch as term ``i`` sees it: its own per-sample fields under their short names. A field
        the data pipeline did not add (your own loop) is computed here, from ``batch["index"]``."""
        fields = self.terms[i].sample_fields()
        if not fields:
            return batch
        out = dict(batch)
        for name, fn in fields.items():
            key = f"{self.labels[i]}.{name}"
            if key in batch:
                out[name] = batch[key]
                continue
            if "index" not in batch:
                raise ConfigError(f"method '{self.labels[i]}' needs batch['index'], the dataset position of every "
                                  "sample: wrap the training set in crossdistill.data.IndexedDataset (the trainer does)")
            index = torch.as_tensor(batch["index"]).flatten()
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, ())))  # follows the torch RNG
            out[name] = torch.stack([torch.as_tensor(fn(int(j), rng)) for j in index.tolist()]).to(index.device)
        return out

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

    def _from_batch(self, name: str, batch: Optional[Batch]) -> Optional[Dict[str, Tensor]]:
        if not batch:
            return None
        keys = {p: teacher_key(name, p) for p in self._teacher_reads.get(name, ())}
        if keys and all(k in batch for k in keys.values()):
            return {p: batch[k] for p, k in keys.items()}
        return None

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

    def _forward_networks(self, batch: Batch, active: List[bool], term_batches: Optional[List[Batch]] = None):
        """Student features by batch field (``{field: {path: tensor}}``) and teacher features by name.

        With ``term_batches`` (the training forward: each term's view of the batch), the active terms'
        student edits apply to the student's own input: the teachers then run first, so that an edit
        can read their tensors."""
        editing = term_batches is not None and any(active[i] and self._edits[i] for i in range(len(self.terms)))
        t_feats = self._forward_teachers(batch, active) if editing else None
        main = self._field("student")
        extra = [f for i in range(len(self.terms)) if active[i] for f in self.terms[i].extra_student_inputs]
        s_feats: Dict[str, Dict[str, Tensor]] = {}
        for field in dict.fromkeys([main, *extra]):
            x = self._view("student", self._read(batch, field, "the student"))
            if editing and field == main:
                fns: Dict[str, Callable] = {}
                for i, pairs in enumerate(self._edits):
                    if not (active[i] and pairs):
                        continue
                    t = self._teacher_inputs(i, t_feats)
                    for path, fn in pairs:
                        fns[path] = self._bind_edit(fn, t, term_batches[i], fns.get(path))
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

    @staticmethod
    def _bind_edit(fn: Callable, t: List[Tensor], batch: Batch, inner: Optional[Callable]) -> Callable[[Tensor], Tensor]:
        # several edits of one module compose in term order
        if inner is None:
            return lambda out: fn(out, t, batch)
        return lambda out: fn(inner(out), t, batch)

    def _forward_teachers(self, batch: Batch, active: List[bool]) -> Dict[str, Dict[str, Tensor]]:
        t_feats: Dict[str, Dict[str, Tensor]] = {}
        for name in self._teachers_needed(active):
            # the batch may carry the teacher's tensors (the teacher cache): then it does not run
            t_feats[name] = self._from_batch(name, batch) or self.teacher_features(
                name, self._read(batch, self._field(name), f"teacher '{name}'"))
        return t_feats

    def _term_inputs(self, i: int, s_feats, t_feats) -> Tuple[List[Tensor], List[Tensor]]:
        # float32 unless the term reads the networks' dtype itself (its losses upcast inside their reductions)
        dtype = torch.float32 if self.terms[i].float32_inputs else None
        s = [loss_input(s_feats[f][p], dtype) for f in self._student_fields(i) for p in self._s_paths[i]]
        return s, self._teacher_inputs(i, t_feats, dtype)

    def _teacher_inputs(self, i: int, t_feats, dtype: Optional[torch.dtype] = torch.float32) -> List[Tensor]:
        term = self.terms[i]
        if not term.needs_teacher:
            return []
        cast = (lambda v: v.to(dtype)) if dtype is not None else (lambda v: v)
        paths = self._t_paths_of[i]
        if term.combine_teachers == "separate":  # every teacher's sides in turn, for independent heads
            return [cast(t_feats[n][p]) for n in term.from_teacher for p in paths[n]]
        t: List[Tensor] = []
        for j in range(len(paths[term.from_teacher[0]])):
            views = [t_feats[n][paths[n][j]] for n in term.from_teacher]
            if len({tuple(v.shape) for v in views}) > 1:
                raise ShapeError(f"ensemble teachers {term.from_teacher} give different shapes at "
                                 f"{[paths[n][j] for n in term.from_teacher]}: {[tuple(v.shape) for v in views]}; "
                                 "for independent heads per teacher use a method that reads them separately")
            t.append(cast(views[0]) if len(views) == 1 else torch.stack([v.float() for v in views]).mean(0))
        return t

    def forward(self, batch) -> Tuple[Tensor, Dict[str, Tensor]]:
        if not self.built:
            raise NotBuiltError("Distiller is not built: pass example_input=... or call distiller.build(x) before "
                                "creating the optimiser (projector shapes come from one dry run)")
        batch = as_batch(batch)
        if self.task is not None and self.task.target_key in batch:
            batch[TARGET] = batch[self.task.target_key]  # methods find the task's target under one key
        phase = self.phase
        active = [term.active_in(phase) for term in self.terms]
        term_batches = [self._term_batch(i, batch) if active[i] else batch for i in range(len(self.terms))]
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
        # linear layers run at the networks' precision (_TermAutocast)
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
        own = {k for k in super().state_dict() if not k.startswith("teachers.")}
        if strict:
            missing = sorted(own - set(state_dict))
            unexpected = sorted(set(state_dict) - own)
            if missing or unexpected:
                from .errors import CheckpointError
                raise CheckpointError(
                    f"checkpoint does not match this distiller: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                    "was it written by a run with another model or method config, or by an older crossdistill "
                    "(AB's connectors changed with issue 9)? Resume with the config and version that wrote it")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def remove_hooks(self) -> None:
        self._s_tap.remove()
        self._s_edits.remove()
        for tap in self._t_taps.values():
            tap.remove()
        for h in self._autocast_handles:
            h.remove()
        self._autocast_handles = []
