"""Launched by ``torchrun`` in tests/test_ddp.py: the real CLI, once per argument group, in one
process group (one launch serves several runs), plus what only a test needs:

- the test model ``test_plainnet`` (no BatchNorm, see helpers.py);
- a test method ``random_hint`` that draws from the global RNG every step (so a resume that gave a
  rank another rank's random state would train differently);
- with ``CROSSDISTILL_TEST_DUMP=DIR``, every rank saves its final ``Distiller.state_dict()`` as
  ``DIR/<run name>.rank<r>.pt`` (rank 0 alone writes the run folder).

Usage: ``torchrun ... tests/ddp_worker.py train CFG [overrides] ::: eval CKPT ::: ...``
"""
import os
import sys

import torch

from crossdistill import cli
from crossdistill.engine.distributed import distributed
from crossdistill.engine.trainer import Trainer
from crossdistill.methods import METHODS, Method, register_method
from helpers import register_test_models
from slow_save import install_from_env

register_test_models()
install_from_env()  # CROSSDISTILL_TEST_SLOW_SAVE: saves pause before their rename

if "random_hint" not in METHODS:
    @register_method("random_hint")
    class RandomHint(Method):
        """Test-only: a small penalty on the pooled features under a random mask from the global RNG."""

        needs_teacher = False
        default_student = "@pooled"

        def forward(self, s, t, batch):
            mask = torch.rand(s[0].shape, device=s[0].device)
            return (s[0] * mask).pow(2).mean()


def _dumping_fit(fit):
    def wrapped(self):
        summary = fit(self)
        folder = os.environ.get("CROSSDISTILL_TEST_DUMP")
        if folder:
            torch.save(self.distiller.state_dict(), os.path.join(folder, f"{self.cfg.name}.rank{self.rank}.pt"))
        return summary
    return wrapped


Trainer.fit = _dumping_fit(Trainer.fit)

if __name__ == "__main__":
    groups, current = [], []
    for arg in sys.argv[1:]:
        if arg == ":::":
            groups.append(current)
            current = []
        else:
            current.append(arg)
    groups.append(current)
    with distributed():
        for argv in groups:
            rc = cli.main(argv)
            if rc:
                sys.exit(rc)
