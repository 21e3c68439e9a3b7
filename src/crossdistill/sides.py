"""Sides: where a term reads a network. A side is a module path (its output), a path with the suffix
``:input`` (its first input), ``output`` (the model's return value), or an alias that the model
resolves from what it declares — ``@pooled``, ``@encoder``, ``@stage:N``, ``@stages``, ``@preact:N``,
``@preacts`` (``feature_layers``, ``pooled_layer``, ``encoder_layer``, ``preact_layers``)."""
from __future__ import annotations

from typing import List

import torch.nn as nn

from .errors import ConfigError
from .taps import INPUT_SUFFIX, split_path, unwrap


def teacher_key(name: str, path: str) -> str:
    """The batch field that may carry teacher ``name``'s tensor at ``path`` (e.g. from the teacher
    cache); when a batch has every tensor the terms read of a teacher, that teacher does not run."""
    return f"teacher/{name}/{path}"


def resolve_side(model: nn.Module, side: str, role: str) -> List[str]:
    """Expand a side to module paths: an alias (``@pooled``, ``@encoder``, ``@stage:N``, ``@stages``,
    ``@preacts``, ``@preact:N``) or a module path, either one with the suffix ``:input`` to read the
    module's input instead of its output."""
    base, is_input = split_path(side)
    paths = resolve_alias(model, base, role)
    return [p + INPUT_SUFFIX for p in paths] if is_input else paths


def resolve_alias(model: nn.Module, side: str, role: str) -> List[str]:
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
