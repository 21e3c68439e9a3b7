"""Distillation methods. Importing this package registers every built-in method.

A new method is one file in this folder with one ``@register_method`` class; every module here
is imported below, so nothing else needs touching.
"""
import importlib
import pkgutil

from .base import METHODS, DataSetup, Method, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "DataSetup", "Method", "build_method", "register_method"]


def build_method(name: str, **options) -> Method:
    """Create a registered method from config options, validating names and types first."""
    from ..config import validate_options

    cls = METHODS.get(name)
    return cls(**validate_options(cls, options, f"method '{name}'"))
