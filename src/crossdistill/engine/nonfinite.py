"""What happens when a loss becomes NaN or Inf (``train.nonfinite``).

``stop`` (default): steps are not checked one by one — a check waits for the device — but every
loss is remembered until the next check (a logging step, the end of an epoch, a checkpoint), which
stops at the first non-finite one, naming its part and step. A checkpoint is only written after a
check, so no state after a bad step is ever kept.

``skip``: every step is checked before its update (one device wait per step); a non-finite step is
skipped on every rank, and the run stops once the weights themselves are non-finite (skipping
cannot bring them back) or after ``MAX_CONSECUTIVE_SKIPS`` bad steps in a row.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import NonFiniteLossError
from .export import non_finite

#: ``train.nonfinite=skip`` gives up after this many non-finite steps in a row.
MAX_CONSECUTIVE_SKIPS = 100


class NonFiniteGuard:
    def __init__(self, mode: str, world: int, device: torch.device, kept: Callable[[], str]):
        self.mode, self.world, self.device = mode, world, device
        self.kept = kept  # what was saved, for the message: "the last good checkpoint is kept in ..."
        self.skipped = 0
        self.skipped_in_a_row = 0
        self._pending: List[Tuple[int, str, int, Dict[str, Tensor]]] = []

    def state(self) -> Dict[str, int]:
        return {"skipped": self.skipped, "skipped_in_a_row": self.skipped_in_a_row}

    def load(self, ckpt: Mapping) -> None:
        self.skipped = int(ckpt.get("skipped", 0))
        self.skipped_in_a_row = int(ckpt.get("skipped_in_a_row", 0))

    def admit(self, step: int, phase: str, epoch: int, parts: Dict[str, Tensor]) -> bool:
        """Whether the step whose loss parts are ``parts`` (``"loss"`` = the total) may update."""
        if self.mode == "stop":
            self._pending.append((step, phase, epoch, parts))
            return True
        ok = torch.isfinite(parts["loss"]).to(torch.int32)
        if self.world > 1:  # every rank must skip the same steps
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if bool(ok):
            self.skipped_in_a_row = 0
            return True
        self.skipped += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(
                f"loss part '{_bad_part(parts)}' was non-finite for {self.skipped_in_a_row} steps in a row (last: "
                f"step {step}); skipping cannot recover; {self.kept()}; lower the learning rate")
        return False

    def skipped_record(self) -> Dict[str, Tensor]:
        return {"loss": torch.tensor(float("nan"), device=self.device),
                "skipped": torch.tensor(float(self.skipped), device=self.device)}

    def check_weights(self, state: Mapping[str, Tensor], step: int) -> None:
        bad = non_finite(state)
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteLossError(
                f"the weights became non-finite ('{bad[0]}'{more}) by step {step}; {'skipping steps cannot recover them; ' if self.mode == 'skip' else ''}"
                f"{self.kept()}; lower the learning rate or the term's weight")

    def check(self, state: Mapping[str, Tensor], step: int) -> None:
        """Stop at the first non-finite loss since the last check, or on non-finite weights."""
        pending, self._pending = self._pending, []
        first = None
        if pending:
            finite = torch.stack([torch.isfinite(p[3]["loss"]) for p in pending])
            if not bool(finite.all()):
                first = pending[int((~finite).nonzero()[0])]
        if self.world > 1:  # every rank stops together
            flag = torch.tensor([int(first is not None)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag) and first is None:
                raise NonFiniteLossError(f"the loss became non-finite on another process; {self.kept()}; lower the "
                                         "learning rate or the term's weight, or set train.nonfinite=skip")
        if first is not None:
            bad_step, phase, epoch, parts = first
            name = _bad_part(parts)
            raise NonFiniteLossError(
                f"loss part '{name}' became {float(parts[name])} at step {bad_step} (phase {phase}, epoch {epoch + 1}); "
                f"{self.kept()}; lower the learning rate or the term's weight, or set train.nonfinite=skip")
        self.check_weights(state, step)


def _bad_part(parts: Mapping[str, Tensor]) -> str:
    """The first non-finite part other than the total (the total if it alone is)."""
    named = [k for k in parts if k != "loss"] + ["loss"]
    return next((k for k in named if not bool(torch.isfinite(parts[k]).all())), "loss")
