"""Sides: where a term reads a network. A side is a module path (its output), a path with the suffix
``:input`` (its first input), ``output`` (the model's return value), or an alias that the model
resolves from what it declares — ``@pooled``, ``@encoder``, ``@stage:N``, ``@stages``, ``@preact:N``,
``@preacts`` (``feature_layers``, ``pooled_layer``, ``encoder_layer``, ``preact_layers``), and on a vision
transformer ``@cls``, ``@tokens``, ``@token_map``, ``@dist_head`` (``TOKEN_ALIASES``)."""
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
    ``@preacts``, ``@preact:N``; on a vision transformer ``@cls``, ``@tokens``, ``@token_map``,
    ``@dist_head`` — see ``TOKEN_ALIASES``) or a module path, either one with the suffix ``:input`` to read the
    module's input instead of its output."""
    base, is_input = split_path(side)
    paths = resolve_alias(model, base, role)
    return [p + INPUT_SUFFIX for p in paths] if is_input else paths


#: transformer sides: alias → the model attribute naming the module (models/vit.py declares them):
#: the class token ``[B, C]``, the mean of the patch tokens ``[B, C]``, the patch tokens as a map
#: ``[B, C, H, W]``, and a distilled model's distillation-token head (its logits)
TOKEN_ALIASES = {"@cls": "cls_layer", "@tokens": "tokens_layer", "@token_map": "token_map_layer",
                 "@dist_head": "dist_head"}


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
        if side in TOKEN_ALIASES:
            path = getattr(m, TOKEN_ALIASES[side], None)
            if not isinstance(path, str):
                raise ConfigError(f"{role} ({type(m).__name__}) cannot resolve '{side}': it declares no "
                                  f"{TOKEN_ALIASES[side]} (a vision transformer's attribute); give a module path instead")
            return [path]
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
    raise ConfigError(f"unknown side alias '{side}': use @pooled, @encoder, @stage:N, @stages, @preact:N, @preacts, "
                      f"{', '.join(TOKEN_ALIASES)} or a module path (add ':input' to read a module's input)")
