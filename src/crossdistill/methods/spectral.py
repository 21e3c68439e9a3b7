"""Teacher-free spectral regulariser — Learning to Project (Auty et al. 2024), derived here.

No teacher forward at all. The paper's exact formula was not available; ours follows from the
decomposition of the inverted-projector loss (docs/cross_task.md has the derivation): with the
optimal linear projector, ``||Z_s − Z_t P*||² = ||(I − Π_t) Z_s||²`` — the student energy outside
the span the teacher can explain. Replacing the teacher's span by the student's own top-k
principal subspace gives a regulariser that needs no teacher:

    tail_energy:  Σ_{i>k} σ_i(Z̃_s)² / N        (default; the derived form)
    tail_ratio:   Σ_{i>k} σ_i² / Σ_i σ_i²        (scale-free variant)
    energy:       Σ_i σ_i² / N                   (the plain spectral part, no transfer)

on batch-centred rows of the tapped feature (pixels are rows for dense maps; at most
``max_rows`` of them, taken with a fixed stride so that the cost stays a small fraction of a step
and no random numbers are drawn).
"""
from __future__ import annotations

from typing import Literal

from ..losses import spectral_energy, spectral_tail_energy, spectral_tail_ratio
from ..losses.spectral import feature_rows
from .base import Method, register_method


@register_method("spectral")
class SpectralRegulariser(Method):
    needs_teacher = False
    default_weight = 0.1
    default_student = "@stage:-1"
    default_teacher = ()

    def __init__(self, kind: Literal["tail_energy", "tail_ratio", "energy"] = "tail_energy",
                 k_frac: float = 0.5, max_rows: int = 1024, **sides):
        super().__init__(**sides)
        self.kind, self.k_frac, self.max_rows = kind, k_frac, max_rows

    def forward(self, s, t, batch):
        rows = feature_rows(s[0])
        if rows.shape[0] > self.max_rows:
            rows = rows[:: -(-rows.shape[0] // self.max_rows)]  # fixed stride, deterministic
        if self.kind == "energy":
            return spectral_energy(rows)
        fn = spectral_tail_energy if self.kind == "tail_energy" else spectral_tail_ratio
        return fn(rows, k_frac=self.k_frac)
