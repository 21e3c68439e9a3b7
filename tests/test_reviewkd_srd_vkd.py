"""ReviewKD, SRD and VkD against their official code, a few training steps each, and their bad options.

Official files read (the references below are written here from their formulas, in float64):

- ReviewKD: dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` (``ABF``, ``ReviewKD.forward``,
  ``hcl``) and ``CIFAR-100/train.py`` (warm-up), mdistiller ``mdistiller/distillers/ReviewKD.py`` and
  ``mdistiller/engine/cfg.py`` (``CFG.REVIEWKD``), ``configs/cifar100/reviewkd.yaml`` (weight 5).
- SRD: roymiles/Simple-Recipe-Distillation ``imagenet/torchdistill/losses/single.py``
  (``OurDistillationLoss``), torchdistill ``SRDLoss``.
- VkD: roymiles/VkD ``engine.py`` (``train_one_epoch``), ``train.py`` (projector, ``KLDivLoss``),
  ``main_distributed.py`` (``--alpha``, ``--gamma``).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.losses import hcl_loss, srd_loss, vkd_loss
from crossdistill.methods import METHODS, build_method
from crossdistill.models import create_model

TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def hand_made(*shape, phase=0.0, scale=1.0):
    """Deterministic, non-symmetric values: a sine of the flat index (no random generator)."""
    n = math.prod(shape)
    i = torch.arange(n, dtype=torch.float64)
    return (scale * torch.sin(0.37 * i + phase) + 0.05 * torch.cos(1.3 * i * (1 + phase))).reshape(shape)


def grads(fn, *xs):
    xs = [x.clone().requires_grad_(True) for x in xs]
    value = fn(*xs)
    return value.detach(), torch.autograd.grad(value, xs)


# -- the references, from the official formulas ------------------------------------------------------
def hcl_reference(fstudent, fteacher):
    """ReviewKD's ``hcl``: per stage MSE plus the pooled 4/2/1 levels with halving weights, normalised."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        h = fs.shape[2]
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for level in [4, 2, 1]:
            if level >= h:
                continue
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (level, level)),
                                     F.adaptive_avg_pool2d(ft, (level, level)), reduction="mean") * cnt
            tot += cnt
        loss_all = loss_all + loss / tot
    return loss_all


def srd_feature_reference(f_s, f_t):
    """``OurDistillationLoss.forward_loss`` after the embed: BN1d(eps=1e-4, affine=False) on both, log Σ |Δ|⁴."""
    d = f_s.shape[1]
    bn_s = nn.BatchNorm1d(d, eps=0.0001, affine=False).double().train()
    bn_t = nn.BatchNorm1d(d, eps=0.0001, affine=False).double().train()
    return torch.log((bn_s(f_s) - bn_t(f_t)).abs().pow(4.0).sum())


def kl_reference(y_s, y_t, T=1.0):
    """``F.kl_div(log_softmax(s/T), softmax(t/T), sum) · T² / B`` — SRD's; VkD's batchmean KLDivLoss is the same."""
    return F.kl_div(F.log_softmax(y_s / T, dim=1), F.softmax(y_t / T, dim=1), reduction="sum") * T * T / y_s.shape[0]


def vkd_feature_reference(z_s_projected, z_t):
    """VkD ``engine.py``: ``smooth_l1_loss(P z_s, layer_norm(z_t))`` with the defaults (β = 1, mean)."""
    return F.smooth_l1_loss(z_s_projected, F.layer_norm(z_t, (z_t.shape[1],)))


# -- golden tests of the pure losses ---------------------------------------------------------------------
def test_hcl_loss_matches_the_official_hcl():
    """dvlab-research/ReviewKD CIFAR-100/model/reviewkd.py ``hcl`` (= mdistiller ``hcl_loss``): maps of
    8×8 (all three levels), 4×4 (level 4 skipped), 2×2 and 1×1 (plain MSE)."""
    shapes = [(3, 4, 8, 8), (3, 5, 4, 4), (3, 2, 2, 2), (3, 6, 1, 1)]
    s = [hand_made(*sh, phase=0.1 * i) for i, sh in enumerate(shapes)]
    t = [hand_made(*sh, phase=1.0 + 0.3 * i, scale=0.7) for i, sh in enumerate(shapes)]
    ours, g_ours = grads(lambda *x: hcl_loss(x[:4], x[4:]), *s, *t)
    ref, g_ref = grads(lambda *x: hcl_reference(x[:4], x[4:]), *s, *t)
    assert_close(ours, ref, **TOL)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, **TOL)


