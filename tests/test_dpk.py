"""DPK: linear CKA, patch masks and mixing, the method (share direction, schedules, inverted guard,
training), its checkpointed state, bad input, recipes.

The expected values are computed here from the formulas (docs/dpk.md), never pasted from a run.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses import centred_gram, hint_loss, kd_loss, linear_cka, mix_patches, patch_mask
from crossdistill.methods import METHODS, build_method
from crossdistill.methods.dpk import DPK, mask_seed
from crossdistill.models import create_model
from crossdistill.tasks import create_task
from helpers import tiny_run_yaml


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: one thread is as fast here and does not starve the neighbours."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- linear CKA --------------------------------------------------------------------------------------
def cka_by_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The textbook definition, in float64, with an explicit centring matrix H."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)

    def hsic(k, l_):
        return torch.trace(k @ h @ l_ @ h) / (n - 1) ** 2

    k, l_ = x @ x.t(), y @ y.t()
    return hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_))


def cka_by_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on centred features (small D only)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    x, y = x - x.mean(0), y - y.mean(0)
    return (y.t() @ x).pow(2).sum() / (torch.linalg.matrix_norm(x.t() @ x) * torch.linalg.matrix_norm(y.t() @ y))


def test_linear_cka_matches_the_hsic_definition_and_the_feature_form():
    g = gen(0)
    x = torch.randn(12, 5, generator=g)
    y = x @ torch.randn(5, 7, generator=g) + 0.5 * torch.randn(12, 7, generator=g)
    expected = cka_by_hsic(x, y)
    assert 0.2 < expected < 0.99
    assert_close(cka_by_features(x, y), expected)
    assert_close(linear_cka(x.double(), y.double()), expected)
    assert_close(linear_cka(x, y).double(), expected, rtol=1e-5, atol=1e-6)  # float32 input
    assert linear_cka(x, y).dtype == torch.float32
    # the centred Gram matrix is H K H
    n = x.shape[0]
    h = torch.eye(n) - 1.0 / n
    assert_close(centred_gram(x), h @ (x @ x.t()) @ h, rtol=1e-5, atol=1e-5)


def test_linear_cka_of_feature_maps_in_any_memory_layout():
    g = gen(1)
    x, y = torch.randn(6, 3, 4, 4, generator=g), torch.randn(6, 8, 2, 2, generator=g)
    expected = cka_by_hsic(x, y)
    assert_close(linear_cka(x, y).double(), expected, rtol=1e-5, atol=1e-6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert_close(linear_cka(cl, y).double(), expected, rtol=1e-5, atol=1e-6)


def test_linear_cka_is_one_for_identical_inputs_and_invariant_to_rotation_and_scale():
    g = gen(2)
    x = torch.randn(32, 10, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(10, 6, generator=g, dtype=torch.float64))
    assert_close(linear_cka(x, x), torch.tensor(1.0, dtype=torch.float64))
    base = linear_cka(x, y)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert_close(linear_cka(x @ q, y), base)
    assert_close(linear_cka(x, y @ r), base)
    assert_close(linear_cka(7.5 * x, 0.01 * y), base)
    assert_close(linear_cka(x @ q * 3.0, y @ r), base)
    # ...but not to a non-isotropic scaling (a check that the test can fail)
    stretch = torch.ones(10, dtype=torch.float64)
    stretch[0] = 20.0
    assert (linear_cka(x * stretch, y) - base).abs() > 1e-3


def test_linear_cka_is_near_zero_for_independent_features_at_large_n():
    g = gen(3)
    n, dx, dy = 3000, 6, 9
    x, y = torch.randn(n, dx, generator=g), torch.randn(n, dy, generator=g)
    # for independent features E‖YᵀX‖² = n·dx·dy and ‖XᵀX‖ ≈ n·√dx: CKA ≈ √(dx·dy)/n
    assert linear_cka(x, y) < 10 * math.sqrt(dx * dy) / n
    assert linear_cka(x, x + 0.1 * torch.randn(n, dx, generator=g)) > 0.95  # dependent: high


def test_linear_cka_uses_the_smaller_of_the_two_forms():
    g = gen(4)
    tall = torch.randn(40, 3, generator=g, dtype=torch.float64)  # B > D: the feature form is smaller
    other = tall @ torch.randn(3, 2, generator=g, dtype=torch.float64) + torch.randn(40, 2, generator=g, dtype=torch.float64)
    assert_close(linear_cka(tall, other), cka_by_hsic(tall, other))
    assert linear_cka(torch.full((40, 3), 0.1), other.float()) == 0  # constant side, feature form


def test_linear_cka_never_forms_a_d_by_d_matrix():
    # D = 2^21 features per sample: a D×D matrix would need 16 TiB, the Gram form needs 4×4
    x = torch.randn(4, 2 ** 21)
    assert 0.99 < float(linear_cka(x, 2 * x)) <= 1.0


def test_linear_cka_edge_cases():
    x = torch.randn(8, 5)
    assert linear_cka(torch.ones(8, 5), x) == 0  # a side that does not vary: no alignment, not NaN
    assert linear_cka(x[:1], x[:1]) == 0  # one sample
    with pytest.raises(ShapeError, match="same batch size"):
        linear_cka(x, torch.randn(7, 5))


# -- patch masks and mixing --------------------------------------------------------------------------
def test_masks_are_patchwise_differ_across_samples_and_are_reproducible():
    m = patch_mask(16, 8, 12, 4, 0.5, gen(0))
    assert m.shape == (16, 1, 8, 12) and m.dtype == torch.bool
    patches = m.view(16, 2, 4, 3, 4)  # [B, rows, p, cols, p]
    assert torch.equal(patches, patches[:, :, :1, :, :1].expand_as(patches))  # constant inside a patch
    per_sample = m.flatten(1)
    assert len({tuple(r.tolist()) for r in per_sample}) > 8  # drawn independently for every sample
    assert torch.equal(m, patch_mask(16, 8, 12, 4, 0.5, gen(0)))  # same generator seed: same masks
    assert not torch.equal(m, patch_mask(16, 8, 12, 4, 0.5, gen(1)))


@pytest.mark.parametrize("share", [0.1, 0.5, 0.85])
def test_masks_match_the_share_in_expectation(share):
    m = patch_mask(1024, 16, 16, 2, share, gen(7))  # 65 536 independent patches
    se = math.sqrt(share * (1 - share) / (1024 * 64))
    assert abs(m.float().mean().item() - share) < 5 * se
    # a 0-d tensor share (as the method passes it) gives the same draw
    assert torch.equal(m, patch_mask(1024, 16, 16, 2, torch.tensor(share), gen(7)))


def test_mask_extremes_and_bad_patch():
    assert not patch_mask(4, 4, 4, 2, 0.0, gen(0)).any()
    assert patch_mask(4, 4, 4, 2, 1.0, gen(0)).all()
    with pytest.raises(ShapeError, match="does not tile"):
        patch_mask(4, 6, 6, 4, 0.5, gen(0))


def test_mixing_takes_teacher_patches_and_student_gradients_elsewhere():
    s = torch.randn(3, 2, 4, 4, requires_grad=True)
    t = torch.randn(3, 2, 4, 4)
    mask = patch_mask(3, 4, 4, 2, 0.5, gen(4))
    mixed = mix_patches(s, t, mask)
    m = mask.expand_as(s)
    assert torch.equal(mixed[m], t[m]) and torch.equal(mixed[~m], s.detach()[~m])
    mixed.sum().backward()
    assert torch.equal(s.grad, (~m).float())
    with pytest.raises(ShapeError, match="same shape"):
        mix_patches(s, t[:, :1], mask)


def test_mask_seed_is_a_pure_function_of_seed_step_stage_rank():
    seeds = {mask_seed(s, n, i, r) for s in (0, 1) for n in range(50) for i in range(4) for r in range(2)}
    assert len(seeds) == 2 * 50 * 4 * 2 and all(0 <= v < 2 ** 63 for v in seeds)
    assert mask_seed(5, 3, 1) == mask_seed(5, 3, 1, 0)


# -- the method ------------------------------------------------------------------------------------
def shapes_batch(n=16, size=16, seed=0):
    from crossdistill.data import create_dataset

    ds = create_dataset("shapes", "train", num_classes=4, image_size=size, train_size=n, test_size=4, seed=seed)
    items = [ds[i] for i in range(n)]
    return {"input": torch.stack([it["input"] for it in items]), "label": torch.stack([it["label"] for it in items])}


def calibrated(name: str, num_classes: int = 4, seed: int = 1, x=None) -> torch.nn.Module:
    """A random network whose BN statistics are set on data, so that its eval-mode maps have a
    trained network's scale (a fresh BN in eval mode normalises nothing)."""
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(shapes_batch()["input"] if x is None else x)
    return net.eval()


