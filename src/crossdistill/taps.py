"""Read intermediate tensors from unmodified models with hooks, by module path.

``FeatureTap(model, ["layer2", "pool", "layer1.1.relu2:input"])`` hooks those submodules; after a
forward pass, ``tap.features`` maps each path to the module's output — or, for a path with the
suffix ``:input``, to the module's (first) input, read by a forward *pre*-hook (e.g. the pre-ReLU sum
of a residual block is the input of its last ReLU). Wrappers are looked through: DDP /
DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``), so the same paths work on wrapped
models. The special side ``"output"`` is the model's own return value and needs no hook.

:class:`StudentEdits` uses the same paths to *replace* a module's output (or input) during a
forward pass: the Distiller's student edits.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable

import torch.nn as nn
from torch import Tensor

from .errors import ConfigError, ShapeError, did_you_mean

OUTPUT = "output"
INPUT_SUFFIX = ":input"


def split_path(path: str) -> tuple[str, bool]:
    """``"layer1.0.relu2:input"`` → ``("layer1.0.relu2", True)``; a plain path → ``(path, False)``."""
    if path.endswith(INPUT_SUFFIX):
        return path[: -len(INPUT_SUFFIX)], True
    return path, False


def _first_tensor(value, role: str, path: str, what: str) -> Tensor:
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        value = value[0]
    if not isinstance(value, Tensor):
        raise ShapeError(f"{role} layer '{path}' {what} {type(value).__name__}, not a tensor; tap a layer that "
                         f"{'takes' if what == 'takes' else 'returns'} one")
    return value


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def resolve(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """``model.get_submodule(path)`` with a message listing the closest valid paths."""
    base = unwrap(model)
    try:
        return base.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in base.named_modules() if n]
        raise ConfigError(
            f"{role} has no layer '{path}': {did_you_mean(path, names)} "
            f"(list them with `crossdistill list layers MODEL`)"
        ) from None


class FeatureTap:
    """Hooks that store the outputs (or, with ``:input``, the inputs) of named submodules during a forward pass."""

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "model"):
        self.features: Dict[str, Tensor] = {}
        self._handles = []
        for path in dict.fromkeys(paths):  # ordered, unique
            if path == OUTPUT:
                continue
            name, is_input = split_path(path)
            module = resolve(model, name, role)
            if is_input:
                # an in-place module (ReLU(inplace=True)) would overwrite the captured input: keep a copy
                copy = bool(getattr(module, "inplace", False))
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(path, role, copy)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(path, role)))

    def _hook(self, path: str, role: str):
        def store(_module, _inputs, output):
            self.features[path] = _first_tensor(output, role, path, "returns")

        return store

    def _pre_hook(self, path: str, role: str, copy: bool):
        def store(_module, inputs):
            x = _first_tensor(inputs, role, path, "takes")
            self.features[path] = x.clone() if copy else x

        return store

    def pop(self) -> Dict[str, Tensor]:
        """Hand over the captured tensors and forget them (no reference kept between steps)."""
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


EditFn = Callable[[Tensor], Tensor]


class StudentEdits:
    """Hooks that replace a module's output (or, with ``:input``, its first input) by ``fn(tensor)``
    while :meth:`active` is on, and do nothing otherwise.

    Registered once, at wiring; the functions are installed per forward pass (``with edits.active({path: fn})``),
    so a forward outside that block (dry run, ``predict``, evaluation) sees the bare model.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "student"):
        self._fns: Dict[str, EditFn] = {}
        self._handles = []
        for path in dict.fromkeys(paths):
            name, is_input = split_path(path)
            if name == OUTPUT:
                raise ConfigError("a student edit needs a module path or alias, not 'output' (edit the loss instead)")
            module = resolve(model, name, role)
            if is_input:
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(path, role)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(path, role)))

    def _hook(self, path: str, role: str):
        def edit(_module, _inputs, output):
            fn = self._fns.get(path)
            if fn is None:
                return None
            if isinstance(output, (tuple, list)):
                first = _first_tensor(output, role, path, "returns")
                return type(output)([fn(first), *output[1:]])
            return fn(_first_tensor(output, role, path, "returns"))

        return edit

    def _pre_hook(self, path: str, role: str):
        def edit(_module, inputs):
            fn = self._fns.get(path)
            if fn is None:
                return None
            return (fn(_first_tensor(inputs, role, path, "takes")), *inputs[1:])

        return edit

    @contextlib.contextmanager
    def active(self, fns: Dict[str, EditFn]):
        self._fns = dict(fns)
        try:
            yield
        finally:
            self._fns = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
