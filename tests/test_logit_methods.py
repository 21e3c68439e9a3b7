"""The logit methods after KD: DKD, DIST, CTKD, MLKD and logit standardisation.

Golden tests: each loss against a reference written here from the authors' released code (the file
read is named in each test's docstring), value and gradient to 1e-5 on hand-made inputs; then a few
steps that lower each method's loss, the schedules (DKD's warm-up, CTKD's curriculum), and bad
options / tasks that end in one ConfigError.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.losses import (
    dist_loss,
    dkd_loss,
    kd_loss,
    kd_loss_per_temperature,
    mlkd_levels,
    standardize_logits,
)
from crossdistill.methods import DataSetup, build_method
from crossdistill.methods.ctkd import reversal_strength
from crossdistill.tasks.base import create_task

from helpers import TinyNet

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logits(seed=0, b=6, k=5, scale=3.0):
    """Hand-made logits: a fixed draw, plus one sample with a dominant class and one with ties."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g, dtype=torch.float64) * scale
    z[0] = torch.tensor([8.0, -1.0, 0.5, 0.0, -3.0][:k] + [0.0] * max(0, k - 5), dtype=torch.float64)
    z[1] = torch.tensor([1.0, 1.0, 1.0, -2.0, 2.0][:k] + [0.0] * max(0, k - 5), dtype=torch.float64)
    return z


def value_and_grads(fn, *inputs, student_only=False):
    xs = [x.clone().requires_grad_(not student_only or i == 0) for i, x in enumerate(inputs)]
    out = fn(*xs)
    # a non-scalar output is checked through a fixed weighting of its entries (a full vector-Jacobian product)
    weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    grads = torch.autograd.grad(out, [x for x in xs if x.requires_grad], grad_outputs=weights)
    return out.detach(), grads


def assert_same(ours, ref, *inputs, student_only=False):
    """Value and gradients equal; ``student_only``: the gradient w.r.t. the first input alone (the
    reference's ``kl_div`` has no finite gradient w.r.t. a target probability of exactly 0, and the
    teacher never receives one)."""
    v1, g1 = value_and_grads(ours, *inputs, student_only=student_only)
    v2, g2 = value_and_grads(ref, *inputs, student_only=student_only)
    assert_close(v1, v2, **TOL)
    for a, b in zip(g1, g2):
        assert_close(a, b, **TOL)


