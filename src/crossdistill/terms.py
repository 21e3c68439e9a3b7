"""The terms of a :class:`~crossdistill.distiller.Distiller`, resolved once against its networks:
one :class:`TermPlan` per term says where the term reads the student and each teacher, which
student modules it edits, and how its tensors and batch are handed to it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .checks import short_repr
from .errors import ConfigError, DataError, ShapeError
from .methods.base import Method, as_list
from .precision import loss_input
from .projectors import WEIGHT_DECAY_HINT
from .sides import resolve_side, teacher_key

Batch = Dict[str, Tensor]


@dataclass
class TermPlan:
    """Term ``method`` as the Distiller runs it (resolved at construction: an unknown path fails then)."""

    label: str                           # its name in the loss parts ("kd", "kd_1", ...)
    method: Method
    student_paths: List[str]             # module paths (or "output") it reads of the student
    teacher_paths: Dict[str, List[str]]  # the same, per teacher it reads ({} if it reads none)
    edits: List[Tuple[str, Callable]] = field(default_factory=list)  # (student module path, edit fn)
    student_fields: List[str] = field(default_factory=list)  # batch fields it sees the student on

    @property
    def teachers(self) -> List[str]:
        """The teachers it reads, in order."""
        return list(self.teacher_paths)

    def batch(self, batch: Batch) -> Batch:
        """The batch as the term sees it: its own per-sample fields under their short names. A field
        the data pipeline did not add (your own loop) is computed here, from ``batch["index"]``."""
        fields = self.method.sample_fields()
        if not fields:
            return batch
        out = dict(batch)
        for name, fn in fields.items():
            key = f"{self.label}.{name}"
            if key in batch:
                out[name] = batch[key]
                continue
            if "index" not in batch:
                raise ConfigError(f"method '{self.label}' needs batch['index'], the dataset position of every "
                                  "sample: wrap the training set in crossdistill.data.IndexedDataset (the trainer does)")
            index = torch.as_tensor(batch["index"]).flatten()
            rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, ())))  # follows the torch RNG
            out[name] = torch.stack([torch.as_tensor(fn(int(j), rng)) for j in index.tolist()]).to(index.device)
        return out

    def inputs(self, s_feats, t_feats) -> Tuple[List[Tensor], List[Tensor]]:
        """The term's student and teacher tensors from the networks' features."""
        # float32 unless the term reads the networks' dtype itself (its losses upcast inside their reductions)
        dtype = torch.float32 if self.method.float32_inputs else None
        s = [loss_input(s_feats[f][p], dtype) for f in self.student_fields for p in self.student_paths]
        return s, self.teacher_inputs(t_feats, dtype)

    def teacher_inputs(self, t_feats, dtype: Optional[torch.dtype] = torch.float32) -> List[Tensor]:
        names = self.teachers
        if not names:
            return []
        cast = (lambda v: v.to(dtype)) if dtype is not None else (lambda v: v)
        paths = self.teacher_paths
        if self.method.combine_teachers == "separate":  # every teacher's sides in turn, for independent heads
            return [cast(t_feats[n][p]) for n in names for p in paths[n]]
        t: List[Tensor] = []
        for j in range(len(paths[names[0]])):
            views = [t_feats[n][paths[n][j]] for n in names]
            if len({tuple(v.shape) for v in views}) > 1:
                raise ShapeError(f"ensemble teachers {names} give different shapes at "
                                 f"{[paths[n][j] for n in names]}: {[tuple(v.shape) for v in views]}; "
                                 "for independent heads per teacher use a method that reads them separately")
            t.append(cast(views[0]) if len(views) == 1 else torch.stack([v.float() for v in views]).mean(0))
        return t


def check_terms(terms: Any) -> list:
    if isinstance(terms, (str, bytes, Method)) or not isinstance(terms, Sequence):
        raise ConfigError(f"terms must be a list of methods, e.g. [KD(T=4)], not {type(terms).__name__} "
                          f"({short_repr(terms)})")
    for i, term in enumerate(terms):
        if isinstance(term, str):
            raise ConfigError(f"terms[{i}] is the name '{term}', not a method; build it first: "
                              f"build_method('{term}') or its class (e.g. KD(T=4))")
        if not isinstance(term, Method):
            raise ConfigError(f"terms[{i}] must be a Method (e.g. KD(T=4)), not {type(term).__name__}")
    return list(terms)


def term_labels(terms: Sequence[Method]) -> List[str]:
    """Each term's name, numbered from the second of a kind on (``kd``, ``kd_1``, ...)."""
    labels, seen = [], {}
    for term in terms:
        base = term.name or type(term).__name__.lower()
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}_{seen[base] - 1}")
    return labels


