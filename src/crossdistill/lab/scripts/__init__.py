"""Profiling and one-off research scripts, each run as ``python -m crossdistill.lab.scripts.<name>``."""