# -- references, written from the released code ---------------------------------------------------
def ref_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def ref_dkd(ls, lt, target, alpha, beta, T):
    gt = torch.zeros_like(ls).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(ls).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdims=True), (p * other).sum(1, keepdims=True)], dim=1)

    ps, pt = cat_mask(F.softmax(ls / T, dim=1)), cat_mask(F.softmax(lt / T, dim=1))
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T ** 2 / target.shape[0]
    pt2 = F.softmax(lt / T - 1000.0 * gt, dim=1)
    lps2 = F.log_softmax(ls / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(lps2, pt2, reduction="sum") * T ** 2 / target.shape[0]
    return alpha * tckd + beta * nckd


def ref_dist(zs, zt, beta, gamma, tau):
    def pearson(a, b, eps=1e-8):
        a, b = a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    ys, yt = (zs / tau).softmax(dim=1), (zt / tau).softmax(dim=1)
    inter = tau ** 2 * (1 - pearson(ys, yt).mean())
    intra = tau ** 2 * (1 - pearson(ys.t(), yt.t()).mean())
    return beta * inter + gamma * intra


def ref_mlkd(sw, tw, ss, ts, T, kd_w, logit_stand=False):
    def kd(a, b, temp):
        a, b = (ref_normalize(a), ref_normalize(b)) if logit_stand else (a, b)
        return F.kl_div(F.log_softmax(a / temp, dim=1), F.softmax(b / temp, dim=1), reduction="none").sum(1).mean() * temp ** 2

    def cc(a, b, temp):
        pa, pb = F.softmax(a / temp, dim=1), F.softmax(b / temp, dim=1)
        return ((pb.t() @ pb - pa.t() @ pa) ** 2).sum() / a.shape[1]

    def bc(a, b, temp):
        pa, pb = F.softmax(a / temp, dim=1), F.softmax(b / temp, dim=1)
        return ((pb @ pb.t() - pa @ pa.t()) ** 2).sum() / a.shape[0]

    p = F.softmax(tw.detach(), dim=1)
    conf = p.max(dim=1).values
    mask = conf.le(float(np.percentile(conf.numpy().flatten(), 50)))
    cconf = p.sum(dim=0)
    cmask = cconf.le(float(np.percentile(cconf.numpy().flatten(), 50)))
    temps = [T, 3.0, 5.0, 2.0, 6.0]
    kd_weak = sum(kd_w * (kd(sw, tw, x) * mask).mean() for x in temps)
    kd_strong = sum(kd_w * kd(ss, ts, x) for x in temps[:3]) + sum(kd_w * kd(sw, tw, x) for x in temps[3:])
    cc_weak = sum(kd_w * (cc(sw, tw, x) * cmask).mean() for x in temps)
    bc_weak = sum(kd_w * (bc(sw, tw, x) * mask).mean() for x in temps)
    return kd_weak + kd_strong + cc_weak + bc_weak


# -- golden tests ------------------------------------------------------------------------------------
def test_standardize_logits_matches_the_released_normalize():
    """sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py (``normalize``: sample std,
    ``1e-7`` added to it) and the KD loss on top (T = 2, ``× T²``)."""
    zs, zt = logits(0), logits(1) * 2 + 5
    assert_same(standardize_logits, ref_normalize, zs)

    def ref_kd_ls(a, b, T=2.0):
        a, b = ref_normalize(a), ref_normalize(b)
        return F.kl_div(F.log_softmax(a / T, dim=1), F.softmax(b / T, dim=1), reduction="none").sum(1).mean() * T ** 2

    assert_same(lambda a, b: kd_loss(standardize_logits(a), standardize_logits(b), 2.0), ref_kd_ls, zs, zt)
    z = standardize_logits(zt)
    assert_close(z.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert_close(z.std(1), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (9.0, 81.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_loss_matches_mdistiller(alpha, beta, T):
    """megvii-research/mdistiller, mdistiller/distillers/DKD.py (``dkd_loss``, ``cat_mask``, the
    ``− 1000·gt_mask`` of the non-target part, ``size_average=False`` / B, ``× T²``)."""
    zs, zt = logits(2), logits(3) * 1.5
    target = torch.tensor([0, 4, 2, 1, 3, 0])
    assert_same(lambda a, b: dkd_loss(a, b, target, alpha, beta, T),
                lambda a, b: ref_dkd(a, b, target, alpha, beta, T), zs, zt, student_only=True)


def test_dkd_with_standardisation_matches_the_released_code():
    """sunshangquan/logit-standardization-KD, mdistiller/distillers/DKD.py (``normalize`` first)."""
    zs, zt = logits(4), logits(5) * 4 - 2
    target = torch.tensor([0, 4, 2, 1, 3, 3])
    assert_same(lambda a, b: dkd_loss(standardize_logits(a), standardize_logits(b), target, 9.0, 81.0, 4.0),
                lambda a, b: ref_dkd(ref_normalize(a), ref_normalize(b), target, 9.0, 81.0, 4.0), zs, zt,
                student_only=True)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0)])
def test_dist_loss_matches_the_official_dist(beta, gamma, tau):
    """hunto/DIST_KD, classification/lib/models/losses/dist_kd.py (``DIST``: ``softmax(z/τ)``,
    ``τ²``, Pearson as cosine of centred rows with eps 1e-8; read through its copies in
    huawei-noah/Efficient-Computing Distillation/VanillaKD/losses/dist.py and the authors'
    segmentation/losses/dist_kd.py)."""
    zs, zt = logits(6), logits(7)
    assert_same(lambda a, b: dist_loss(a, b, tau, beta, gamma), lambda a, b: ref_dist(a, b, beta, gamma, tau), zs, zt)


def test_dist_loss_on_dense_logits_is_one_row_per_position():
    """hunto/DIST_KD, segmentation/losses/dist_kd.py: ``[B, K, H, W]`` → ``[B·H·W, K]`` rows."""
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    rows = lambda z: z.transpose(1, 3).reshape(-1, 4)  # noqa: E731 — the reference's reshape
    assert_same(lambda a, b: dist_loss(a, b), lambda a, b: ref_dist(rows(a), rows(b), 1.0, 1.0, 1.0), zs, zt)


@pytest.mark.parametrize("epoch", [1, 4, 10, 30])
def test_ctkd_matches_the_released_global_temperature(epoch):
    """zhengli97/CTKD, train_student.py (``CosineDecay(max=0, min=−1, loops=10)`` read at the 1-based
    epoch, ``T = t_start + t_end·sigmoid(θ)`` with 1 and 20), models/temp_global.py (``Global_T``:
    θ = 1, the gradient-reversal layer multiplies by the decay value) and distiller_zoo/KD.py
    (``KLDivLoss(batchmean)·T·T``): the loss, the student's gradient and θ's gradient."""
    zs, zt = logits(8).float(), logits(9).float() * 2
    term = build_method("ctkd")
    term.build([zs], [zt])
    term.on_epoch_start(epoch - 1, 240)  # our epochs count from 0
    s = zs.clone().requires_grad_(True)
    loss = term([s], [zt], {})["loss"]
    loss.backward()

    decay = (math.cos(min(epoch, 10) * math.pi / 10) + 1.0) * 0.5 * (0 - (-1)) + (-1)
    theta = torch.ones(1, requires_grad=True)
    s_ref = zs.clone().requires_grad_(True)

    class Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return decay * g

    T = 1 + 20 * torch.sigmoid(Reverse.apply(theta))
    ref = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s_ref / T, dim=1), F.softmax(zt / T, dim=1)) * T * T
    ref.backward()
    assert_close(loss.detach(), ref.detach().reshape(()), **TOL)
    assert_close(s.grad, s_ref.grad, **TOL)
    assert_close(term.theta.grad, theta.grad, **TOL)
    assert term.theta.grad.sign() != 0 and abs(decay) > 0


