"""Every distillation loss as a pure function of tensors.

No function holds state or reads globals, and none detaches the teacher: the ``Distiller`` runs the
teacher under ``no_grad`` (so the same functions serve mutual learning). Inputs arrive already
projected and resized; a mismatch raises :class:`~crossdistill.errors.ShapeError`. Each docstring
states the formula and its normalisation.

Losses are discovered like methods: every module in this folder is imported and its ``__all__`` is
re-exported here (``from crossdistill.losses import kd_loss``), so a new family is one new file with
a module-level ``__all__`` and no edit of this one. Two modules exporting one name is an error.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, List

#: exported name → the module (family) that defines it
FAMILIES: Dict[str, str] = {}
__all__: List[str] = []

for _info in pkgutil.iter_modules(__path__):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if not hasattr(_module, "__all__"):
        raise ImportError(f"{_module.__name__} has no __all__: list the loss functions it exports")
    for _name in _module.__all__:
        if _name in FAMILIES:
            raise ImportError(f"loss '{_name}' is exported by both {FAMILIES[_name]} and {_module.__name__}")
        FAMILIES[_name] = _module.__name__
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
