"""Training phases by name: ``main`` is the training every term joins; methods may declare extra
phases that run before it (``Method.extra_phases``, e.g. an initialisation)."""

#: the main training phase
MAIN = "main"
