"""Golden tests for crossdistill.losses: every expected value is computed independently (a closed
form worked out by hand, or explicit loops in numpy / Python), never by calling the function twice."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from crossdistill.errors import ShapeError
from crossdistill.losses import (
    ab_loss,
    at_loss,
    attention_map,
    cc_loss,
    crd_logits,
    crd_loss_from_logits,
    crd_nce_loss,
    crd_scores,
    factor_loss,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    inverted_l2_decomposition,
    kd_loss,
    nst_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
    spectral_energy,
    spectral_tail_energy,
    spectral_tail_ratio,
    vid_loss,
)

D64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D64)


def close(actual: torch.Tensor, expected: float, **kw) -> None:
    assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **kw)


# ----------------------------------------------------------------------------------------- logits


def test_kd_hand_case():
    # student [0, ln 2] -> q = [1/3, 2/3]; teacher [0, 0] -> p = [1/2, 1/2]
    # KL(p||q) = 0.5 ln(0.5/(1/3)) + 0.5 ln(0.5/(2/3)) = 0.5 ln(9/8)
    s = t([[0.0, math.log(2.0)]])
    te = t([[0.0, 0.0]])
    close(kd_loss(s, te, T=1.0), 0.5 * math.log(9 / 8))
    # T = 2 with doubled logits gives the same distributions, times T² = 4
    close(kd_loss(2 * s, te, T=2.0), 2.0 * math.log(9 / 8))
    # batchmean: a second row with equal logits contributes 0
    s2 = t([[0.0, math.log(2.0)], [1.0, 3.0]])
    te2 = t([[0.0, 0.0], [1.0, 3.0]])
    close(kd_loss(s2, te2, T=1.0), 0.25 * math.log(9 / 8))


def _kd_reference(s: np.ndarray, te: np.ndarray, T: float) -> float:
    """Dense KD by explicit loops: per pixel KL(p||q)·T², mean over batch and pixels."""
    B, K, H, W = s.shape
    total = 0.0
    for b, h, w in itertools.product(range(B), range(H), range(W)):
        zs = s[b, :, h, w] / T
        zt = te[b, :, h, w] / T
        q = np.exp(zs - zs.max()); q /= q.sum()
        p = np.exp(zt - zt.max()); p /= p.sum()
        total += sum(p[k] * math.log(p[k] / q[k]) for k in range(K))
    return total / (B * H * W) * T * T


def test_kd_dense_matches_loops():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 2, 3, generator=g, dtype=D64) * 3
    te = torch.randn(2, 3, 2, 3, generator=g, dtype=D64) * 3
    close(kd_loss(s, te, T=2.0), _kd_reference(s.numpy(), te.numpy(), 2.0))


def test_kd_zero_iff_equal_and_grad_to_student_only():
    g = torch.Generator().manual_seed(1)
    te = torch.randn(4, 10, generator=g)
    assert kd_loss(te.clone(), te).abs().item() < 1e-6
    s = torch.randn(4, 10, generator=g, requires_grad=True)
    loss = kd_loss(s, te)
    assert loss.item() > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert te.grad is None and not te.requires_grad


def test_kd_large_logits_are_finite():
    s = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    te = torch.tensor([[-1e4, 1e4, 0.0]])
    loss = kd_loss(s, te, T=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_kd_shape_mismatch_raises():
    with pytest.raises(ShapeError):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --------------------------------------------------------------------------------------- features


def test_hint_hand_case():
    close(hint_loss(t([[1.0, 2.0]]), t([[0.0, 0.0]])), 2.5)


def test_attention_map_and_at_loss_hand_case():
    # channels [1, 0] and [1, 2]: mean_c f² = [1, 2] -> normalised [1, 2]/√5
    fs = t([[[[1.0, 0.0]], [[1.0, 2.0]]]])  # [1, 2, 1, 2]
    assert_close(attention_map(fs), t([[1.0, 2.0]]) / math.sqrt(5))
    ft = t([[[[3.0, 0.0]]]])  # one channel -> map [1, 0]
    # ((1/√5 − 1)² + 4/5) / 2 = 1 − 1/√5
    close(at_loss(fs, ft), 1.0 - 1.0 / math.sqrt(5))
    with pytest.raises(ShapeError):
        at_loss(fs, torch.zeros(1, 1, 2, 2, dtype=D64))


def test_ab_hand_case_and_batch_division():
    # m = 1: (s, t) = (-2,-1): 0 | (0.5,-1): (1.5)² | (0.5,1): (-0.5)² | (2,1): 0 | (-0.5,1): (-1.5)²
    s = t([-2.0, 0.5, 0.5, 2.0, -0.5]).view(1, 1, 1, 5)
    te = t([-1.0, -1.0, 1.0, 1.0, 1.0]).view(1, 1, 1, 5)
    close(ab_loss(s, te, margin=1.0), 4.75)
    # a second sample that satisfies every margin adds 0 but halves the value (sum / B)
    s2 = torch.cat([s, t([-2.0, -2.0, 2.0, 2.0, 2.0]).view(1, 1, 1, 5)])
    te2 = torch.cat([te, te])
    close(ab_loss(s2, te2, margin=1.0), 4.75 / 2)


def test_ab_per_channel_margin_matches_loops():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 3, 2, 2, generator=g, dtype=D64)
    te = torch.randn(2, 3, 2, 2, generator=g, dtype=D64)
    m = t([0.1, 0.5, 1.0])
    expected = 0.0
    for b, c, h, w in itertools.product(range(2), range(3), range(2), range(2)):
        sv, tv, mv = s[b, c, h, w].item(), te[b, c, h, w].item(), m[c].item()
        if sv > -mv and tv <= 0:
            expected += (sv + mv) ** 2
        if sv <= mv and tv > 0:
            expected += (sv - mv) ** 2
    close(ab_loss(s, te, margin=m), expected / 2)


def test_factor_hand_case():
    fs = t([[3.0, 4.0]])  # -> [0.6, 0.8]
    ft = t([[1.0, 0.0]])  # -> [1, 0]
    close(factor_loss(fs, ft, p=1), 1.2)
    close(factor_loss(fs, ft, p=2), math.sqrt(0.8))
    close(factor_loss(fs, ft, p=1, reduction="mean"), 0.6)
    close(factor_loss(fs, ft, p=2, reduction="mean"), 0.4)
    # mean over batch: a second identical pair adds 0
    close(factor_loss(torch.cat([fs, ft]), torch.cat([ft, ft]), p=1), 0.6)


def test_fsp_matrix_hand_case():
    f1 = t([[[[1.0, 2.0]]]])  # [1, 1, 1, 2]
    f2 = t([[[[3.0, 4.0]], [[5.0, 6.0]]]])  # [1, 2, 1, 2]
    assert_close(fsp_matrix(f1, f2), t([[[5.5, 8.5]]]))


def test_fsp_loss_matches_loops():
    g = torch.Generator().manual_seed(3)
    shapes = [((2, 2, 3, 3), (2, 3, 3, 3)), ((2, 3, 2, 2), (2, 1, 2, 2))]
    s_pairs, t_pairs = [], []
    for a, b in shapes:
        s_pairs.append((torch.randn(*a, generator=g, dtype=D64), torch.randn(*b, generator=g, dtype=D64)))
        t_pairs.append((torch.randn(*a, generator=g, dtype=D64), torch.randn(*b, generator=g, dtype=D64)))

    def fsp_np(x, y):
        B, C1, H, W = x.shape
        C2 = y.shape[1]
        out = np.zeros((B, C1, C2))
        for b, i, j in itertools.product(range(B), range(C1), range(C2)):
            out[b, i, j] = sum(x[b, i, h, w] * y[b, j, h, w] for h in range(H) for w in range(W)) / (H * W)
        return out

    terms = []
    for (s1, s2), (t1, t2) in zip(s_pairs, t_pairs):
        terms.append(((fsp_np(s1.numpy(), s2.numpy()) - fsp_np(t1.numpy(), t2.numpy())) ** 2).mean())
    close(fsp_loss(s_pairs, t_pairs), float(np.mean(terms)))


def test_nst_hand_case():
    # student channels e1, e2: k(s,s) = I -> mean 1/2; teacher channels e1, e1: k(t,t) = 1;
    # k(s,t) = [[1,1],[0,0]] -> mean 1/2.  L = 1/2 + 1 − 1 = 1/2
    fs = t([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    ft = t([[[[3.0, 0.0]], [[1.0, 0.0]]]])
    close(nst_loss(fs, ft), 0.5)


def test_nst_matches_loops_with_different_channel_counts():
    g = torch.Generator().manual_seed(4)
    fs = torch.randn(2, 3, 2, 2, generator=g, dtype=D64)
    ft = torch.randn(2, 4, 2, 2, generator=g, dtype=D64)

    def unit(x):
        v = x.reshape(-1)
        return v / np.linalg.norm(v)

    def mean_k(a, b):
        vals = [float(unit(a[bi, i]) @ unit(b[bi, j])) ** 2
                for bi in range(a.shape[0]) for i in range(a.shape[1]) for j in range(b.shape[1])]
        return sum(vals) / len(vals)

    s, te = fs.numpy(), ft.numpy()
    close(nst_loss(fs, ft), mean_k(s, s) + mean_k(te, te) - 2 * mean_k(s, te))


def test_vid_hand_case_and_loops():
    eps = 1e-5
    # softplus(ln(e − 1)) = 1, so σ² = 1 + eps on both channels
    log_scale = t([math.log(math.e - 1), math.log(math.e - 1)])
    mu = t([[0.0, 1.0]])
    te = t([[1.0, 1.0]])
    v = 1 + eps
    close(vid_loss(mu, te, log_scale, eps=eps), (0.5 * (1 / v + math.log(v)) + 0.5 * math.log(v)) / 2)

    g = torch.Generator().manual_seed(5)
    mu = torch.randn(2, 3, 2, 2, generator=g, dtype=D64)
    te = torch.randn(2, 3, 2, 2, generator=g, dtype=D64)
    ls = t([-1.0, 0.0, 2.0])
    expected = 0.0
    for b, c, h, w in itertools.product(range(2), range(3), range(2), range(2)):
        var = math.log1p(math.exp(ls[c].item())) + eps
        expected += 0.5 * ((te[b, c, h, w].item() - mu[b, c, h, w].item()) ** 2 / var + math.log(var))
    close(vid_loss(mu, te, ls, eps=eps), expected / mu.numel())


# -------------------------------------------------------------------------------------- relations


def test_sp_hand_case():
    # G_s = I; G_t = ones -> rows [1/√2, 1/√2]; ||I − ones/√2||² = 2(1 − 1/√2)² + 2·½ = 4 − 2√2
    fs = t([[1.0, 0.0], [0.0, 1.0]])
    ft = t([[1.0, 0.0], [1.0, 0.0]])
    close(sp_loss(fs, ft), (4 - 2 * math.sqrt(2)) / 4)


def test_cc_hand_case_and_gaussian_kernel_loops():
    es = t([[1.0, 0.0], [0.0, 1.0]])
    et = t([[1.0, 0.0], [1.0, 0.0]])
    close(cc_loss(es, et), 0.5)  # off-diagonal entries differ by 1, 2 of 4 entries

    g = torch.Generator().manual_seed(6)
    es = torch.randn(3, 4, generator=g, dtype=D64)
    et = torch.randn(3, 5, generator=g, dtype=D64)
    gamma, order = 0.4, 2

    def c(e):
        B = e.shape[0]
        out = np.zeros((B, B))
        for i, j in itertools.product(range(B), range(B)):
            x, y = e[i], e[j]
            taylor = sum((2 * gamma * float(x @ y)) ** p / math.factorial(p) for p in range(order + 1))
            out[i, j] = math.exp(-gamma * float(x @ x)) * math.exp(-gamma * float(y @ y)) * taylor
        return out

    expected = ((c(es.numpy()) - c(et.numpy())) ** 2).sum() / 9
    close(cc_loss(es, et, kernel="gaussian", gamma=gamma, order=order), expected)
    # with a high order the Taylor series is the Gaussian kernel itself
    exact = lambda e: np.exp(-gamma * ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))  # noqa: E731
    expected = ((exact(es.numpy()) - exact(et.numpy())) ** 2).sum() / 9
    close(cc_loss(es, et, kernel="gaussian", gamma=gamma, order=30), expected)


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_distance_hand_case():
    # student 0, 1, 3: distances 1, 3, 2, mean 2 -> 0.5, 1.5, 1
    # teacher 0, 1, 2: distances 1, 2, 1, mean 4/3 -> 0.75, 1.5, 0.75
    # huber diffs: 0.25² / 2 twice per unordered pair -> 4 · 0.03125 over 9 ordered pairs
    fs = t([[0.0], [1.0], [3.0]])
    ft = t([[0.0], [1.0], [2.0]])
    close(rkd_distance_loss(fs, ft), 4 * 0.03125 / 9)


def test_rkd_angle_hand_case():
    # student a(0,0) b(1,0) c(0,1): cos at a = 0, at b = 1/√2, at c = 1/√2
    # teacher a(0,0) b(1,0) c(1,1): cos at a = 1/√2, at b = 0, at c = 1/√2
    # per vertex 2 ordered (j,k) off-diagonal entries; diffs ±1/√2 at a and b -> 4 · huber(1/√2) = 1
    fs = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ft = t([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    close(rkd_angle_loss(fs, ft), 1.0 / 27)


def test_rkd_matches_loops_and_weights():
    g = torch.Generator().manual_seed(7)
    fs = torch.randn(4, 3, generator=g, dtype=D64)
    ft = torch.randn(4, 5, generator=g, dtype=D64) * 3
    B = 4

    def dist(x):
        d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(B)] for i in range(B)])
        return d / d[~np.eye(B, dtype=bool)].mean()

    def angle(x):
        out = np.zeros((B, B, B))
        for i, j, k in itertools.product(range(B), repeat=3):
            if j != i and k != i:
                u, v = x[j] - x[i], x[k] - x[i]
                out[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return out

    s, te = fs.numpy(), ft.numpy()
    exp_d = np.mean([_huber(v) for v in (dist(s) - dist(te)).ravel()])
    exp_a = np.mean([_huber(v) for v in (angle(s) - angle(te)).ravel()])
    close(rkd_distance_loss(fs, ft), float(exp_d))
    close(rkd_angle_loss(fs, ft), float(exp_a))
    close(rkd_loss(fs, ft), float(25 * exp_d + 50 * exp_a))
    close(rkd_loss(fs, ft, w_dist=1.0, w_angle=0.0), float(exp_d))


def test_rkd_gradients_finite_with_duplicate_rows():
    fs = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    ft = torch.randn(3, 4)
    rkd_loss(fs, ft).backward()
    assert torch.isfinite(fs.grad).all()


def test_pkt_hand_case_and_loops():
    # student cos = I -> K = [[1, .5], [.5, 1]] -> rows [2/3, 1/3], [1/3, 2/3]; teacher -> [1/2, 1/2]
    # KL per row = 0.5 ln(0.5/(2/3)) + 0.5 ln(0.5/(1/3)) = 0.5 ln(9/8)
    fs = t([[1.0, 0.0], [0.0, 1.0]])
    ft = t([[1.0, 0.0], [1.0, 0.0]])
    close(pkt_loss(fs, ft), 0.5 * math.log(9 / 8), rtol=1e-6, atol=1e-6)
    close(pkt_loss(fs, ft, reduction="mean"), 0.25 * math.log(9 / 8), rtol=1e-6, atol=1e-6)

    g = torch.Generator().manual_seed(8)
    fs = torch.randn(4, 3, generator=g, dtype=D64)
    ft = torch.randn(4, 6, generator=g, dtype=D64)
    eps = 1e-7

    def cond(x):
        B = x.shape[0]
        xn = [x[i] / (np.linalg.norm(x[i]) + eps) for i in range(B)]
        k = np.array([[(xn[i] @ xn[j] + 1) / 2 for j in range(B)] for i in range(B)])
        return k / k.sum(1, keepdims=True)

    q, p = cond(fs.numpy()), cond(ft.numpy())
    expected = np.mean([sum(p[i, j] * math.log((p[i, j] + eps) / (q[i, j] + eps)) for j in range(4)) for i in range(4)])
    close(pkt_loss(fs, ft), float(expected))


# ------------------------------------------------------------------------------------ contrastive


def test_crd_scores_hand_case():
    anchor = t([[1.0, 0.0]])
    rows = t([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    assert_close(crd_scores(anchor, rows, T=0.5), t([[math.exp(2), 1.0, math.exp(-2)]]))


def test_crd_nce_hand_case_k2():
    # P = [0.2, 0.1, 0.05], n_data = 10 -> K·P_n = 0.2
    # −[ln(0.2/0.4) + ln(0.2/0.3) + ln(0.2/0.25)] = −ln(0.5 · 2/3 · 0.8) = ln(15/4)
    P = t([[0.2, 0.1, 0.05]])
    close(crd_nce_loss(P, n_data=10, eps=0.0), math.log(15 / 4))
    close(crd_nce_loss(P, n_data=10), math.log(15 / 4), rtol=1e-6, atol=1e-6)
    # batch mean: a second identical row leaves it unchanged; sum over negatives: K enters per row
    close(crd_nce_loss(torch.cat([P, P]), n_data=10, eps=0.0), math.log(15 / 4))


def test_crd_nce_at_noise_level_closed_form():
    # every P = P_n: L = ln(K+1) + K·ln((K+1)/K)  (→ ln(K+1) + 1 for large K)
    K, n = 1000, 50000
    P = torch.full((3, K + 1), 1.0 / n, dtype=D64)
    close(crd_nce_loss(P, n_data=n, eps=0.0), math.log(K + 1) + K * math.log((K + 1) / K))


def test_crd_stable_equals_naive_and_survives_overflow():
    g = torch.Generator().manual_seed(9)
    B, K, D, T, n = 8, 64, 16, 0.07, 1000
    anchor_s = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    anchor_t = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    bank_t = torch.nn.functional.normalize(torch.randn(B, K + 1, D, generator=g), dim=2)
    bank_s = torch.nn.functional.normalize(torch.randn(B, K + 1, D, generator=g), dim=2)
    out_s, out_t = crd_scores(anchor_s, bank_t, T), crd_scores(anchor_t, bank_s, T)
    Z_s, Z_t = out_s.mean().item() * n, out_t.mean().item() * n
    naive = crd_nce_loss(out_s / Z_s, n) + crd_nce_loss(out_t / Z_t, n)
    stable = crd_loss_from_logits(crd_logits(anchor_s, bank_t, T), crd_logits(anchor_t, bank_s, T), Z_s, Z_t, n)
    assert_close(stable, naive, rtol=1e-5, atol=0.0)
    # ε enters both versions the same way (a large ε makes any mismatch visible)
    naive_eps = crd_nce_loss(out_s / Z_s, n, eps=0.05) + crd_nce_loss(out_t / Z_t, n, eps=0.05)
    stable_eps = crd_loss_from_logits(
        crd_logits(anchor_s, bank_t, T), crd_logits(anchor_t, bank_s, T), Z_s, Z_t, n, eps=0.05
    )
    assert_close(stable_eps, naive_eps, rtol=1e-5, atol=0.0)
    # logits of 200: exp overflows float32, the log-space version does not
    logits = torch.full((2, K + 1), 200.0)
    assert not torch.isfinite(crd_nce_loss(logits.exp() / 1e3, n))
    assert torch.isfinite(crd_loss_from_logits(logits, logits, 1e3, 1e3, n))
    # and in bfloat16 with a float32-sized Z (1e10 overflows float16, not log Z)
    lb = crd_logits(anchor_s, bank_t, T).bfloat16()
    val = crd_loss_from_logits(lb, lb, 1e10, 1e10, n)
    assert val.dtype == torch.bfloat16 and torch.isfinite(val)


def test_crd_at_init_close_to_2_lnK_plus_1_plus_jensen_gap():
    # Reference init: anchors are unit vectors, bank rows uniform in ±1/√(D/3), Z = mean(exp)·n_data.
    # With every P = P_n the loss would be 2(ln(K+1)+1); the spread of exp(cos/T) adds, per side,
    # log E[e^x] − E[x] ≈ var(x)/2 = 1/(2·D·T²), i.e. ≈ +1.59 in total at D = 128, T = 0.07.
    g = torch.Generator().manual_seed(10)
    B, K, D, T, n = 256, 256, 128, 0.07, 50000
    stdv = 1 / math.sqrt(D / 3)
    total = torch.tensor(0.0)
    for _ in range(2):
        anchor = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
        rows = torch.rand(B, K + 1, D, generator=g) * 2 * stdv - stdv
        out = crd_scores(anchor, rows, T)
        total = total + crd_nce_loss(out / (out.mean() * n), n)
    plain = 2 * (math.log(K + 1) + 1)
    assert abs(total.item() - (plain + 1 / (D * T * T))) < 0.4
    assert total.item() - plain > 0.8


def test_inverted_decomposition_hand_case():
    d = inverted_l2_decomposition(t([[1.0, 0.0]]), t([[0.0, 1.0]]))
    close(d["loss"], 2.0)
    close(d["transfer"], 1.0)
    close(d["spectral"], 1.0)


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 3, 3)])
def test_inverted_decomposition_parts_sum_and_spectral_is_svd(shape):
    g = torch.Generator().manual_seed(11)
    z_s = torch.randn(*shape, generator=g)
    z_p = torch.randn(*shape, generator=g)
    d = inverted_l2_decomposition(z_s, z_p)
    assert_close(d["loss"], d["transfer"] + d["spectral"], rtol=1e-5, atol=1e-5)
    C = shape[1]
    rows = z_s.movedim(1, -1).reshape(-1, C)  # N = B·H·W rows of dimension C
    N = rows.shape[0]
    assert_close(d["spectral"], (torch.linalg.svdvals(rows) ** 2).sum() / N, rtol=1e-5, atol=1e-6)
    loops = sum(float(((rows[i] - z_p.movedim(1, -1).reshape(-1, C)[i]) ** 2).sum()) for i in range(N)) / N
    assert_close(d["loss"], torch.tensor(loops), rtol=1e-5, atol=1e-6)


def test_spectral_energy_is_centred_svd_energy():
    g = torch.Generator().manual_seed(12)
    z = torch.randn(3, 4, 2, 2, generator=g, dtype=D64) + 2.0
    rows = z.movedim(1, -1).reshape(-1, 4)
    centred = rows - rows.mean(0)
    N = rows.shape[0]
    close(spectral_energy(z), float((torch.linalg.svdvals(centred) ** 2).sum() / N))
    close(spectral_energy(z), float(np.mean([np.sum(r ** 2) for r in centred.numpy()])))
    close(spectral_energy(z, center=False), float((rows ** 2).sum() / N))


def _tail_from_svd(rows: torch.Tensor, k_frac: float) -> tuple[float, float]:
    s2 = (torch.linalg.svdvals(rows.double()) ** 2).tolist()  # descending, min(N, d) values
    k = math.ceil(k_frac * min(rows.shape))
    return sum(s2[k:]), sum(s2)


@pytest.mark.parametrize("shape,k_frac", [((40, 6), 0.5), ((4, 10), 0.5), ((2, 5, 3, 3), 0.3), ((16, 8), 0.0), ((16, 8), 1.0)])
def test_spectral_tail_ratio_and_energy_equal_svd(shape, k_frac):
    g = torch.Generator().manual_seed(13)
    z = torch.randn(*shape, generator=g) * torch.linspace(0.2, 3.0, shape[1]).view(1, -1, *([1] * (len(shape) - 2)))
    rows = z.movedim(1, -1).reshape(-1, shape[1])
    centred = rows - rows.mean(0)
    tail, total = _tail_from_svd(centred, k_frac)
    N = rows.shape[0]
    close(spectral_tail_ratio(z, k_frac=k_frac), tail / total, rtol=1e-4, atol=1e-5)
    close(spectral_tail_energy(z, k_frac=k_frac), tail / N, rtol=1e-4, atol=1e-5)
    tail_u, total_u = _tail_from_svd(rows, k_frac)
    close(spectral_tail_ratio(z, k_frac=k_frac, center=False), tail_u / total_u, rtol=1e-4, atol=1e-5)


def test_spectral_tail_ratio_gradient():
    g = torch.Generator().manual_seed(14)
    z = (torch.randn(7, 3, generator=g, dtype=D64) * t([1.0, 2.0, 3.0])).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: spectral_tail_ratio(x, k_frac=0.5), (z,))
    wide = (torch.randn(3, 6, generator=g, dtype=D64)).requires_grad_()  # N < d: N×N Gram
    assert torch.autograd.gradcheck(lambda x: spectral_tail_energy(x, k_frac=0.4), (wide,))


def test_spectral_tail_zero_input_is_zero():
    z = torch.zeros(5, 3, requires_grad=True)
    r = spectral_tail_ratio(z)
    r.backward()
    assert r.item() == 0.0 and torch.isfinite(z.grad).all()


def test_match_spatial_by_an_integer_factor_equals_area_interpolation():
    import torch.nn.functional as F

    from crossdistill.projectors import match_spatial

    g = torch.Generator().manual_seed(0)
    for shape, size in (((2, 3, 32, 32), (16, 16)), ((2, 3, 32, 32), (8, 8)), ((1, 2, 12, 6), (4, 3)),
                        ((1, 2, 10, 10), (4, 4))):  # the last one is not an integer factor
        x = torch.randn(*shape, generator=g)
        assert torch.allclose(match_spatial(x, size), F.interpolate(x, size=size, mode="area"), atol=1e-6)


def test_ab_closed_form_gradient_matches_the_masked_formula():
    # the hand-written backward against autograd over the reference's two masked cases, with values
    # on both sides of ±m and a per-channel margin; float64 gradcheck of the closed form itself
    g = torch.Generator().manual_seed(5)
    s = (2 * torch.randn(3, 4, 5, 5, generator=g, dtype=D64)).requires_grad_()
    te = torch.randn(3, 4, 5, 5, generator=g, dtype=D64)
    m = t([0.0, 0.3, 1.0, 2.0])
    mm = m.view(1, -1, 1, 1)
    on = te > 0
    ref = (((s + mm) ** 2) * ((s > -mm) & ~on) + ((s - mm) ** 2) * ((s <= mm) & on)).sum() / 3
    (g_ref,) = torch.autograd.grad(ref, s)
    ours = ab_loss(s, te, margin=m)
    (g_ours,) = torch.autograd.grad(ours, s)
    close(ours, ref.item())
    assert torch.allclose(g_ours, g_ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: ab_loss(x, te, margin=m), (s,))


def test_ab_reads_bf16_maps_and_sums_in_float32():
    g = torch.Generator().manual_seed(6)
    s32 = torch.randn(2, 3, 4, 4, generator=g)
    te = torch.randn(2, 3, 4, 4, generator=g)
    s16 = s32.bfloat16().requires_grad_()
    loss = ab_loss(s16, te.bfloat16(), margin=1.0)
    assert loss.dtype == torch.float32
    close(loss, ab_loss(s16.detach().float(), te.bfloat16().float(), margin=1.0).item())
    loss.backward()
    assert s16.grad.dtype == torch.bfloat16
