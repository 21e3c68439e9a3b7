"""Read intermediate tensors from unmodified models with forward hooks, by module path.

``FeatureTap(model, ["layer2", "pool"])`` hooks those submodules; after a forward pass,
``tap.features`` maps each path to its output. Wrappers are looked through: DDP / DataParallel
(``.module``) and ``torch.compile`` (``._orig_mod``), so the same paths work on wrapped models.
The special side ``"output"`` is the model's own return value and needs no hook.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable

import torch.nn as nn
from torch import Tensor

from .errors import ConfigError, ShapeError, did_you_mean

OUTPUT = "output"


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


class TapsComplete(Exception):
    """Raised by a :class:`FeatureTap` with ``stop_when_complete`` once every path has fired: the
    rest of the forward pass (e.g. a frozen teacher's decoder and head) is not needed."""


class FeatureTap:
    """Forward hooks that store the outputs of named submodules during a forward pass.

    ``stop_when_complete``: inside :meth:`cut_short` only, the forward ends (:class:`TapsComplete`)
    at the first module call after every path has been captured — after the last tapped module's own
    hooks, including other people's, have run (for a model whose own output nobody reads; a module
    that runs several times in one forward is then captured at its first call). Outside it — e.g. a
    user calling the model directly — the hooks only store.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], role: str = "model", stop_when_complete: bool = False):
        self.features: Dict[str, Tensor] = {}
        self._handles = []
        self._paths = [p for p in dict.fromkeys(paths) if p != OUTPUT]  # ordered, unique
        self.stop_when_complete = stop_when_complete and bool(self._paths)
        for path in self._paths:
            module = resolve(model, path, role)
            self._handles.append(module.register_forward_hook(self._hook(path, role)))

    def _hook(self, path: str, role: str):
        def store(_module, _inputs, output):
            if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
                output = output[0]
            if not isinstance(output, Tensor):
                raise ShapeError(f"{role} layer '{path}' returns {type(output).__name__}, not a tensor; tap a layer that returns one")
            self.features[path] = output

        return store

    @contextlib.contextmanager
    def cut_short(self):
        """Within this block a forward of the model ends (``TapsComplete``) at the last tapped layer."""
        if not self.stop_when_complete:
            yield
            return

        def stop_if_complete(_module, _inputs):
            if len(self.features) == len(self._paths):
                raise TapsComplete

        # a global pre-hook, for the duration of this block only: the next module call of any kind
        handle = nn.modules.module.register_module_forward_pre_hook(stop_if_complete)
        try:
            yield
        except TapsComplete:
            pass
        finally:
            handle.remove()

    def pop(self) -> Dict[str, Tensor]:
        """Hand over the captured tensors and forget them (no reference kept between steps)."""
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
