"""The measured effect of every remaining difference from the reference (RepDistiller), on fixed inputs.

``python -m crossdistill.lab.reproduce.zoo_differences`` prints the Markdown rows behind the table in
docs/zoo.md (a few seconds on a CPU; fixed seeds, so the numbers repeat). Each measurement computes
the reference's formula and ours on the same tensors, written out here from the formulas.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...losses import at_loss, cc_loss, factor_loss, nst_loss, vid_loss
from ...projectors import match_spatial


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _maps(seed: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g) + 0.3)  # post-ReLU-like stage maps


def _pool_larger(fs: torch.Tensor, ft: torch.Tensor):
    """The reference's rule for AT / NST / VID / FT: the larger map is average-pooled to the smaller."""
    hs, ht = fs.shape[-1], ft.shape[-1]
    if hs > ht:
        fs = F.adaptive_avg_pool2d(fs, (ht, ht))
    elif hs < ht:
        ft = F.adaptive_avg_pool2d(ft, (hs, hs))
    return fs, ft


def spatial_resizing() -> Dict[str, Dict[str, float]]:
    """AT, NST, VID with a student map twice the teacher's size (16×16 vs 8×8): the reference pools the
    student down, we resize the teacher up to the student's size (bilinear). With equal sizes — every
    stage of the shipped pairs — both are the identity, and the difference is 0."""
    fs, ft = _maps(0, (8, 16, 16, 16)), _maps(1, (8, 32, 8, 8))
    ref_s, ref_t = _pool_larger(fs, ft)
    ours_t = match_spatial(ft, fs.shape[-2:])
    out = {}
    out["at"] = {"reference": float(at_loss(ref_s, ref_t)), "ours": float(at_loss(fs, ours_t))}
    out["nst"] = {"reference": float(nst_loss(ref_s, ref_t)), "ours": float(nst_loss(fs, ours_t))}
    torch.manual_seed(2)
    reg = nn.Conv2d(16, 32, 1, bias=False)  # the same (fixed) mean predictor for both
    log_scale = torch.full((32,), math.log(math.expm1(5.0 - 1e-5)))
    with torch.no_grad():
        out["vid"] = {"reference": float(vid_loss(reg(ref_s), ref_t, log_scale)),
                      "ours": float(vid_loss(reg(fs), ours_t, log_scale))}
    same = _maps(3, (8, 16, 8, 8))
    out["equal sizes (the shipped pairs)"] = {"reference": float(at_loss(*_pool_larger(same, ft))),
                                              "ours": float(at_loss(same, match_spatial(ft, same.shape[-2:])))}
    for v in out.values():
        v["relative difference"] = _rel(v["ours"], v["reference"])
    return out


def ft_factor() -> Dict[str, float]:
    """FT: the reference's factor is ``normalize(mean_c f²)`` (H·W values), ours the whole factor map
    (rate·C·H·W values, the paper's); both with ``mean |u − v|`` and β = 200. On resnet32x4's factor
    shape (128 channels at 8×8) with the student's factor a noisy copy of the teacher's: the ratio of
    the gradient norms w.r.t. the student's factor (how hard β = 200 pulls) and of the loss values."""
    g = torch.Generator().manual_seed(4)
    f_t = torch.randn(16, 128, 8, 8, generator=g)
    f_s = (f_t + 0.5 * torch.randn(16, 128, 8, 8, generator=g)).requires_grad_()

    def reference(a, b):
        fa = F.normalize(a.pow(2).mean(1).flatten(1))
        fb = F.normalize(b.pow(2).mean(1).flatten(1))
        return (fa - fb).abs().mean()

    ref = reference(f_s, f_t)
    (g_ref,) = torch.autograd.grad(ref, f_s)
    ours = factor_loss(f_s, f_t, p=1, reduction="mean")
    (g_ours,) = torch.autograd.grad(ours, f_s)
    return {"reference loss": float(ref.detach()), "our loss": float(ours.detach()),
            "gradient norm, reference / ours": float(g_ref.norm() / g_ours.norm())}


def cc_formula() -> Dict[str, float]:
    """CC: RepDistiller's ``Correlation`` — ``mean_b Σ_d |Δ_b,d|·|Δ_{b+1},d|``, ``Δ = e_s − e_t``, on
    two L2-normalised 128-d embeddings — with β = 0.02, against ours, the paper's Gaussian-kernel
    correlation congruence (γ = 0.4, order 2) with β = 100, on the same normalised embeddings (B = 64)."""
    g = torch.Generator().manual_seed(5)
    e_t = F.normalize(torch.randn(64, 128, generator=g), dim=1)
    e_s = F.normalize(e_t + 0.5 * torch.randn(64, 128, generator=g), dim=1)
    delta = (e_s - e_t).abs()
    ref = float((delta[:-1] * delta[1:]).sum(1).mean())
    ours = float(cc_loss(e_s, e_t, "gaussian", 0.4, 2))
    return {"reference L": ref, "reference β·L (β = 0.02)": 0.02 * ref, "our L": ours, "our β·L (β = 100)": 100 * ours}


def ab_wrn_batchnorm() -> Dict[str, float]:
    """AB on WRN: the reference reads a student pre-activation by calling the next block's BN a
    *second* time (``block2.layer[0].bn1(f1)``), so in training mode its running statistics take two
    momentum steps per batch; our tap reads the one call the network makes. The maps are the same
    (batch statistics in training mode). Measured: how far the running mean moves in one step."""
    torch.manual_seed(6)
    x = torch.randn(16, 32, 8, 8) + 1.0
    ours, ref = nn.BatchNorm2d(32), nn.BatchNorm2d(32)
    ours(x)
    ref(x)
    ref(x)  # the reference's extra call
    return {"running-mean step, reference / ours": float(ref.running_mean.norm() / ours.running_mean.norm()),
            "pre-activation maps, max |difference|": 0.0}


def rows() -> List[str]:
    out = []
    sp = spatial_resizing()
    for name in ("at", "nst", "vid", "equal sizes (the shipped pairs)"):
        v = sp[name]
        out.append(f"| spatial ({name}) | reference {v['reference']:.4g}, ours {v['ours']:.4g} | "
                   f"relative difference {v['relative difference']:.1%} |")
    ft = ft_factor()
    out.append(f"| FT factor | loss: reference {ft['reference loss']:.4g}, ours {ft['our loss']:.4g} | "
               f"gradient norm reference / ours = {ft['gradient norm, reference / ours']:.1f} |")
    cc = cc_formula()
    out.append(f"| CC | reference L {cc['reference L']:.4g} (β·L {cc['reference β·L (β = 0.02)']:.4g}) | "
               f"ours L {cc['our L']:.4g} (β·L {cc['our β·L (β = 100)']:.4g}) |")
    ab = ab_wrn_batchnorm()
    out.append(f"| AB on WRN, BN statistics | running-mean step reference / ours = "
               f"{ab['running-mean step, reference / ours']:.2f} | maps identical |")
    return out


def main() -> None:
    print("| difference | measured | effect |\n|---|---|---|")
    print("\n".join(rows()))


if __name__ == "__main__":
    main()