def test_srd_loss_matches_the_official_log_bn_corr_4():
    """roymiles/Simple-Recipe-Distillation imagenet/torchdistill/losses/single.py,
    ``OurDistillationLoss.forward_loss`` (also torchdistill ``SRDLoss``'s feature part)."""
    z_s, z_t = hand_made(6, 5, phase=0.2, scale=2.0), hand_made(6, 5, phase=2.1) + 0.3
    ours, g_ours = grads(lambda a, b: srd_loss(a, b, alpha=4.0, eps=1e-4), z_s, z_t)
    ref, g_ref = grads(srd_feature_reference, z_s, z_t)
    assert_close(ours, ref, **TOL)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, **TOL)


def test_vkd_loss_matches_the_official_smooth_l1_to_the_layer_normed_teacher():
    """roymiles/VkD engine.py: ``F.smooth_l1_loss(z_s_pool, F.layer_norm(z_t_pool, (C,)))``; residuals on
    both sides of β = 1 (the quadratic and the linear branch)."""
    z_s, z_t = hand_made(4, 7, phase=0.5, scale=1.5), hand_made(4, 7, phase=3.0, scale=4.0) + 1.0
    ours, g_ours = grads(vkd_loss, z_s, z_t)
    ref, g_ref = grads(vkd_feature_reference, z_s, z_t)
    d = (z_s - F.layer_norm(z_t, (7,))).abs()
    assert (d < 1).any() and (d > 1).any()
    assert_close(ours, ref, **TOL)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, **TOL)


# -- golden tests of the methods' whole terms (projector included) ----------------------------------------
def test_srd_term_is_the_official_loss():
    """``OurDistillationLoss.forward``: ``2 · log_bn_corr_4(embed(z_s), z_t) + KL(T=1)``, ``embed`` a biased Linear."""
    torch.manual_seed(0)
    z_s, z_t = hand_made(6, 4, phase=0.4), hand_made(6, 5, phase=1.7, scale=3.0)
    y_s, y_t = hand_made(6, 3, phase=2.2, scale=2.0), hand_made(6, 3, phase=0.9, scale=3.0)
    m = build_method("srd")
    m.build([z_s, y_s], [z_t, y_t])
    m.double()
    linear = m.projector.map
    assert isinstance(linear, nn.Linear) and linear.bias is not None and tuple(linear.weight.shape) == (5, 4)
    W, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    ours, g_ours = grads(lambda a, c: m([a, c], [z_t, y_t], {})["loss"], z_s, y_s)
    ref, g_ref = grads(lambda a, c: 2.0 * srd_feature_reference(F.linear(a, W, b), z_t) + kl_reference(c, y_t), z_s, y_s)
    assert_close(ours, ref, **TOL)
    for a, c in zip(g_ours, g_ref):
        assert_close(a, c, **TOL)


def test_vkd_term_is_the_official_loss():
    """``train_one_epoch``: ``α · smooth_l1(P z_s, LN(z_t)) + γ · KL(T=1)``, α = γ = 1, ``P`` an orthogonal
    Linear without bias (``train.py``)."""
    torch.manual_seed(0)
    z_s, z_t = hand_made(5, 4, phase=0.4), hand_made(5, 6, phase=1.7, scale=3.0)
    y_s, y_t = hand_made(5, 3, phase=2.2, scale=2.0), hand_made(5, 3, phase=0.9, scale=3.0)
    m = build_method("vkd")
    m.build([z_s, y_s], [z_t, y_t])
    m.double()
    linear = m.projector.map
    assert nn.utils.parametrize.is_parametrized(linear, "weight") and linear.bias is None
    W = linear.weight.detach().clone()
    assert_close(W.T @ W, torch.eye(4, dtype=W.dtype), **TOL)  # 4 → 6: semi-orthogonal, orthonormal columns
    ours, g_ours = grads(lambda a, c: m([a, c], [z_t, y_t], {})["loss"], z_s, y_s)
    ref, g_ref = grads(lambda a, c: vkd_feature_reference(F.linear(a, W), z_t) + kl_reference(c, y_t), z_s, y_s)
    assert_close(ours, ref, **TOL)
    for a, c in zip(g_ours, g_ref):
        assert_close(a, c, **TOL)


def _bn(x, bn):
    return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)


def review_reference(blocks, student, shapes, out_shapes):
    """ReviewKD.forward + ABF.forward, the official order: the sides deep → shallow, ``results.insert(0, …)``,
    the deeper map upsampled to ``(shape, shape)``, the fused map resized to ``(out_shape, out_shape)``."""
    def abf(block, x, y, shape, out_shape):
        n, _, h, w = x.shape
        x = _bn(F.conv2d(x, block.reduce[0].weight), block.reduce[1])
        if block.attention is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = torch.sigmoid(F.conv2d(torch.cat([x, y], dim=1), block.attention[0].weight, block.attention[0].bias))
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        return _bn(F.conv2d(x, block.expand[0].weight, padding=1), block.expand[1]), x

    x = student[::-1]
    abfs = list(blocks)[::-1]
    out, res = abf(abfs[0], x[0], None, shapes[0], out_shapes[0])
    results = [out]
    for feat, block, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out, res = abf(block, feat, res, shape, out_shape)
        results.insert(0, out)
    return results


