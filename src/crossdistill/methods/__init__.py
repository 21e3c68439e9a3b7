"""Distillation methods. Importing this package registers every built-in method.

A new method is one file in this folder with one ``@register_method`` class; every module here is
imported below, so nothing else needs touching, and every registered built-in class is exported
here by its class name (``from crossdistill.methods import KD, CRD``).

Methods from other packages: a package declares them in the entry-point group
``crossdistill.methods`` (``name = "package.module:Class"``); they are loaded only when you opt in
with the environment variable ``CROSSDISTILL_PLUGINS`` (``all``, or entry-point names separated by
commas) — loaded at the first method look-up, never because a config names them: a config only
ever names a registered method.
"""
import importlib
import os
import pkgutil
from importlib.metadata import entry_points
from typing import Any, Dict, List

from ..errors import ConfigError
from .base import (
    METHODS,
    TARGET,
    DataSetup,
    InitPhase,
    Method,
    check_pairs,
    register_method,
    student_body_parameters,
    sum_over_pairs,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

#: the built-in method classes, by class name (KD, FitNet, CRD, ...)
BUILTIN: List[str] = []
for _cls in METHODS.registered().values():  # before any plugin: only what this package registered
    globals()[_cls.__name__] = _cls
    BUILTIN.append(_cls.__name__)

PLUGIN_GROUP = "crossdistill.methods"
PLUGIN_ENV = "CROSSDISTILL_PLUGINS"

__all__ = ["METHODS", "TARGET", "DataSetup", "InitPhase", "Method", "build_checked_method", "build_method", "check_pairs",
           "load_plugins", "register_method", "student_body_parameters", "sum_over_pairs", *BUILTIN]


def load_plugins(names=None) -> List[str]:
    """Register the methods that installed packages declare in the entry-point group
    ``crossdistill.methods``. ``names``: entry-point names, or ``"all"``; by default the value of
    ``$CROSSDISTILL_PLUGINS`` (unset or empty: nothing is loaded). Returns the method names added.

    An entry point names a :class:`Method` subclass; one that is not registered yet is registered
    under the entry point's name. Loading an entry point runs its package's code: that is why it is
    opt-in.
    """
    if names is None:
        names = os.environ.get(PLUGIN_ENV, "")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        return []
    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    wanted = list(found) if "all" in names else names
    added = []
    for name in wanted:
        if name not in found:
            raise ConfigError(f"${PLUGIN_ENV} names '{name}', but no installed package declares it in the "
                              f"entry-point group '{PLUGIN_GROUP}' (installed: {', '.join(sorted(found)) or 'none'})")
        if name in METHODS.registered():
            continue
        try:
            obj = found[name].load()
        except Exception as e:  # a broken plugin is the plugin's problem: say which one
            raise ConfigError(f"method plugin '{name}' ({found[name].value}) failed to load: {e}") from None
        if not (isinstance(obj, type) and issubclass(obj, Method)):
            raise ConfigError(f"method plugin '{name}' ({found[name].value}) is not a Method subclass")
        if METHODS.registered().get(obj.name) is not obj:
            register_method(name)(obj)
        added.append(obj.name)
    return added


METHODS.plugin_loader = load_plugins


def build_method(name: str, **options) -> Method:
    """Create a registered method from config options (names, types and ranges are checked)."""
    return METHODS.get(name)(**options)


def build_checked_method(name: str, options: Dict[str, Any]) -> Method:
    """Create a registered method from options already checked against its signature (a parsed
    config's term, :meth:`TermConfig.checked_options`): they are not checked a second time."""
    cls = METHODS.get(name)
    method = cls.__new__(cls)
    object.__setattr__(method, "_options_checked", True)  # what the checking __init__ wrapper looks for
    method.__init__(**options)
    return method

