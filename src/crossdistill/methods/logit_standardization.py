"""The logit-standardisation option shared by the logit methods (Sun et al., CVPR 2024).

``standardize: true`` on ``kd``, ``dkd``, ``ctkd`` and ``mlkd`` z-scores each sample's student and
teacher logits (each with its own mean and sample standard deviation, ``losses.standardize_logits``)
before the temperature. One function, one mixin: a method lists ``standardize: bool = False`` among
its options, stores it, and passes its logits through :meth:`StandardizedLogits.standardized`.
The published recipes change the temperature and weights with it (``kd_ls.yaml``, ``dkd_ls.yaml``;
docs/zoo.md).
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor

from ..losses import standardize_logits


class StandardizedLogits:
    """Mix-in: ``self.standardize`` decides whether :meth:`standardized` z-scores the logits."""

    standardize: bool = False

    def standardized(self, *logits: Tensor) -> Tuple[Tensor, ...]:
        return tuple(standardize_logits(z) for z in logits) if self.standardize else logits
