"""User-facing errors.

Anything a user can cause (a bad config key, an unknown layer, a missing dataset, a corrupt
checkpoint, a NaN) raises a subclass of :class:`CrossDistillError`. The CLI prints its message as
one line and exits non-zero; library users can catch the base class.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class CrossDistillError(Exception):
    """Base class: a problem in the user's input, with a message that says how to fix it."""

    exit_code = 2
    prefix = "error"  # the CLI prints ``{prefix}: {message}``


class ConfigError(CrossDistillError):
    """A config key, value or name that does not exist or does not fit."""


class DataError(CrossDistillError):
    """A dataset that is missing or malformed."""


class CheckpointError(CrossDistillError):
    """A checkpoint that is missing, corrupt, untrusted or does not match the model."""


class ShapeError(CrossDistillError):
    """Two tensors that no projector can join, or a layer whose output is not a tensor."""


class NonFiniteLossError(CrossDistillError):
    """A loss part became NaN or Inf."""

    exit_code = 3


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """' Did you mean: a, b?' for the closest names, else the full list (shortened)."""
    choices = sorted(set(map(str, choices)))
    close = difflib.get_close_matches(str(name), choices, n=n, cutoff=0.5)
    if close:
        return f"did you mean: {', '.join(close)}?"
    shown = ", ".join(choices[:25]) + (", ..." if len(choices) > 25 else "")
    return f"valid choices: {shown}" if choices else "there are no valid choices"


class FolderInUseError(ConfigError):
    """Another run holds the output folder's lock."""


class NotBuiltError(CrossDistillError, RuntimeError):
    """A Distiller used before its dry run (``example_input=`` or ``build(x)``) created its projectors."""


class Interrupted(CrossDistillError):
    """Ctrl-C: what was kept and how to continue."""

    exit_code = 130
    prefix = "interrupted"


def worker_error_line(e: BaseException) -> str:
    """The message of an error raised in a DataLoader worker, without the traceback torch wraps
    around it ("Caught DataError in DataLoader worker process 0. Original Traceback ...")."""
    text = str(e)
    if "Original Traceback" not in text:
        return text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else text
    name, sep, message = last.partition(": ")
    return message if sep and name.replace(".", "").replace("_", "").isalnum() else last