def test_ctkd_curriculum_and_instance_temperature():
    """The curriculum rises from 0 to 1 over 10 epochs and stays; the instance-wise module gives one
    T per sample in (1, 21), and with one T for all samples the loss is plain KD at that T."""
    assert reversal_strength(0, 0.0, 1.0, 10) == 0.0
    assert reversal_strength(10, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert reversal_strength(50, 0.0, 1.0, 10) == pytest.approx(1.0)
    assert reversal_strength(5, 0.0, 1.0, 10) == pytest.approx(0.5)
    zs, zt = logits(10).float(), logits(11).float()
    term = build_method("ctkd", temperature="instance")
    term.build([zs], [zt])
    T = term.temperature(zs, zt)
    assert T.shape == (6,) and bool(((T > 1) & (T < 21)).all())
    assert_close(kd_loss_per_temperature(zs, zt, torch.full((6,), 3.0)), kd_loss(zs, zt, 3.0), **TOL)


def test_mlkd_matches_the_released_code():
    """Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/KD_ours.py (``forward_train``:
    temperatures [T, 3, 5, 2, 6], the masks on reduced losses, the strong-view line's last two
    temperatures on the weak view, only kd / cc-weak / bc-weak in the returned sum)."""
    sw, tw, ss, ts = logits(12), logits(13) * 2, logits(14), logits(15) * 2

    def ours(a, b):
        lv = mlkd_levels(a, tw, b, ts, (4.0, 3.0, 5.0, 2.0, 6.0))
        return 0.9 * (lv["instance"] + lv["batch"] + lv["class"])

    assert_same(ours, lambda a, b: ref_mlkd(a, tw, b, ts, 4.0, 0.9), sw, ss)


def test_mlkd_with_standardisation_matches_the_released_code():
    """sunshangquan/logit-standardization-KD, mdistiller/distillers/MLKD.py (``normalize`` in the KD
    part only; base temperature 2, weight 9)."""
    sw, tw, ss, ts = logits(16), logits(17) * 3, logits(18), logits(19) * 3

    def ours(a, b):
        lv = mlkd_levels(a, tw, b, ts, (2.0, 3.0, 5.0, 2.0, 6.0), standardize=True)
        return 9.0 * (lv["instance"] + lv["batch"] + lv["class"])

    assert_same(ours, lambda a, b: ref_mlkd(a, tw, b, ts, 2.0, 9.0, logit_stand=True), sw, ss)


# -- methods: a few steps lower the loss -------------------------------------------------------------
def toy(n=16, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return {"input": x, "input_1": x.flip(3) + 0.1 * torch.randn(x.shape, generator=g), "label": y}


def distiller(name, **opts):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet(width=16)
    teachers = {"default": t}
    fields = {}
    if name == "mlkd":
        teachers["strong"] = t
        fields = {"strong": "input_1"}
        opts.setdefault("from_teacher", ["default", "strong"])
    d = Distiller(s, teachers, [build_method(name, **opts)], task=create_task("classification", 5),
                  example_input=toy()["input"], input_fields=fields)
    d.setup(DataSetup(num_samples=16, num_classes=5))
    return d


@pytest.mark.parametrize("name,opts", [("dkd", {}), ("dkd", {"standardize": True}), ("dist", {}),
                                       ("ctkd", {}), ("ctkd", {"temperature": "instance"}),
                                       ("ctkd", {"standardize": True}), ("mlkd", {}), ("mlkd", {"standardize": True}),
                                       ("kd", {"standardize": True})])
def test_few_steps_lower_the_loss(name, opts):
    d = distiller(name, **opts)
    d.on_epoch_start(0, 240)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=3e-3)
    d.train()
    values = []
    for _ in range(8):
        opt.zero_grad()
        loss, parts = d(toy())
        loss.backward()
        opt.step()
        values.append(parts[name].item())
    assert values[-1] < 0.9 * values[0], values


def test_dkd_warmup_is_mdistillers_per_epoch_ramp():
    """mdistiller: ``min(epoch / warmup, 1)`` with epochs from 1 — our epoch 0 is its epoch 1."""
    term = build_method("dkd")
    zs, zt, y = logits(20).float(), logits(21).float(), torch.tensor([0, 1, 2, 3, 4, 0])
    full = dkd_loss(zs, zt, y)
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (100, 1.0)]:
        term.on_epoch_start(epoch, 240)
        assert_close(term([zs], [zt], {"target": y}), factor * full, **TOL)
    assert build_method("dkd", warmup=0).warmup_factor == 1.0