def dpk_distiller(student_model="resnet8", teacher_model="resnet14", **opts):
    x = shapes_batch()["input"]
    torch.manual_seed(0)
    s = create_model(student_model, num_classes=4)
    return Distiller(s, calibrated(teacher_model), [build_method("dpk", **opts)],
                     task=create_task("classification", 4), example_input=x)


def capture(model, paths):
    out = {}
    for p in paths:
        model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: out.__setitem__(p, o))
    return out


def test_registered_and_listed(capsys):
    from crossdistill import cli

    assert METHODS.get("dpk") is DPK and DPK.default_student == DPK.default_teacher == "@stages"
    assert cli.main(["list", "methods"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("dpk "))
    assert "Qiu" in line


@pytest.mark.parametrize("direction", ["standard", "inverted"])
def test_loss_is_the_pure_loss_of_the_tapped_tensors(direction):
    d = dpk_distiller(projector=direction, schedule="fixed", share=0.4, T=3.0, kd_weight=0.7, feature_weight=2.0)
    term = d.terms[0]
    stages = ["layer1", "layer2", "layer3"]
    assert term.patches == [4, 2, 1]  # the same 4×4-pixel region at every stage of a 16 px input
    d.train()
    for _ in range(3):  # a few steps move the step counter (the masks' seed) and the BN statistics
        d(shapes_batch())
    d.eval()  # eval: the method's modules give the same values when called again; no state update
    b = shapes_batch(seed=3)
    s, t = capture(d.student, stages), capture(d.teachers["default"], stages)
    with torch.no_grad():
        _, parts = d(b)
        s_out, t_out = d.student(b["input"]), d.teachers["default"](b["input"])
        expected = 0.0
        for i, p in enumerate(stages):
            z_s, z_t = term.projectors[i](s[p], t[p])
            if direction == "standard":  # student → teacher space; the raw teacher map is the target
                assert z_s.shape[1] == t[p].shape[1] and torch.equal(z_t, t[p])
            else:  # teacher → student space through a semi-orthogonal map
                assert z_t.shape[1] == s[p].shape[1]
            g = torch.Generator().manual_seed(mask_seed(int(term.mask_seed), 3, i))
            mask = patch_mask(z_s.shape[0], z_s.shape[2], z_s.shape[3], term.patches[i], 0.4, g)
            loss_i = hint_loss(term.generators[i](mix_patches(z_s, z_t, mask)), z_t)
            assert_close(parts[f"dpk/loss/{i}"], loss_i)
            assert_close(parts[f"dpk/cka/{i}"], linear_cka(s[p], t[p]))
            assert_close(parts[f"dpk/share/{i}"], torch.tensor(0.4))
            expected = expected + loss_i
        expected = 2.0 * expected + 0.7 * kd_loss(s_out, t_out, 3.0)
    assert_close(parts["dpk"], expected, rtol=1e-5, atol=1e-6)
    assert_close(parts["dpk/kd"], kd_loss(s_out, t_out, 3.0))


def test_the_share_follows_the_gap_one_minus_smoothed_cka():
    """The curriculum's direction: a growing gap (falling CKA) raises the teacher share, a closing
    gap lowers it; share = 1 − EMA(CKA) with EMA r ← m·r + (1 − m)·CKA from r = cka_init."""
    g = gen(5)
    term = DPK(cka_momentum=0.8, cka_init=0.5, kd_weight=0.0)
    maps = torch.randn(64, 4, 2, 2, generator=g)
    logits = torch.zeros(64, 3)
    term.build([maps, logits], [maps, logits])
    term.train()

    def step(s_map, t_map):
        parts = term([s_map, logits], [t_map, logits], {})
        return float(parts["share/0"]), float(parts["cka/0"])

    share, cka = step(maps, maps)  # identical maps: CKA = 1
    assert cka == pytest.approx(1.0) and share == pytest.approx(1 - (0.8 * 0.5 + 0.2 * 1.0))
    closing = [share] + [step(maps, 3 * maps)[0] for _ in range(5)]
    assert all(b < a for a, b in zip(closing, closing[1:])), closing  # gap closed: less teacher
    growing = []
    for _ in range(6):  # unrelated maps: CKA far below the smoothed value
        other = torch.randn(64, 4, 2, 2, generator=g)
        share, cka = step(maps, other)
        assert cka < 0.5
        growing.append(share)
    assert all(b > a for a, b in zip(growing, growing[1:])), growing  # gap grew: more teacher
    assert_close(term.shares(), 1 - term.cka_ema)
    term.eval()
    before = term.cka_ema.clone()
    step(maps, maps)
    assert torch.equal(term.cka_ema, before) and term._step == 12  # evaluation changes no state


def test_fixed_and_linear_schedules():
    maps, logits = torch.randn(8, 4, 4, 4), torch.zeros(8, 3)
    fixed = DPK(schedule="fixed", share=0.3)
    fixed.build([maps, logits], [maps, logits])
    fixed.train()
    assert float(fixed([maps, logits], [maps, logits], {})["share/0"]) == pytest.approx(0.3)
    linear = DPK(schedule="linear", share_start=0.8, share_end=0.2)
    linear.build([maps, logits], [maps, logits])
    seen = []
    for epoch in range(4):
        linear.on_epoch_start(epoch, 4)
        seen.append(float(linear([maps, logits], [maps, logits], {})["share/0"]))
    assert seen == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_the_mask_uses_the_share_no_teacher_patch_at_zero_no_student_patch_at_one():
    d0 = dpk_distiller(schedule="fixed", share=0.0, kd_weight=0.0)
    d1 = dpk_distiller(schedule="fixed", share=1.0, kd_weight=0.0)
    b = shapes_batch()
    loss0, _ = d0(b)
    d0.zero_grad()
    d0.terms[0](*d0._term_inputs(0, *d0._forward_networks(b, [True])), b)["loss"].backward()
    assert d0.student.layer1[0].conv1.weight.grad.abs().sum() > 0
    d1.zero_grad()
    d1.terms[0](*d1._term_inputs(0, *d1._forward_networks(b, [True])), b)["loss"].backward()
    # only teacher patches: the generator sees no student feature, the student gets no gradient
    assert d1.student.layer1[0].conv1.weight.grad is None or d1.student.layer1[0].conv1.weight.grad.abs().sum() == 0


def test_inverted_alignment_does_not_collapse_where_an_unprotected_map_does():
    """Inverted: the target P(t) is made by a trainable map; unconstrained, P → 0 and G → 0 drive the
    loss to 0 (the target's RMS falls towards 0). The semi-orthogonal P cannot: with C_s < C_t it keeps
    at least the energy of the teacher's weakest C_s directions. For t = ReLU(N(0, 1)) i.i.d. per
    channel, E[t tᵀ] = σ²I + μ²11ᵀ with μ = 1/√(2π), σ² = 1/2 − μ², so RMS(P t) ≥ σ."""
    mu = 1 / math.sqrt(2 * math.pi)
    sigma = math.sqrt(0.5 - mu ** 2)
    c_s, c_t = 8, 16

    def rms_after_training(protected: bool) -> float:
        torch.manual_seed(0)
        term = DPK(projector="inverted", schedule="fixed", share=0.5, kd_weight=0.0, patch_size=2)
        logits = torch.zeros(32, 3)
        term.build([torch.randn(32, c_s, 8, 8), logits], [torch.randn(32, c_t, 8, 8), logits])
        proj = term.projectors[0].map
        if not protected:  # the same map, the same start, without the constraint
            parametrize.remove_parametrizations(proj, "weight", leave_parametrized=True)
        opt = torch.optim.SGD(term.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        g = gen(1)
        term.train()
        for _ in range(600):
            s_map = F.relu(torch.randn(32, c_s, 8, 8, generator=g))
            t_map = F.relu(torch.randn(32, c_t, 8, 8, generator=g))
            loss = term([s_map, logits], [t_map, logits], {})["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return proj(F.relu(torch.randn(256, c_t, 8, 8, generator=g))).pow(2).mean().sqrt().item()

    assert rms_after_training(protected=False) < 0.2 * sigma  # collapsing (and still falling)
    assert rms_after_training(protected=True) > 0.95 * sigma  # bounded away from 0


def test_semi_orthogonal_map_is_an_isometry_when_the_student_is_wider():
    term = DPK(projector="inverted")
    logits = torch.zeros(4, 3)
    term.build([torch.randn(4, 12, 4, 4), logits], [torch.randn(4, 5, 4, 4), logits])
    w = term.projectors[0].map.weight.flatten(1)  # [12, 5]: orthonormal columns
    assert_close(w.t() @ w, torch.eye(5), atol=1e-5, rtol=0)
    z = torch.randn(3, 5, 4, 4)
    assert_close(term.projectors[0].map(z).pow(2).sum(1), z.pow(2).sum(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="projector_kind=linear"):
        DPK(projector="inverted", projector_kind="conv_bn")


def test_few_steps_on_built_in_data_lower_the_loss():
    d = dpk_distiller(schedule="fixed", share=0.5)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=3e-3)
    d.train()
    values = []
    for _ in range(15):
        loss, parts = d(shapes_batch())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(float(parts["dpk"]))
    assert sum(values[-3:]) < 0.8 * sum(values[:3]), values


def test_state_dict_carries_the_gap_the_step_and_the_mask_seed():
    d = dpk_distiller()
    d.train()
    for _ in range(4):
        d(shapes_batch())
    term = d.terms[0]
    assert term._step == 4 and int(term.steps) == 4
    state = d.state_dict()
    assert {"terms.0.cka_ema", "terms.0.steps", "terms.0.mask_seed"} <= set(state)
    fresh = dpk_distiller()
    fresh.terms[0].mask_seed.fill_(12345)  # as if built under another seed
    fresh.load_state_dict(state)
    other = fresh.terms[0]
    assert other._step == 4 and other._seed == term._seed and torch.equal(other.cka_ema, term.cka_ema)
    b = shapes_batch(seed=2)
    d.train(), fresh.train()
    assert_close(d(b)[1]["dpk"], fresh(b)[1]["dpk"])  # same masks, same loss


def test_build_errors():
    with pytest.raises(ConfigError, match="patch_size 3 does not divide stage 0's 16×16"):
        dpk_distiller(patch_size=3)
    with pytest.raises(ConfigError, match="one per stage"):
        dpk_distiller(patch_size=[4, 2])
    with pytest.raises(ConfigError, match="2 student maps but 3 teacher maps"):
        dpk_distiller(student=["layer1", "layer2"])
    with pytest.raises(ShapeError, match="not \\[B, C, H, W\\]"):
        dpk_distiller(student="@pooled", teacher="@pooled")
    assert dpk_distiller(patch_size=[2, 1, 1]).terms[0].patches == [2, 1, 1]


def test_cka_can_be_measured_on_the_first_samples_of_a_large_batch():
    g = gen(6)
    s_map, t_map, logits = torch.randn(32, 4, 4, 4, generator=g), torch.randn(32, 6, 4, 4, generator=g), torch.zeros(32, 3)
    term = DPK(cka_batch=8, kd_weight=0.0)
    term.build([s_map, logits], [t_map, logits])
    parts = term([s_map, logits], [t_map, logits], {})
    assert_close(parts["cka/0"], linear_cka(s_map[:8], t_map[:8]))


# -- through the CLI: bad input, resume, export, recipes ---------------------------------------------
def tiny(out) -> str:
    return tiny_run_yaml(
        out, name="dpk-test", seed=3, data={"options": {"train_size": 128}},
        teachers={"default": {"model": "resnet14", "seed": 1}},
        distill={"task_weight": 1.0, "terms": [{"method": "dpk", "weight": 1.0}]},
        train={"epochs": 3, "max_steps_per_epoch": None, "threads": 1, "schedule": {"name": "cosine"},
               "optimizer": {"name": "sgd", "lr": 0.05}, "log_every": 1, "checkpoint_every_steps": 3})

BAD = [
    ("unknown-stage", ["distill.terms.0.student=[layer1, layer9, layer3]"], "student has no layer 'layer9'"),
    ("patch-does-not-divide", ["distill.terms.0.patch_size=3"], "patch_size 3 does not divide stage 0's 16×16"),
    ("share-above-one", ["distill.terms.0.schedule=fixed", "distill.terms.0.share=1.5"], "bad value for 'share' (1.5)"),
    ("share-below-zero", ["distill.terms.0.share_start=-0.1"], "bad value for 'share_start' (-0.1)"),
    ("cka-init-outside", ["distill.terms.0.cka_init=2"], "less than or equal to 1"),
    ("no-teacher", ["teachers={}"], "method 'dpk' reads teacher 'default', but the teachers are: none"),
    ("bad-schedule", ["distill.terms.0.schedule=cosine"], "bad value for 'schedule'"),
]


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, overrides, expected):
    from test_bad_input import assert_one_error_line, snapshot

    from crossdistill import cli

    cfg = tmp_path / "dpk.yaml"
    cfg.write_text(tiny(tmp_path / "run"))
    before = snapshot(tmp_path)
    rc = cli.main(["train", str(cfg), *overrides])
    assert_one_error_line(rc, capsys.readouterr().err, expected)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["patch-does-not-divide", "share-above-one"])
def test_bad_input_as_a_real_process(tmp_path, case):
    import subprocess
    import sys

    from test_bad_input import assert_one_error_line

    overrides, expected = next(c[1:] for c in BAD if c[0] == case)
    cfg = tmp_path / "dpk.yaml"
    cfg.write_text(tiny(tmp_path / "run"))
    res = subprocess.run([sys.executable, "-m", "crossdistill.cli", "train", str(cfg), *overrides],
                         capture_output=True, text=True, timeout=180)
    assert_one_error_line(res.returncode, res.stderr, expected)
    assert not (tmp_path / "run").exists()


def test_killed_and_resumed_run_gives_the_same_student_and_log(tmp_path):
    import json

    from test_resume import records, run_and_kill, train_cmd

    from crossdistill import cli
    from crossdistill.engine.checkpoint import load_checkpoint

    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    (tmp_path / "ref.yaml").write_text(tiny(ref_out))
    (tmp_path / "k.yaml").write_text(tiny(out))
    assert cli.main(["train", str(tmp_path / "ref.yaml")]) == 0

    def after_mid_epoch_checkpoint(o):  # step 9's checkpoint (epoch 2 of 3, 8 steps each) is on disk
        path = o / "checkpoint.pt"
        return path.exists() and (o / "metrics.jsonl").exists() and \
            any(json.loads(line).get("step") == 10 for line in (o / "metrics.jsonl").read_text().splitlines()
                if line.strip().endswith("}"))

    run_and_kill(train_cmd(tmp_path / "k.yaml"), out, after_mid_epoch_checkpoint, slow_save=False)
    mid = load_checkpoint(out / "checkpoint.pt")
    assert 0 < mid["position"]["global_step"] < 24 and int(mid["distiller"]["terms.0.steps"]) == mid["position"]["global_step"]
    assert cli.main(["train", str(tmp_path / "k.yaml"), "--resume"]) == 0

    ref = torch.load(ref_out / "student.pt", weights_only=True)["student"]
    got = torch.load(out / "student.pt", weights_only=True)["student"]
    assert ref.keys() == got.keys()
    assert not [k for k in ref if not torch.equal(ref[k], got[k])]
    # the DPK state and every logged CKA / share / per-stage loss are those of the uninterrupted run
    c_ref, c_got = load_checkpoint(ref_out / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    for k in ("terms.0.cka_ema", "terms.0.steps", "terms.0.mask_seed"):
        assert torch.equal(c_ref["distiller"][k], c_got["distiller"][k]), k
    assert records(out) == records(ref_out)
    logged = records(ref_out)[0]
    assert {"dpk/cka/0", "dpk/share/2", "dpk/loss/1", "dpk/kd"} <= set(logged)

    # the exported student is the bare model: no projector, mask or generation block in it
    model = create_model("resnet8", num_classes=4)
    assert set(got) == set(model.state_dict())
    model.load_state_dict(got)  # strict
    assert not any("generators" in k or "projectors" in k or "cka" in k for k in got)


FAKE_DATA = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.device=cpu", "train.precision=fp32",
             "train.progress=false", "train.channels_last=false", "data.num_workers=0"]


@pytest.mark.parametrize("pair,teacher", [("resnet32x4_resnet8x4", "resnet32x4"), ("wrn_40_2_wrn_16_2", "wrn_40_2")])
def test_cifar_recipes_run_a_few_steps_on_fake_data(tmp_path, pair, teacher):
    """The shipped recipe, with the data swapped for built-in shapes and a random teacher."""
    from crossdistill import cli
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config

    recipe = RECIPES / f"cifar100/{pair}/dpk.yaml"
    term = load_config(recipe).distill.terms[0]
    assert term.method == "dpk" and (term.model_extra or {}).get("schedule") == "cka"
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), f"output_dir={out}", "data.name=shapes", "data.root=null",
                     "data.options={num_classes: 100, image_size: 32, train_size: 16, test_size: 8}",
                     "data.batch_size=8", "data.eval_batch_size=8",
                     f"teachers.default={{model: {teacher}, num_classes: 100, random_init: true}}", *FAKE_DATA]) == 0
    logged = [json_line for json_line in (out / "metrics.jsonl").read_text().splitlines() if '"dpk/cka/2"' in json_line]
    assert logged and (out / "student.pt").exists()


