"""Option validation: the keyword options of a class's ``__init__`` (a method's, a task's) as a
pydantic model, and the check of given options against it — one :class:`ConfigError` line naming
the option. Below both the config schema and the methods, so either can use it."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .errors import ConfigError, did_you_mean

_SIGNATURE_CACHE: Dict[type, type[BaseModel]] = {}


def options_model(cls: type) -> type[BaseModel]:
    """A pydantic model of the keyword options accepted by ``cls.__init__`` along its MRO."""
    if cls in _SIGNATURE_CACHE:
        return _SIGNATURE_CACHE[cls]
    fields: Dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        init = inspect.unwrap(init)  # methods wrap __init__ to validate their options
        sig = inspect.signature(init)
        hints = inspect.get_annotations(init, eval_str=True)
        more = False
        for name, p in sig.parameters.items():
            if name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                more = True
                continue
            if name not in fields:
                default = ... if p.default is p.empty else p.default
                fields[name] = (hints.get(name, Any), default)
        if not more:
            break
    model = create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)
    _SIGNATURE_CACHE[cls] = model
    return model


def validate_options(cls: type, options: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """Check option names and types against ``cls.__init__``; return the validated options."""
    model = options_model(cls)
    try:
        parsed = model.model_validate(dict(options))
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown option '{key}': {did_you_mean(key, model.model_fields)}") from None
        if e["type"] == "missing":
            raise ConfigError(f"{where}: option '{key}' is required") from None
        raise ConfigError(f"{where}: bad value for '{key}' ({e.get('input')!r}): {e['msg']}") from None
    return {k: getattr(parsed, k) for k in options}