def test_reviewkd_term_is_the_official_review_and_hcl():
    """The shapes of the official resnet8x4 → resnet32x4 setting scaled down (student stages 8/4/2 px, a
    pooled vector last; the teacher's first stage at twice the student's size: ``out_shapes`` ≠ ``shapes``),
    the official ABF chain and ``hcl``, value and gradient."""
    torch.manual_seed(0)
    s = [hand_made(2, 3, 8, 8, phase=0.1), hand_made(2, 5, 4, 4, phase=0.2), hand_made(2, 6, 2, 2, phase=0.3),
         hand_made(2, 6, phase=0.4)]
    t = [hand_made(2, 4, 16, 16, phase=1.1), hand_made(2, 3, 4, 4, phase=1.2), hand_made(2, 7, 2, 2, phase=1.3),
         hand_made(2, 7, phase=1.4)]
    m = build_method("reviewkd")
    m.build(s, t)
    m.double()
    assert [b.attention is not None for b in m.chain.blocks] == [True, True, True, False]
    assert m.chain.blocks[0].reduce[0].out_channels == 6  # min(512, channels of the pooled side)
    assert m.warmup == 1.0
    shapes, out_shapes = [1, 2, 4, 8], [1, 2, 4, 16]  # the official lists, deepest first

    def ours(*x):
        return m(list(x), t, {})["loss"]

    def ref(*x):
        as4 = [v if v.dim() == 4 else v[:, :, None, None] for v in x]
        t4 = [v if v.dim() == 4 else v[:, :, None, None] for v in t]
        return hcl_reference(review_reference(m.chain.blocks, as4, shapes, out_shapes), t4)

    v_ours, g_ours = grads(ours, *s)
    v_ref, g_ref = grads(ref, *s)
    assert_close(v_ours, v_ref, **TOL)
    for a, b in zip(g_ours, g_ref):
        assert_close(a, b, **TOL)


def test_reviewkd_warms_up_over_20_epochs_like_mdistiller():
    """mdistiller: ``min(epoch / WARMUP_EPOCHS, 1)`` with epochs from 1; ours are from 0."""
    m = build_method("reviewkd")
    factors = []
    for epoch in (0, 9, 18, 19, 200):
        m.on_epoch_start(epoch, 240)
        factors.append(m.warmup)
    assert factors == [1 / 20, 10 / 20, 19 / 20, 1.0, 1.0]
    m = build_method("reviewkd", warmup_epochs=0)
    m.on_epoch_start(0, 240)
    assert m.warmup == 1.0


# -- registry, sides, directions -----------------------------------------------------------------------------
def nets(student="resnet8x4", teacher="resnet8x4"):
    torch.manual_seed(0)
    s, t = create_model(student, num_classes=10), create_model(teacher, num_classes=10)
    with torch.no_grad():  # BN statistics of the batch, so the teacher's eval-mode maps have a real scale
        for mod in t.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None
        t.train()(batch()["input"])
    return s, t.eval()


def batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(n, 3, size, size, generator=g)}


def test_registered_with_metadata_and_official_sides():
    for name, year in (("reviewkd", 2021), ("srd", 2024), ("vkd", 2024)):
        cls = METHODS.get(name)
        assert cls.year == year and cls.kind == "features" and cls.paper
    s, t = nets(teacher="resnet32x4")
    d = Distiller(s, t, [build_method("reviewkd")], example_input=batch()["input"])
    assert d.plans[0].student_paths == ["layer1", "layer2", "layer3", "pool"]
    assert d.plans[0].teacher_paths["default"] == [f"layer{i}.4.relu2:input" for i in (1, 2, 3)] + ["pool"]
    d = Distiller(s, t, [build_method("srd"), build_method("vkd")], example_input=batch()["input"])
    assert [p.student_paths for p in d.plans] == [["pool", "output"]] * 2
    assert [p.teacher_paths["default"] for p in d.plans] == [["pool", "output"]] * 2


@pytest.mark.parametrize("name", ["srd", "vkd"])
def test_projector_directions(name):
    s, t = nets("wrn_16_2", "resnet8x4")  # pooled widths 128 (student) and 256 (teacher)
    std = Distiller(s, t, [build_method(name)], example_input=batch()["input"]).terms[0].projector
    inv = Distiller(s, t, [build_method(name, projector="inverted")], example_input=batch()["input"]).terms[0].projector
    assert (std.map.in_features, std.map.out_features) == (128, 256)
    assert (inv.map.in_features, inv.map.out_features) == (256, 128)
    assert nn.utils.parametrize.is_parametrized(inv.map, "weight") == (name == "vkd")
    assert (inv.map.bias is not None) == (name == "srd")


