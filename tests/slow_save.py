"""Test-only: checkpoint saves that pause, so a test can SIGKILL a run in the middle of one.

With ``CROSSDISTILL_TEST_SLOW_SAVE=SECONDS`` in the environment, :func:`install_from_env` makes every
atomic save of ``crossdistill.engine.checkpoint`` pause that long once its temporary file is complete
and fsynced (right after its mode is set), before it is renamed over the target. Run as a script it is
the command line with that patch: ``python tests/slow_save.py train CFG ...`` (``crossdistill train``).
The library itself knows nothing of it.
"""
import os
import sys
import time

from crossdistill.engine import checkpoint

SLOW_SAVE_ENV = "CROSSDISTILL_TEST_SLOW_SAVE"


class _PausingOs:
    """``os`` for the checkpoint module: ``chmod`` of a temporary file pauses after it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __getattr__(self, name):
        return getattr(os, name)

    def chmod(self, path, mode, *args, **kwargs):
        os.chmod(path, mode, *args, **kwargs)
        if str(path).endswith(".tmp"):
            time.sleep(self.seconds)


def install_from_env() -> None:
    pause = os.environ.get(SLOW_SAVE_ENV)
    if pause:
        checkpoint.os = _PausingOs(float(pause))


if __name__ == "__main__":
    install_from_env()
    from crossdistill import cli

    sys.exit(cli.main(sys.argv[1:]))
