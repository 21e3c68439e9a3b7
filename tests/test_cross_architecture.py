"""Across architecture families (issue 21): token sides, the tokens ↔ map step, DeiT's distillation
token, OFA. Transformers here are ``helpers.TinyViT`` (the zoo's ViT conventions), CNNs ``TinyNet``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from crossdistill import Distiller
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.losses import at_loss, deit_hard_loss, deit_soft_loss, hint_loss, ofa_loss
from crossdistill.methods import AT, KD, OFA, DeiT, FitNet
from crossdistill.projectors import Projector, pool_to_vector
from crossdistill.tasks import create_task
from crossdistill.tokens import map_to_tokens, token_grid, tokens_to_map

from helpers import TinyNet, TinyViT, toy_batch

D64 = torch.float64


# -- the reshapes ---------------------------------------------------------------------------------
def test_tokens_to_map_drops_prefix_tokens_and_reads_the_grid_row_major():
    b, c, side = 2, 3, 4
    patches = torch.arange(b * side * side * c, dtype=torch.float32).view(b, side * side, c)
    for prefix in (0, 1, 2):
        tokens = torch.cat([torch.full((b, prefix, c), -1.0), patches], 1)
        assert token_grid(tokens.shape[1]) == (prefix, side)
        m = tokens_to_map(tokens)
        assert m.shape == (b, c, side, side)
        # token (row i, column j) of the patch grid is pixel (i, j) of the map
        assert torch.equal(m[1, :, 2, 3], patches[1, 2 * side + 3])
        assert torch.equal(map_to_tokens(m), patches)


def test_a_non_square_grid_is_refused_in_one_line():
    with pytest.raises(ShapeError, match="@token_map"):
        tokens_to_map(torch.zeros(1, 128, 4))  # 8×16 patches: no square grid


def test_pool_to_vector_averages_tokens_instead_of_flattening_them():
    x = torch.randn(2, 5, 3)
    assert_close(pool_to_vector(x), x.mean(1))


# -- projectors on tokens -------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["standard", "inverted"])
def test_tokens_meet_tokens_through_a_linear_map_over_channels(direction):
    s, t = torch.randn(3, 17, 8), torch.randn(3, 17, 12)
    p = Projector(s.shape[1:], t.shape[1:], direction, kind="linear")
    linear = p.map
    assert isinstance(linear, torch.nn.Linear) and linear.weight.numel() == 8 * 12  # not N·C wide
    z_s, z_t = p(s, t)
    assert z_s.shape == z_t.shape and z_s.shape[:2] == (3, 17)
    if direction == "standard":
        assert_close(z_s, s @ linear.weight.T)
    else:
        assert_close(z_t, t @ linear.weight.T)


@pytest.mark.parametrize("direction", ["standard", "inverted"])
def test_vit_tokens_student_meets_a_cnn_map_on_the_student_grid(direction):
    s = torch.randn(2, 1 + 16, 8)           # class token + 4×4 patches
    t = torch.randn(2, 6, 8, 8)             # a CNN map at twice the resolution
    p = Projector(s.shape[1:], t.shape[1:], direction, kind="linear")
    z_s, z_t = p(s, t)
    assert z_s.shape == z_t.shape == (2, 16, 8 if direction == "inverted" else 6)
    # the teacher's map was resized to the student's 4×4 grid (area = 2×2 average) and flattened
    t_small = map_to_tokens(F.avg_pool2d(t, 2))
    expected_t = t_small if direction == "standard" else t_small @ p.map.weight.T
    assert_close(z_t, expected_t)
    assert_close(z_s, s[:, 1:] if direction == "inverted" else s[:, 1:] @ p.map.weight.T)


@pytest.mark.parametrize("direction", ["standard", "inverted"])
def test_cnn_map_student_meets_vit_tokens_as_a_map(direction):
    s = torch.randn(2, 6, 8, 8)
    t = torch.randn(2, 2 + 16, 5)            # class + distillation token + 4×4 patches
    p = Projector(s.shape[1:], t.shape[1:], direction, kind="conv_bn")
    z_s, z_t = p(s, t)
    assert z_s.shape == z_t.shape == ((2, 5, 8, 8) if direction == "standard" else (2, 6, 8, 8))


def test_tokens_with_different_counts_compare_their_patch_grids():
    s, t = torch.randn(2, 1 + 16, 4), torch.randn(2, 2 + 64, 4)
    z_s, z_t = Projector(s.shape[1:], t.shape[1:], "identity")(s, t)
    assert z_s.shape == z_t.shape == (2, 16, 4)
    assert_close(z_t, map_to_tokens(F.avg_pool2d(tokens_to_map(t), 2)))


def test_token_projector_readings_vkd_needs():
    """An orthogonal linear map over the channels, no bias, and BN without affine on tokens."""
    s, t = torch.randn(4, 17, 8), torch.randn(4, 17, 12)
    p = Projector(s.shape[1:], t.shape[1:], "standard", options={"orthogonal": True, "norm": "batchnorm"})
    w = p.weight_matrix()
    assert w.shape == (12, 8)
    assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)  # semi-orthogonal columns
    z_s, z_t = p(s, t)
    assert z_s.shape == z_t.shape == (4, 17, 12)
    assert_close(z_t.mean(dim=(0, 1)), torch.zeros(12), atol=1e-5, rtol=0)  # normalised per channel


# -- the feature losses on converted maps ----------------------------------------------------------
def test_at_and_hint_losses_read_tokens_as_their_patch_map():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 1 + 16, 8, generator=g, dtype=D64)
    cnn = torch.randn(2, 5, 4, 4, generator=g, dtype=D64)
    grid = tokens_to_map(tokens)
    assert_close(at_loss(tokens, cnn), at_loss(grid, cnn))
    # by hand: attention = normalised channel-mean of squares over the 16 positions
    a_s = F.normalize(grid.pow(2).mean(1).flatten(1), dim=1)
    a_t = F.normalize(cnn.pow(2).mean(1).flatten(1), dim=1)
    assert_close(at_loss(tokens, cnn), (a_s - a_t).pow(2).mean())
    # the hint loss on the converted map is the element-wise MSE of the patch tokens
    other = torch.randn(2, 8, 4, 4, generator=g, dtype=D64)
    assert_close(hint_loss(grid, other), (tokens[:, 1:] - map_to_tokens(other)).pow(2).mean())


# -- sides --------------------------------------------------------------------------------------------
def test_token_aliases_and_raw_block_outputs_resolve():
    from crossdistill.distiller import resolve_side

    vit = TinyViT(distilled=True)
    assert resolve_side(vit, "@cls", "student") == ["cls_pool"]
    assert resolve_side(vit, "@tokens", "student") == ["token_pool"]
    assert resolve_side(vit, "@token_map", "student") == ["token_grid"]
    assert resolve_side(vit, "@dist_head", "student") == ["head_dist"]
    with pytest.raises(ConfigError, match="declares no token_map_layer") as e:
        resolve_side(TinyNet(), "@token_map", "teacher 'default'")
    assert "\n" not in str(e.value)
    x = torch.randn(2, 3, 16, 16)
    d = Distiller(vit, TinyNet(), [FitNet(student="@cls", teacher="@pooled", projector="standard", projector_kind="linear"),
                                   FitNet(student="@tokens", teacher="@pooled", projector="inverted", projector_kind="linear"),
                                   AT(student="@token_map", teacher="@stage:2"),
                                   AT(student="blocks.0", teacher="@stage:2")], example_input=x)
    loss, parts = d(toy_batch(2, size=16))  # the three token views and a raw [B, N, C] block output
    assert torch.isfinite(loss) and set(parts) >= {"fitnet", "fitnet_1", "at", "at_1"}
    s_feats, _ = d._forward_networks(toy_batch(2, size=16), [True] * 4)
    shapes = {p: tuple(v.shape) for p, v in next(iter(s_feats.values())).items() if p != "output"}
    assert shapes == {"cls_pool": (2, 16), "token_pool": (2, 16), "token_grid": (2, 16, 4, 4), "blocks.0": (2, 18, 16)}  # 2 prefix tokens


# -- FitNet / AT across CNN ↔ ViT: a few steps lower the term ---------------------------------------
def _steps(d, part, n=12, lr=3e-3):
    opt = torch.optim.Adam(d.trainable_parameters(), lr=lr)
    d.train()
    batch = toy_batch(8, size=16)
    values = []
    for _ in range(n):
        opt.zero_grad()
        loss, parts = d(batch)
        loss.backward()
        opt.step()
        values.append(parts[part].item())
    return values


@pytest.mark.parametrize("student_vit", [True, False])
@pytest.mark.parametrize("projector", ["standard", "inverted"])
def test_fitnet_between_cnn_maps_and_vit_tokens_trains(student_vit, projector):
    torch.manual_seed(0)
    student, teacher = (TinyViT(), TinyNet()) if student_vit else (TinyNet(), TinyViT())
    d = Distiller(student, teacher, [FitNet(student="@stage:1", teacher="@stage:1", projector=projector)],
                  example_input=toy_batch(2, size=16)["input"])
    values = _steps(d, "fitnet")
    assert values[-1] < 0.9 * values[0], values


def test_at_from_a_cnn_teacher_to_vit_tokens_trains():
    torch.manual_seed(0)
    d = Distiller(TinyViT(), TinyNet(), [AT(student="@stages", teacher=["@stage:1", "@stage:2"])],
                  example_input=toy_batch(2, size=16)["input"])
    values = _steps(d, "at", lr=1e-2)
    assert values[-1] < 0.9 * values[0], values


# -- DeiT ---------------------------------------------------------------------------------------------
def test_deit_losses_match_the_official_formulas():
    """facebookresearch/deit ``losses.py`` (DistillationLoss): soft = ``F.kl_div(log_softmax(s/T),
    log_softmax(t/T), reduction='sum', log_target=True) · T² / s.numel()``; hard =
    ``F.cross_entropy(s, t.argmax(1))``. Written out here with explicit sums."""
    g = torch.Generator().manual_seed(1)
    s0 = torch.randn(4, 6, generator=g, dtype=D64) * 2
    te = torch.randn(4, 6, generator=g, dtype=D64) * 2
    for T in (1.0, 3.0):
        s = s0.clone().requires_grad_(True)
        p = torch.exp(te / T) / torch.exp(te / T).sum(1, keepdim=True)
        q = torch.exp(s / T) / torch.exp(s / T).sum(1, keepdim=True)
        expected = (p * (torch.log(p) - torch.log(q))).sum() * T * T / 24
        got = deit_soft_loss(s, te, T)
        assert_close(got, expected, atol=1e-10, rtol=1e-8)
        (g1,) = torch.autograd.grad(got, s)
        (g2,) = torch.autograd.grad(expected, s)
        assert_close(g1, g2, atol=1e-10, rtol=1e-8)
        # the closed-form gradient: T/(B·K) · (q − p)
        assert_close(g1, (q - p).detach() * T / 24, atol=1e-10, rtol=1e-8)
    s = s0.clone().requires_grad_(True)
    hard = te.argmax(1)
    q = torch.exp(s) / torch.exp(s).sum(1, keepdim=True)
    expected = -torch.log(q[torch.arange(4), hard]).mean()
    got = deit_hard_loss(s, te)
    assert_close(got, expected, atol=1e-10, rtol=1e-8)
    (g1,) = torch.autograd.grad(got, s)
    assert_close(g1, (q - F.one_hot(hard, 6)).detach() / 4, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("distillation", ["hard", "soft"])
def test_deit_trains_the_distillation_head(distillation):
    torch.manual_seed(0)
    student = TinyViT(distilled=True)
    d = Distiller(student, TinyNet(), [DeiT(distillation=distillation)], example_input=toy_batch(2, size=16)["input"])
    assert d.plans[0].student_paths == ["head_dist"]
    head_before = student.head.weight.detach().clone()
    values = _steps(d, "deit", lr=3e-3)
    assert values[-1] < 0.9 * values[0], values
    assert torch.equal(student.head.weight, head_before)  # the class head gets no distillation gradient


def test_deit_needs_a_distilled_student():
    with pytest.raises(ConfigError, match="dist_head"):
        Distiller(TinyViT(), TinyNet(), [DeiT()], example_input=toy_batch(2, size=16)["input"])


# -- OFA ----------------------------------------------------------------------------------------------
def _official_ofa(logits_student, logits_teacher, target_mask, eps, temperature):
    # Hao840/OFAKD distillers/ofa.py, ofa_loss, written out term by term
    pred_student = torch.exp(logits_student / temperature) / torch.exp(logits_student / temperature).sum(1, keepdim=True)
    pred_teacher = torch.exp(logits_teacher / temperature) / torch.exp(logits_teacher / temperature).sum(1, keepdim=True)
    prod = (pred_teacher + target_mask) ** eps
    return torch.sum(-(prod - target_mask) * torch.log(pred_student), dim=-1).mean()


@pytest.mark.parametrize("eps,T", [(1.0, 1.0), (1.5, 1.0), (1.5, 2.0), (0.7, 1.0)])
def test_ofa_loss_matches_the_official_formula(eps, T):
    """Hao840/OFAKD ``distillers/ofa.py`` (``ofa_loss``): value and gradient."""
    g = torch.Generator().manual_seed(2)
    s0 = torch.randn(5, 7, generator=g, dtype=D64) * 2
    te = torch.randn(5, 7, generator=g, dtype=D64) * 2
    y = torch.tensor([0, 3, 6, 3, 1])
    s1, s2 = s0.clone().requires_grad_(True), s0.clone().requires_grad_(True)
    got = ofa_loss(s1, te, y, eps, T)
    expected = _official_ofa(s2, te, F.one_hot(y, 7).to(D64), eps, T)
    assert_close(got, expected, atol=1e-10, rtol=1e-8)
    got.backward()
    expected.backward()
    assert_close(s1.grad, s2.grad, atol=1e-10, rtol=1e-8)


def test_ofa_loss_at_eps_one_is_cross_entropy_with_the_teachers_soft_targets():
    s, te = torch.tensor([[0.0, 1.0, 2.0]], dtype=D64), torch.tensor([[1.0, 0.0, 0.0]], dtype=D64)
    p = torch.softmax(te, 1)
    assert_close(ofa_loss(s, te, torch.tensor([2]), 1.0), -(p * torch.log_softmax(s, 1)).sum())
    # ε > 1: the target class's weight (1 + p_y)^ε − 1 grows above p_y, the others' p^ε shrink
    w_y = (1 + p[0, 2]) ** 2 - 1
    expected = -(w_y * torch.log_softmax(s, 1)[0, 2] + (p[0, :2] ** 2 * torch.log_softmax(s, 1)[0, :2]).sum())
    assert_close(ofa_loss(s, te, torch.tensor([2]), 2.0), expected)


@pytest.mark.parametrize("student_vit", [True, False])
def test_ofa_builds_exit_branches_for_the_students_layout_and_trains(student_vit):
    torch.manual_seed(0)
    student, teacher = (TinyViT(), TinyNet()) if student_vit else (TinyNet(), TinyViT())
    d = Distiller(student, teacher, [OFA()], task=create_task("classification", 5), task_weight=0.0,
                  example_input=toy_batch(2, size=16)["input"])
    branches = d.terms[0].branches
    assert len(branches) == len(student.feature_layers)
    first = branches[0][0]
    assert isinstance(first, torch.nn.TransformerEncoderLayer if student_vit else torch.nn.Sequential)
    values = _steps(d, "ofa", lr=3e-3)
    # at ε = 1 each of the (branches + logits) terms is bounded below by the teacher's entropy
    with torch.no_grad():
        p = torch.softmax(teacher(toy_batch(8, size=16)["input"]), 1)
        floor = (len(branches) + 1) * -(p * p.log()).sum(1).mean().item()
    assert values[-1] - floor < 0.8 * (values[0] - floor), (values, floor)
    # the branches are the method's, not the student's: the exported student is unchanged in layout
    assert not any(k.startswith("branches") for k in student.state_dict())


def test_ofa_refuses_sides_that_do_not_end_in_logits():
    with pytest.raises(ConfigError, match="last student side"):
        Distiller(TinyNet(), TinyViT(), [OFA(student="@stages")], example_input=toy_batch(2, size=16)["input"])


def test_kd_between_cnn_and_vit_needs_nothing_special():
    d = Distiller(TinyNet(), TinyViT(), [KD()], task=create_task("classification", 5),
                  example_input=toy_batch(2, size=16)["input"])
    loss, parts = d(toy_batch(4, size=16))
    assert torch.isfinite(loss) and "kd" in parts
