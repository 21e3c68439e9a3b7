"""Learning-rate schedules as pure functions of training progress (epochs, fractional).

No scheduler object carries state: the factor at any step follows from the step count, so a
resumed run continues the schedule exactly.
"""
from __future__ import annotations

import bisect
import math

from ..config import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, progress: float, total_epochs: int) -> float:
    if cfg.warmup_epochs and progress < cfg.warmup_epochs:
        return (progress + 1e-8) / cfg.warmup_epochs
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "multistep":
        return cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), int(progress))
    span = max(total_epochs - cfg.warmup_epochs, 1e-8)
    t = min(max(progress - cfg.warmup_epochs, 0.0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * t))
