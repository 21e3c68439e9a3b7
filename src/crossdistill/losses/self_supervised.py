"""Self-supervised objectives on two augmented views of the same images.

``nt_xent_loss`` — SimCLR (Chen et al. 2020), the normalised-temperature cross-entropy. For a batch
of ``B`` images seen twice, ``z = [z¹; z²]`` (``2B`` rows, L2-normalised) and ``s_ij = ⟨z_i, z_j⟩ / τ``.
Row ``i``'s positive is its other view ``p(i) = i ± B``; the other ``2B − 2`` rows are negatives:

    ℓ_i = −log( exp(s_{i,p(i)}) / Σ_{j ≠ i} exp(s_ij) ),      L = mean_i ℓ_i   (over all 2B rows).

SimSiam / BYOL regress one view's prediction onto the other view's stop-gradient projection with
:func:`~crossdistill.losses.regression.normalized_regression_loss` (``2 − 2·cos``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ShapeError

__all__ = ["nt_xent_loss"]


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent for two views ``z1, z2`` of shape ``[B, D]`` (row b of each: the same image)."""
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ShapeError(f"nt_xent_loss needs two [B, D] views of the same shape with B >= 2, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))  # j ≠ i
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, positive)