def test_imagenet_recipe_runs_a_few_steps_on_a_fake_image_folder(tmp_path):
    from PIL import Image

    from crossdistill import cli
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config

    recipe = RECIPES / "imagenet/resnet34_resnet18_dpk.yaml"
    cfg = load_config(recipe)
    assert cfg.data.name == "imagefolder" and cfg.student.options == {"stem": "imagenet"}
    assert cfg.teachers["default"].weights and cfg.teachers["default"].model == "ResNet34"
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for k, cls in enumerate(("n01", "n02", "n03")):
            for j in range(2):
                pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
                path = tmp_path / "imagenet" / split / cls / f"{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    torch.manual_seed(0)
    weights = tmp_path / "resnet34.pt"
    torch.save(create_model("ResNet34", num_classes=3, stem="imagenet").state_dict(), weights)
    out = tmp_path / "run"
    assert cli.main(["train", str(recipe), f"output_dir={out}", f"data.root={tmp_path / 'imagenet'}",
                     "data.options.image_size=64", "data.batch_size=3", "data.eval_batch_size=3",
                     f"teachers.default.weights={weights}", "teachers.default.num_classes=3", *FAKE_DATA]) == 0
    assert '"dpk/share/3"' in (out / "metrics.jsonl").read_text()  # four stages, automatic patches


