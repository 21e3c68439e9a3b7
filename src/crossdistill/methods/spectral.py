"""Teacher-free spectral regulariser — Learning to Project (Auty et al. 2024): shrink the student feature energy outside its top-k subspace (derived here).

No teacher forward at all. The paper's exact formula was not available; ours follows from the
decomposition of the inverted-projector loss (docs/cross_task.md has the derivation): with the
optimal linear projector, ``||Z_s − Z_t P*||² = ||(I − Π_t) Z_s||²`` — the student energy outside
the span the teacher can explain. Replacing the teacher's span by the student's own top-k
principal subspace gives a regulariser that needs no teacher:

    tail_energy:  Σ_{i>k} σ_i(Z̃_s)² / N        (default; the derived form)
    tail_ratio:   Σ_{i>k} σ_i² / Σ_i σ_i²        (scale-free variant)
    energy:       Σ_i σ_i² / N                   (the plain spectral part, no transfer)

on batch-centred rows of the tapped feature (pixels are rows for dense maps; at most ``max_rows``
of them: the same evenly spaced pixels of every image — no random numbers drawn).

``solver="subspace"`` (default) tracks the top-k right-singular subspace ``Q`` with one warm-started
subspace iteration per step (a buffer, so it checkpoints) and uses
``Σ_{i>k} σ_i² = ||Z̃||² − ||Z̃ Q||²`` with ``Q`` held fixed: by the Ky Fan maximum principle the
top-k energy is ``max_Q ||Z̃Q||²``, so at the maximiser its gradient is exactly that of
``||Z̃Q||²`` with ``Q`` constant (envelope theorem). Cost O(N·d·k) matmuls instead of an
eigendecomposition with its backward; ``solver="exact"`` uses the eigenvalues
(``losses.spectral``) for reference.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from ..losses import spectral_energy, spectral_tail_energy, spectral_tail_ratio
from ..losses.spectral import feature_rows
from .base import Method, PositiveInt, register_method


@register_method("spectral")
class SpectralRegulariser(Method):
    paper = "Auty et al., 2024 — Learning to Project for Cross-Task Knowledge Distillation (teacher-free regulariser; formula derived here)"
    year = 2024
    kind = "regulariser"
    needs_teacher = False
    default_weight = 0.1
    default_student = "@stage:-1"
    default_teacher = ()

    def __init__(self, kind: Literal["tail_energy", "tail_ratio", "energy"] = "tail_energy",
                 k_frac: Annotated[float, Field(gt=0, le=1)] = 0.5, max_rows: PositiveInt = 512,
                 solver: Literal["subspace", "exact"] = "subspace", iters: PositiveInt = 1, **sides):
        super().__init__(**sides)
        self.kind, self.k_frac, self.max_rows, self.solver, self.iters = kind, k_frac, max_rows, solver, iters

    def build(self, s, t):
        d = s[0].shape[1]
        self.k = max(1, min(d, math.ceil(self.k_frac * d)))
        g = torch.Generator().manual_seed(0)  # the basis start never touches the global RNG
        q, _ = torch.linalg.qr(torch.randn(d, self.k, generator=g))
        self.register_buffer("basis", q)

    def _rows(self, z):
        if z.dim() == 4 and z.shape[0] * z.shape[2] * z.shape[3] > self.max_rows:
            # the same evenly strided pixels of every image, selected before any copy
            per_image = max(1, self.max_rows // z.shape[0])
            flat = z.flatten(2)
            pix = torch.linspace(0, flat.shape[2] - 1, per_image, device=z.device).round().long()
            z = flat.index_select(2, pix).unsqueeze(-1)
        rows = feature_rows(z)
        return rows - rows.mean(dim=0, keepdim=True)

    def forward(self, s, t, batch):
        rows = self._rows(s[0])
        if self.kind == "energy":
            return spectral_energy(rows, center=False)
        if self.solver == "exact" or rows.shape[0] < rows.shape[1]:  # N < d: k follows N, use the N×N Gram
            fn = spectral_tail_energy if self.kind == "tail_energy" else spectral_tail_ratio
            return fn(rows, k_frac=self.k_frac, center=False)
        with torch.no_grad():  # warm-started subspace iteration towards the top-k right singular vectors
            q = self.basis
            for _ in range(self.iters):
                q, _ = torch.linalg.qr(rows.t() @ (rows @ q))
            self.basis.copy_(q)
        total = rows.pow(2).sum()
        tail = (total - (rows @ q).pow(2).sum()).clamp_min(0.0)
        return tail / rows.shape[0] if self.kind == "tail_energy" else tail / total.clamp_min(1e-12)