# -- a few steps on one batch lower each method's loss -------------------------------------------------------
@pytest.mark.parametrize("name,opts", [("reviewkd", {}), ("srd", {}), ("srd", {"projector": "inverted"}),
                                       ("vkd", {}), ("vkd", {"projector": "inverted"})])
def test_few_steps_lower_the_loss(name, opts):
    s, t = nets()
    d = Distiller(s, t, [build_method(name, **opts)], example_input=batch()["input"])
    opt = torch.optim.Adam(d.trainable_parameters(d.phase), lr=1e-3)
    d.train()
    values = []
    for _ in range(10):
        opt.zero_grad()
        loss, parts = d(batch())
        loss.backward()
        opt.step()
        values.append(parts[name].item())
    assert values[-1] < values[0] - 0.1 * abs(values[0]), values


# -- bad options: one ConfigError line ------------------------------------------------------------------------
@pytest.mark.parametrize("name,opts,match", [
    ("srd", {"projector": "sideways"}, "projector"),
    ("srd", {"alpha": 0}, "alpha"),
    ("srd", {"projector_options": {"norm": "batchnorm"}}, "norm"),
    ("vkd", {"beta": -1}, "beta"),
    ("vkd", {"projector_options": {"orthogonal": "maybe"}}, "orthogonal"),
    ("reviewkd", {"warmup_epochs": -1}, "warmup_epochs"),
    ("reviewkd", {"mid_channels": 0}, "mid_channels"),
])
def test_bad_options_fail_in_one_line(name, opts, match):
    with pytest.raises(ConfigError, match=match) as err:
        build_method(name, **opts)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,opts", [("srd", {"student": "@pooled", "teacher": "@pooled"}),
                                       ("reviewkd", {"student": "@stages", "teacher": "@pooled"})])
def test_bad_sides_fail_at_build(name, opts):
    s, t = nets()
    with pytest.raises(ConfigError, match=name) as err:
        Distiller(s, t, [build_method(name, **opts)], example_input=batch()["input"])
    assert "\n" not in str(err.value)


# -- the CIFAR-100 recipes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pair", ["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2"])
def test_cifar100_recipes(pair):
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config

    expected = {"reviewkd": ("reviewkd", 5.0, {"warmup_epochs": 20}),
                "srd": ("srd", 1.0, {"projector": "standard", "feature_weight": 2.0, "kd_weight": 1.0, "T": 1.0}),
                "srd_inverted": ("srd", 1.0, {"projector": "inverted"}),
                "vkd": ("vkd", 1.0, {"projector": "standard", "feature_weight": 1.0, "kd_weight": 1.0, "T": 1.0}),
                "vkd_inverted": ("vkd", 1.0, {"projector": "inverted"})}
    for recipe, (method, weight, options) in expected.items():
        cfg = load_config(RECIPES / f"cifar100/{pair}/{recipe}.yaml")
        assert cfg.train.epochs == 240 and cfg.train.schedule.milestones == [150, 180, 210]
        (term,) = cfg.distill.terms
        assert term.method == method and term.weight == weight
        dumped = term.model_dump()
        assert all(dumped.get(k, getattr(term, k, None)) == v for k, v in options.items()), (recipe, dumped)


def test_shipped_recipes_train_a_few_steps_on_fake_cifar100(tmp_path):
    """The wrn recipes as shipped, through build_run and the Trainer, on a CIFAR-100 folder written here
    (the teacher randomly initialised instead of loaded): the warm-up reaches the term, every part is finite."""
    import pickle

    import numpy as np

    from crossdistill.build import build_run
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config, read_yaml
    from crossdistill.engine.trainer import Trainer

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        labels = [int(v) for v in rng.integers(0, 100, n)]
        with open(folder / split, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": labels,
                         b"coarse_labels": labels}, fh)
    for recipe in ("reviewkd", "srd_inverted", "vkd"):
        raw = read_yaml(RECIPES / f"cifar100/wrn_40_2_wrn_16_2/{recipe}.yaml")
        raw["teachers"] = {"default": {"model": "wrn_40_2", "num_classes": 100, "random_init": True}}
        raw["data"].update(root=str(tmp_path), batch_size=4, num_workers=0)
        raw["train"].update(epochs=1, max_steps_per_epoch=2, precision="fp32", channels_last=False, progress=False)
        raw["output_dir"] = str(tmp_path / recipe)
        run = build_run(load_config(data=raw))
        summary = Trainer(run).fit()
        term = run.distiller.terms[0]
        assert term.name == recipe.split("_")[0]
        if recipe == "reviewkd":
            assert term.weight == 5.0 and term.warmup == 1 / 20  # epoch 0 of the mdistiller warm-up
        assert summary["last"], summary