# -- the reproduction ----------------------------------------------------------------------------------
def fashion_mnist_installed() -> bool:
    from crossdistill.data.fashion_mnist import SYSTEM_DIR

    return any((SYSTEM_DIR / f"t10k-images-idx3-ubyte{ext}").exists() for ext in ("", ".gz"))


@pytest.mark.skipif(not fashion_mnist_installed(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_reproduce_dpk_teacher_size_writes_table_csv_plot_and_spearman(tmp_path, monkeypatch):
    import csv
    import json

    from crossdistill.cli import main
    from crossdistill.lab.reproduce import dpk as experiment

    # teachers of one depth and growing width (the reproduction's family), KD from the teacher cache
    tiny = dict(subset=48, epochs=1, teacher_epochs=2, teachers=("resnet8-w4", "resnet8-w8", "resnet8-w16"),
                seeds=(0, 1), batch_size=16, data_options={"image_size": 16}, kd_cache_views=2,
                teacher_train={"eval_every": 1}, train={"precision": "fp32", "threads": 1})
    monkeypatch.setitem(experiment.SCALES, "quick", tiny)
    assert main(["reproduce", "dpk-teacher-size", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "teacher acc" in md and "student + KD" in md and "student + DPK" in md and "teacher size vs student" in md
    assert "over 2 seeds" in md and sum(line.startswith("| resnet") for line in md.splitlines()) == 3
    share_cells = [line.split("|")[-2].strip() for line in md.splitlines() if line.startswith("| resnet")]
    assert all(len(c.split(" / ")) == 3 and all(0 <= float(v) <= 1 for v in c.split(" / ")) for c in share_cells)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 1 + 3 * 2 and all(r["n_seeds"] == "2" for r in rows)
    assert all(0 <= float(r["teacher_acc"]) <= 1 for r in rows if r["teacher"])
    # parameters grow with width: the size axis is the width axis
    sizes = [int(r["teacher_params"]) for r in rows if r["teacher"] and r["method"] == "KD"]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert (tmp_path / "results.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "spearman.json").read_text())
    assert set(stats) == {"KD", "DPK", "teacher_acc_rises_strictly"}
    assert all({"rho_size", "p_size", "rho_acc", "p_acc"} <= set(stats[m]) for m in ("KD", "DPK"))
    # each teacher was trained once, every student run read one of them; KD's teachers were cached once each
    assert sorted(p.name for p in (tmp_path / "teachers").iterdir()) == ["resnet8-w16", "resnet8-w4", "resnet8-w8"]
    assert len(list(tmp_path.glob("runs/*/summary.json"))) == 2 * (1 + 3 * 2)
    assert sorted(p.name for p in (tmp_path / "teacher_cache").iterdir()) == ["resnet8-w16", "resnet8-w4", "resnet8-w8"]
    assert all((tmp_path / "teacher_cache" / n / "manifest.json").exists() for n in ("resnet8-w4", "resnet8-w16"))


def test_the_width_family_is_the_standard_resnet_at_width_16():
    from crossdistill.lab.reproduce.dpk import parameter_count, teacher_model

    assert teacher_model("resnet14-w32") == {"name": "resnet_width", "options": {"depth": 14, "width": 32}}
    assert parameter_count("resnet14-w16") == parameter_count("resnet14")
    assert parameter_count("resnet14-w8") < parameter_count("resnet14-w16") < parameter_count("resnet14-w32")


def test_spearman_on_known_ranks():
    from crossdistill.lab.reproduce.dpk import spearman

    assert spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])[0] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])[0] == pytest.approx(-1.0)
    # one swapped pair out of five: ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/120 = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 2, 4, 3, 5])[0] == pytest.approx(0.9)
    assert math.isnan(spearman([1, 2], [3, 4])[0])
    # exact two-sided p for n = 5: a perfect (or perfectly reversed) ranking is 2 of the 120 orderings
    assert spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])[1] == pytest.approx(2 / 120)
    # ρ = 0.9 or more in absolute value: the identity, the one-adjacent-swap orderings (4) and their reverses
    assert spearman([1, 2, 3, 4, 5], [1, 2, 4, 3, 5])[1] == pytest.approx(10 / 120)