def test_mlkd_learns_from_the_strong_view_and_needs_the_teacher_on_it():
    d = distiller("mlkd")
    _, parts = d(toy())
    assert {"mlkd/instance", "mlkd/batch", "mlkd/class", "mlkd/strong_ce"} <= set(parts)
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match="teacher on both views"):
        Distiller(TinyNet(), TinyNet(), [build_method("mlkd")], example_input=toy()["input"])


# -- bad options and tasks -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("dkd", {"beta": -1}), ("dkd", {"warmup": 1.5}), ("dist", {"tau": 0}),
                                       ("ctkd", {"temperature": "local"}), ("ctkd", {"t_range": -2}),
                                       ("mlkd", {"strong_view": "weak"}), ("mlkd", {"extra_temperatures": [3.0]}),
                                       ("kd", {"standardize": "sometimes"}), ("dkd", {"gamma": 1})])
def test_bad_options_are_one_config_error(name, opts):
    with pytest.raises(ConfigError) as e:
        build_method(name, **opts)
    assert "\n" not in str(e.value)


def test_dkd_and_mlkd_refuse_tasks_without_class_targets():
    with pytest.raises(ConfigError, match="class targets") as e:
        build_method("dkd").setup(DataSetup(num_samples=4, task="depth"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="class targets"):
        build_method("mlkd").setup(DataSetup(num_samples=4, task="segmentation"))
    build_method("mlkd", strong_ce_weight=0).setup(DataSetup(num_samples=4, task="segmentation"))
    build_method("dist").setup(DataSetup(num_samples=4, task="depth"))  # DIST needs no labels
