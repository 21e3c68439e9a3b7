"""The lab: reproductions (``lab/reproduce``), benchmarks (``lab/bench``) and profiling and
one-off research scripts (``lab/scripts``) — code that *uses* the library, kept beside it.

The library never imports this package; the command line loads it by name through
:data:`crossdistill.commands.COMMAND_PACKAGES`, and importing it registers its subcommands
(``bench``, ``reproduce``, ``demo``: :mod:`crossdistill.lab.commands`).
"""
from . import commands  # noqa: F401  (registers the lab's subcommands)