def test_reproduce_without_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    from test_bad_input import assert_one_error_line

    from crossdistill.cli import main
    from crossdistill.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CROSSDISTILL_DATA", str(tmp_path / "none"))
    rc = main(["reproduce", "dpk-teacher-size", "--quick", "--out", str(tmp_path / "out")])
    assert_one_error_line(rc, capsys.readouterr().err, "apt-get install dataset-fashion-mnist")
    assert not (tmp_path / "out").exists()


# -- DDP: the smoothed gap is the same on every rank -------------------------------------------------
def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os
    import sys

    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(__file__))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        from helpers import TinyNet, toy_batch

        torch.manual_seed(0)  # same init and the same mask seed on both ranks
        student, teacher = TinyNet(width=4), TinyNet(width=8)
        d = Distiller(torch.nn.parallel.DistributedDataParallel(student), teacher, [build_method("dpk")],
                      task=create_task("classification", 5), example_input=toy_batch()["input"])
        d.train()
        batch = toy_batch(seed=rank)  # different data per rank
        with torch.no_grad():
            s_maps, t_maps = d._term_inputs(0, *d._forward_networks(batch, [True]))
            local = torch.stack([linear_cka(a, b) for a, b in zip(s_maps[:-1], t_maps[:-1])])
        loss, _ = d(batch)
        loss.backward()
        torch.save({"local": local, "ema": d.terms[0].cka_ema.clone(), "seed": d.terms[0]._seed},
                   f"{out}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_share_one_smoothed_gap(tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import _free_port

    mp.start_processes(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.allclose(r0["local"], r1["local"])  # each rank measured its own batch
    expected = 0.9 * 0.5 + 0.1 * (r0["local"] + r1["local"]) / 2
    assert_close(r0["ema"], expected) and assert_close(r1["ema"], expected)
    assert r0["seed"] == r1["seed"] and mask_seed(r0["seed"], 0, 0, 0) != mask_seed(r0["seed"], 0, 0, 1)