def plan_terms(terms: Sequence[Method], student: nn.Module, teachers: Mapping[str, nn.Module],
               student_field: str) -> List[TermPlan]:
    """Resolve every term's sides and edits against the networks (fails now, not at step 1000)."""
    plans = []
    for term, label in zip(terms, term_labels(terms)):
        s = [p for side in as_list(term.student_side) for p in resolve_side(student, side, "student")]
        per: Dict[str, List[str]] = {}
        if term.needs_teacher:
            for name in term.from_teacher:
                if name not in teachers:
                    have = ", ".join(teachers) or "none"
                    raise ConfigError(f"method '{term.name}' reads teacher '{name}', but the teachers are: {have}; "
                                      "add it under `teachers:` or set from_teacher")
            # each teacher resolves the aliases itself: teachers may differ in architecture
            for name in term.from_teacher:
                per[name] = [p for side in as_list(term.teacher_side)
                             for p in resolve_side(teachers[name], side, f"teacher '{name}'")]
            counts = {n: len(ps) for n, ps in per.items()}
            if term.combine_teachers == "mean" and len(set(counts.values())) > 1:
                raise ConfigError(f"method '{term.name}' averages teachers {term.from_teacher}, but their sides "
                                  f"{term.teacher_side!r} resolve to different numbers of layers {counts}")
        edits = []
        for side, fn in term.edits().items():
            if not callable(fn):
                raise ConfigError(f"method '{term.name}': the edit for side '{side}' is not callable")
            edits += [(p, fn) for p in resolve_side(student, side, "student")]
        plans.append(TermPlan(label, term, s, per, edits, [student_field, *term.extra_student_inputs]))
    return plans


def as_batch(batch) -> Batch:
    if isinstance(batch, Mapping):
        return dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return {"input": batch[0], "label": batch[1]}
    if isinstance(batch, Tensor):
        return {"input": batch}
    raise ConfigError(f"a batch must be a dict with an 'input' field, an (input, label) pair or a tensor, not {type(batch).__name__}")


def extra_phases(terms: Sequence[Method]) -> List[Tuple[str, int]]:
    """Extra phases declared by the methods (name, epochs), in order of appearance."""
    out: Dict[str, int] = {}
    for term in terms:
        for name, epochs in term.extra_phases().items():
            out[name] = max(out.get(name, 0), int(epochs))
    return [(n, e) for n, e in out.items() if e > 0]


def teachers_needed(plans: Sequence[TermPlan], active: Sequence[bool]) -> List[str]:
    return list(dict.fromkeys(n for plan, on in zip(plans, active) if on for n in plan.teachers))


def fields_read(plans: Sequence[TermPlan], active: Sequence[bool], field_of: Callable[[str], str]) -> Dict[str, str]:
    """Batch field → who reads it (the first reader), for the active terms; ``field_of(who)``: a network's field."""
    readers: Dict[str, str] = {field_of("student"): "the student"}
    for plan, on in zip(plans, active):
        for f in plan.student_fields[1:] if on else ():
            readers.setdefault(f, f"term '{plan.label}' (the student's extra input)")
    for n in teachers_needed(plans, active):
        readers.setdefault(field_of(n), f"teacher '{n}'")
    return readers


def read_field(batch: Batch, field: str, who: str) -> Tensor:
    if field not in batch:
        raise DataError(f"{who} reads the batch field '{field}', but the batch has only {sorted(batch)}; "
                        "independently augmented copies input_1, input_2, ... come from data.copies")
    return batch[field]


def cached_teacher(batch: Optional[Batch], name: str, reads: Sequence[str]) -> Optional[Dict[str, Tensor]]:
    """Teacher ``name``'s tensors if the batch carries every one a term reads (the teacher cache)."""
    if not batch:
        return None
    keys = {p: teacher_key(name, p) for p in reads}
    if keys and all(k in batch for k in keys.values()):
        return {p: batch[k] for p, k in keys.items()}
    return None


def bind_edit(fn: Callable, t: List[Tensor], batch: Batch, inner: Optional[Callable]) -> Callable[[Tensor], Tensor]:
    """Edit ``fn`` bound to its term's teacher tensors and batch; several edits of one module compose in term order."""
    if inner is None:
        return lambda out: fn(out, t, batch)
    return lambda out: fn(inner(out), t, batch)


def weight_decay_groups(params: Sequence[nn.Parameter], weight_decay: float) -> List[Dict[str, object]]:
    """Optimiser parameter groups: parameters that carry their own weight decay (``projectors.set_weight_decay``)
    get a group of their own; the rest share ``weight_decay``. Order is deterministic (resume-safe)."""
    groups: Dict[float, List[nn.Parameter]] = {}
    for p in params:
        groups.setdefault(float(getattr(p, WEIGHT_DECAY_HINT, weight_decay)), []).append(p)
    return [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]
