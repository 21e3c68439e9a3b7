"""Readings of Learning to Project: distances, projector options, projector weight decay, spectrum logs."""
import math

import pytest
import torch

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.losses import feature_distance, l2_distance, log_sum_distance, smooth_l1_distance
from crossdistill.methods import build_method
from crossdistill.projectors import Projector, ProjectorOptions, singular_value_summary
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch

A = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, 0.0]])
B = torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.0, 0.1]])


def test_l2_distance_is_the_mean_squared_residual():
    d = [(a - b) ** 2 for a, b in zip(A.flatten().tolist(), B.flatten().tolist())]
    assert math.isclose(float(l2_distance(A, B)), sum(d) / 6, rel_tol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_smooth_l1_distance_against_the_huber_formula(beta):
    def h(x):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta
    expected = sum(h(a - b) for a, b in zip(A.flatten().tolist(), B.flatten().tolist())) / 6
    assert math.isclose(float(smooth_l1_distance(A, B, beta)), expected, rel_tol=1e-6)


@pytest.mark.parametrize("alpha", [4.0, 2.0, 5.0])
def test_log_sum_distance_against_its_formula_and_gradient(alpha):
    res = [a - b for a, b in zip(A.flatten().tolist(), B.flatten().tolist())]
    total = sum(abs(r) ** alpha for r in res)
    a = A.clone().requires_grad_(True)
    loss = log_sum_distance(a, B, alpha)
    assert math.isclose(float(loss.detach()), math.log(total), rel_tol=1e-6)
    loss.backward()
    grad = [alpha * abs(r) ** (alpha - 1) * math.copysign(1.0, r) / total if r != 0 else 0.0 for r in res]
    assert torch.allclose(a.grad.flatten(), torch.tensor(grad), atol=1e-6)


def test_log_sum_distance_neither_overflows_nor_breaks_on_exact_ties():
    big = torch.full((4,), 1e12)
    assert torch.isfinite(log_sum_distance(big, -big))  # (2e12)^4 overflows float32; the log does not
    same = torch.randn(5)
    assert torch.isfinite(log_sum_distance(same, same))


def test_feature_distance_dispatches_and_refuses_unknown_names():
    assert torch.equal(feature_distance("l2", A, B), l2_distance(A, B))
    assert torch.equal(feature_distance("log_sum", A, B, alpha=3.0), log_sum_distance(A, B, 3.0))
    with pytest.raises(ConfigError, match="unknown distance"):
        feature_distance("l3", A, B)


def test_rank_one_projector_reports_one_nonzero_singular_value():
    p = Projector((6,), (10,), "inverted", "linear", {"log_singular_values": 6})
    u, v = torch.randn(6, 1), torch.randn(1, 10)
    with torch.no_grad():
        p.map.weight.copy_(u @ v)  # rank one by construction
    sv = p.singular_values()
    assert sv.shape == (6,)
    assert math.isclose(float(sv[0]), float(u.norm() * v.norm()), rel_tol=1e-5)
    assert float(sv[1:].abs().max()) < 1e-5 * float(sv[0])
    logs = p.spectrum_logs()
    assert float(logs["projector_rank"]) == 1.0
    assert math.isclose(float(logs["projector_erank"]), 1.0, rel_tol=1e-4)
    assert set(logs) == {f"projector_sv/{i}" for i in range(6)} | {"projector_erank", "projector_rank"}


def test_effective_rank_of_r_equal_singular_values_is_r():
    logs = singular_value_summary(torch.tensor([2.0, 2.0, 2.0, 0.0]), top=2)
    assert math.isclose(float(logs["projector_erank"]), 3.0, rel_tol=1e-5)
    assert float(logs["projector_rank"]) == 3.0 and set(logs) >= {"projector_sv/0", "projector_sv/1"}


@pytest.mark.parametrize("shape_s, shape_t", [((6,), (10,)), ((6, 4, 4), (10, 2, 2))])
def test_orthogonal_projector_is_semi_orthogonal_and_stays_so_when_trained(shape_s, shape_t):
    p = Projector(shape_s, shape_t, "inverted", "linear", {"orthogonal": True})
    opt = torch.optim.SGD(p.parameters(), lr=0.5)
    for _ in range(3):
        zs, zt = p(torch.randn(4, *shape_s), torch.randn(4, *shape_t))
        (zs - zt).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    w = p.weight_matrix()
    assert w.shape == (6, 10)
    assert torch.allclose(w @ w.t(), torch.eye(6), atol=1e-4)  # orthonormal rows: every σ = 1
    assert torch.allclose(p.singular_values(), torch.ones(6), atol=1e-4)


def test_batchnorm_reading_normalises_both_compared_tensors_without_parameters():
    p = Projector((6, 4, 4), (10, 4, 4), "standard", "linear", {"norm": "batchnorm"})
    zs, zt = p(torch.randn(8, 6, 4, 4) * 3 + 1, torch.randn(8, 10, 4, 4) * 5 - 2)
    for z in (zs, zt):
        assert z.shape == (8, 10, 4, 4)
        assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(10), atol=1e-5)
        assert torch.allclose(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(10), atol=1e-3)
    assert [n for n, _ in p.named_parameters()] == ["map.weight"]  # no affine parameters


