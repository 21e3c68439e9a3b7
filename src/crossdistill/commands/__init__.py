"""The commands: what ``crossdistill train | eval`` run, and the registry through which other
packages add their own subcommands to the command line.

A command is a function ``add(subparsers)`` that adds its subparser and sets ``fn`` (the function
the command line calls with the parsed arguments). The command line registers its own (``train``,
``eval``, ``list``) and then imports the packages of :data:`COMMAND_PACKAGES` and the entry points
of the group ``crossdistill.commands``, each of which registers its commands here — the lab
(``crossdistill.lab``: ``bench``, ``reproduce``, ``demo``) plugs in this way, so the library never
imports it.
"""
from __future__ import annotations

import argparse
import importlib
from importlib.metadata import entry_points
from typing import Callable

from ..registry import Registry

AddCommand = Callable[[argparse._SubParsersAction], None]

#: subcommand name → ``add(subparsers)``, in the order the command line lists them
COMMANDS: Registry[AddCommand] = Registry("command")

#: packages imported for their commands (by name: nothing in the library imports them)
COMMAND_PACKAGES = ("crossdistill.lab",)


def register_command(name: str) -> Callable[[AddCommand], AddCommand]:
    return COMMANDS.register(name)


def load_command_packages() -> None:
    """Import the packages that register commands (once; a package that is absent is skipped)."""
    for name in COMMAND_PACKAGES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):  # a missing dependency inside it is a real error
                raise
    for ep in entry_points(group="crossdistill.commands"):
        if ep.name not in COMMANDS:
            ep.load()
