"""Representation similarity between two sets of features of the same samples.

``linear_cka`` is the minibatch linear CKA (Kornblith et al., 2019) that DPK uses to measure the
student–teacher feature gap. It works on features of any shape and any dimension on each side: only
the batch dimension must agree.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["centred_gram", "linear_cka"]


def _rows(x: Tensor) -> Tensor:
    """``x`` as ``[B, D]``. The order of the ``D`` features is whatever the memory order is (a
    channels-last map is read as ``[B, H, W, C]``, a view, not a copy): CKA does not depend on it."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)


def _centre(k: Tensor) -> Tensor:
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def centred_gram(x: Tensor) -> Tensor:
    """The centred ``B × B`` Gram matrix ``K_c = H K H`` of ``x`` flattened to ``X = [B, D]``, where
    ``K = X Xᵀ`` and ``H = I − 11ᵀ/B``: ``K_c[i, j] = K[i, j] − mean_i' K[i', j] − mean_j' K[i, j'] + mean K``.

    Cost ``O(B² D)`` for ``K`` and ``O(B²)`` for the centring; no ``D × D`` matrix is ever formed.
    """
    if x.dim() < 1:
        raise ShapeError("centred_gram needs a batch dimension, got a scalar")
    rows = _rows(x)
    return _centre(rows @ rows.t())


#: a centred Gram matrix this small relative to the raw one is rounding noise: the side is constant
_CONSTANT = 1e-5


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear centred kernel alignment between ``x [B, …]`` and ``y [B, …]`` (a scalar in [0, 1]).

    With ``K_c`` and ``L_c`` the centred Gram matrices of the flattened features (:func:`centred_gram`)
    and ``HSIC(K, L) = ⟨K_c, L_c⟩_F / (B − 1)²`` (the biased estimator)::

        CKA(x, y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))
                  = ⟨K_c, L_c⟩_F / (‖K_c‖_F ‖L_c‖_F)

    (the ``(B − 1)²`` cancels). Equal to ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on centred features, but
    computed in the Gram form: ``O(B²(D_x + D_y))`` time, ``O(B²)`` extra memory, so ``D = C·H·W`` of a
    feature map is cheap. Invariant to orthogonal transforms and isotropic scaling of either side.
    (When ``D_x + D_y < B`` the same value is computed in the feature form, which is then smaller.)
    A side that does not vary over the batch (``‖K_c‖ ≤ 10⁻⁵ ‖K‖``: constant features, ``B = 1``)
    gives 0. Computed in at least float32; the result is clamped to [0, 1] against rounding.
    """
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"linear_cka: both sides need the same batch size, got {tuple(x.shape)} and {tuple(y.shape)}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    rx, ry = _rows(x.to(dtype)), _rows(y.to(dtype))
    if rx.shape[1] + ry.shape[1] < rx.shape[0]:  # more samples than features: the D × D form is smaller
        return _linear_cka_features(rx, ry)
    kx, ky = rx @ rx.t(), ry @ ry.t()
    cx, cy = _centre(kx), _centre(ky)
    nx, ny = torch.linalg.matrix_norm(cx), torch.linalg.matrix_norm(cy)
    varies = (nx > _CONSTANT * torch.linalg.matrix_norm(kx)) & (ny > _CONSTANT * torch.linalg.matrix_norm(ky))
    cka = (cx * cy).sum() / (nx * ny).clamp_min(torch.finfo(dtype).tiny)
    # 0 / 0 (a constant side) is "no alignment", not NaN
    return torch.where(varies, cka.clamp(0.0, 1.0), torch.zeros_like(cka))


def _linear_cka_features(rx: Tensor, ry: Tensor) -> Tensor:
    """The feature form on centred rows, ``O(B·D_x·D_y)``: for ``D`` below ``B``."""
    raw_x, raw_y = torch.linalg.matrix_norm(rx.t() @ rx), torch.linalg.matrix_norm(ry.t() @ ry)
    rx, ry = rx - rx.mean(dim=0, keepdim=True), ry - ry.mean(dim=0, keepdim=True)
    nx, ny = torch.linalg.matrix_norm(rx.t() @ rx), torch.linalg.matrix_norm(ry.t() @ ry)
    varies = (nx > _CONSTANT * raw_x) & (ny > _CONSTANT * raw_y)
    cka = (ry.t() @ rx).pow(2).sum() / (nx * ny).clamp_min(torch.finfo(rx.dtype).tiny)
    return torch.where(varies, cka.clamp(0.0, 1.0), torch.zeros_like(cka))