def test_bad_projector_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="projector_options.norm"):
        build_method("fitnet", projector_options={"norm": "layer"})
    with pytest.raises(ConfigError, match="projector_options"):
        build_method("fitnet", projector_options={"orthogonl": True})
    with pytest.raises(ConfigError, match="weight_decay"):
        ProjectorOptions.coerce({"weight_decay": -1})


def _fitnet_distiller(**opts):
    torch.manual_seed(0)
    student, teacher = TinyNet(width=4), TinyNet(width=8)
    return Distiller(student, teacher.eval(), [build_method("fitnet", **opts)], task=create_task("classification", 5),
                     example_input=toy_batch()["input"])


def test_projector_weight_decay_reaches_the_optimiser_as_its_own_group(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import parse_config
    from crossdistill.engine.trainer import Trainer

    raw = {"output_dir": str(tmp_path / "t"),
           "data": {"name": "shapes", "batch_size": 8, "options": {"num_classes": 3, "image_size": 16, "train_size": 16,
                                                                  "test_size": 8}},
           "student": {"name": "resnet8"},
           "teachers": {"default": {"model": "resnet8", "num_classes": 3, "random_init": True}},
           "distill": {"terms": [{"method": "fitnet", "projector": "inverted", "projector_kind": "linear",
                                  "projector_options": {"weight_decay": 0.25}}]},
           "train": {"epochs": 1, "precision": "fp32", "optimizer": {"weight_decay": 1e-3}}}
    trainer = Trainer(build_run(parse_config(raw)))
    groups = trainer.optimizer.param_groups
    projector_params = {id(p) for p in trainer.distiller.terms[0].projector.parameters()}
    assert sorted(g["weight_decay"] for g in groups) == [1e-3, 0.25]
    decayed = next(g for g in groups if g["weight_decay"] == 0.25)
    assert {id(p) for p in decayed["params"]} == projector_params
    assert sum(len(g["params"]) for g in groups) == len(trainer.distiller.trainable_parameters())


def test_projector_weight_decay_shrinks_the_projector_only():
    d = _fitnet_distiller(projector="inverted", projector_kind="linear", projector_options={"weight_decay": 0.5})
    opt = torch.optim.SGD(d.parameter_groups(weight_decay=0.0), lr=0.1)
    w0 = d.terms[0].projector.map.weight.detach().clone()
    s0 = [p.detach().clone() for p in d.student.parameters()]
    for p in d.parameters():
        p.grad = torch.zeros_like(p)  # no loss gradient: only the decay moves anything
    opt.step()
    assert torch.allclose(d.terms[0].projector.map.weight, w0 * (1 - 0.1 * 0.5))
    assert all(torch.equal(a, b) for a, b in zip(s0, d.student.parameters()))


@pytest.mark.parametrize("opts", [
    dict(projector="inverted", projector_kind="linear", distance="log_sum", projector_options={"log_singular_values": 4}),
    dict(projector="standard", projector_kind="linear", distance="smooth_l1", projector_options={"log_singular_values": 4}),
    dict(projector="inverted", projector_kind="linear", projector_options={"norm": "batchnorm", "log_singular_values": 4}),
    dict(projector="inverted", projector_kind="conv_bn",
         projector_options={"orthogonal": True, "bias": True, "log_singular_values": 4}),
])
def test_fitnet_readings_train_and_lower_their_loss(opts):
    d = _fitnet_distiller(**opts)
    d.task = None
    opt = torch.optim.SGD(d.parameter_groups(), lr=0.05)
    batch = toy_batch()
    losses = []
    for _ in range(15):
        loss, parts = d(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert "fitnet/projector_erank" in parts and "fitnet/projector_sv/0" in parts


def test_every_method_with_a_projector_takes_the_options_and_logs_its_spectrum():
    b = toy_batch()
    for name, opts in [("ab", {"in_main": True}), ("cc", {"projector": "inverted"}), ("fsp", {"in_main": True})]:
        torch.manual_seed(0)
        student, teacher = TinyNet(width=4), TinyNet(width=8)
        if name == "fsp":
            opts = dict(opts, student="@stages", teacher="@stages")
        term = build_method(name, projector_options={"weight_decay": 0.1, "orthogonal": True, "log_singular_values": 2},
                            **opts)
        d = Distiller(student, teacher.eval(), [term], example_input=b["input"])
        _, parts = d(b)
        assert any(k.startswith(f"{name}/projector") and k.endswith("_erank") for k in parts), (name, sorted(parts))
        groups = d.parameter_groups(weight_decay=0.0)
        assert any(g["weight_decay"] == 0.1 for g in groups), name
