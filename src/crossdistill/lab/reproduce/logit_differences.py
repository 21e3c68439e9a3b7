"""The measured effect of each difference we keep from the logit methods' released code (docs/zoo.md).

``python -m crossdistill.lab.reproduce.logit_differences`` prints the numbers behind the rows of the
differences table for DKD, logit standardisation and MLKD (fixed seeds, a second on a CPU). The
reference formulas are written out here from the released code.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from ...losses import dkd_loss, kd_loss, standardize_logits


def _logits(seed: int, b: int = 64, k: int = 100, scale: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * scale


def _dkd_log_of_sums(zs, zt, target, alpha, beta, T):
    """mdistiller's TCKD: the log of summed probabilities (its NCKD part is ours)."""
    gt = F.one_hot(target, zs.shape[1]).bool()
    def binary(z):
        p = F.softmax(z / T, dim=1)
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)
    bs, bt = binary(zs), binary(zt)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T * T / zs.shape[0]
    nckd = dkd_loss(zs, zt, target, 0.0, 1.0, T)
    return alpha * tckd + beta * nckd


def dkd_binary_log() -> Dict[str, float]:
    zs, zt, y = _logits(0), _logits(1) * 2, torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(2))
    ours, ref = dkd_loss(zs, zt, y), _dkd_log_of_sums(zs, zt, y, 1.0, 8.0, 4.0)
    # a very confident student: the reference's log(Σ p_other) underflows to log 0
    sharp = zs.clone()
    sharp[torch.arange(64), y] += 500.0
    return {"typical_abs_diff": abs(float(ours - ref)), "typical_value": float(ours),
            "confident_ours": float(dkd_loss(sharp, zt, y)), "confident_reference": float(_dkd_log_of_sums(sharp, zt, y, 1.0, 8.0, 4.0))}


def dkd_ls_settings() -> Dict[str, float]:
    """DKD + LS as the released train.py sets it (α 9, β 81, T 4) vs what its flags say (α 9, β 72, T 2)."""
    zs, zt = standardize_logits(_logits(3)), standardize_logits(_logits(4) * 2)
    y = torch.randint(0, 100, (64,), generator=torch.Generator().manual_seed(5))
    out = {}
    for name, (a, b, T) in {"as_run": (9.0, 81.0, 4.0), "as_flagged": (9.0, 72.0, 2.0)}.items():
        s = zs.clone().requires_grad_(True)
        loss = dkd_loss(s, zt, y, a, b, T)
        loss.backward()
        out[name + "_loss"], out[name + "_grad_norm"] = float(loss.detach()), float(s.grad.norm())
    return out


def mlkd_masks() -> Dict[str, float]:
    """The weak-view instance term at T = 4: the code's mask on an averaged loss (a factor) vs a
    per-sample selection of the samples at or below the median confidence."""
    zs, zt = _logits(6), _logits(7) * 2
    conf = F.softmax(zt, 1).max(1).values
    keep = conf <= torch.quantile(conf, 0.5)
    per_sample = F.kl_div(F.log_softmax(zs / 4, 1), F.softmax(zt / 4, 1), reduction="none").sum(1) * 16
    return {"kept_fraction": float(keep.float().mean()), "code": float(kd_loss(zs, zt, 4.0) * keep.float().mean()),
            "per_sample_mean_over_kept": float(per_sample[keep].mean()),
            "per_sample_masked_mean": float((per_sample * keep).mean())}


def ctkd_start() -> Dict[str, float]:
    return {"T_at_step_one": 1 + 20 / (1 + math.exp(-1.0))}


def main() -> None:
    for name, fn in [("DKD binary log", dkd_binary_log), ("DKD+LS settings", dkd_ls_settings),
                     ("MLKD masks", mlkd_masks), ("CTKD start", ctkd_start)]:
        print(name, {k: round(v, 6) for k, v in fn().items()})


if __name__ == "__main__":
    main()
