"""Fidelity to the reference implementation (RepDistiller), method by method.

Every expected value is computed here from the reference's formula on fixed inputs, with the
method's own weights copied into that formula — never pasted from a run.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from crossdistill.cli import RECIPES
from crossdistill.config import load_config
from crossdistill.distiller import Distiller
from crossdistill.losses import crd_nce_loss
from crossdistill.methods import build_method

from helpers import TinyNet


def bn_train(y, bn):
    """BatchNorm2d in training mode, written out: batch statistics, biased variance."""
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (y - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


# -- 9.1 FitNet: the hint regressor is conv → BN → ReLU; the inverted projector stays linear -------------
def test_fitnet_standard_regressor_is_conv_bn_relu_as_the_reference():
    torch.manual_seed(0)
    term = build_method("fitnet", student="layer2", teacher="layer2")
    d = Distiller(TinyNet(width=4), TinyNet(width=8), [term], example_input=torch.randn(2, 3, 16, 16))
    x = torch.randn(6, 3, 16, 16)
    f_s, f_t = {}, {}
    d.student.layer2.register_forward_hook(lambda m, i, o: f_s.__setitem__("x", o))
    d.teachers["default"].layer2.register_forward_hook(lambda m, i, o: f_t.__setitem__("x", o))
    d.train()
    _, parts = d({"input": x})
    conv, bn = term.projector.map[0], term.projector.map[1]
    # RepDistiller's ConvReg at equal spatial size: relu(bn(conv1x1(f_s))), then MSELoss (mean)
    regressed = torch.relu(bn_train(F.conv2d(f_s["x"], conv.weight), bn))
    expected = ((regressed - f_t["x"]) ** 2).mean().detach()
    torch.testing.assert_close(parts["fitnet"], expected, rtol=1e-5, atol=1e-7)
    # without the ReLU it would differ: the test can fail
    unrelu = ((bn_train(F.conv2d(f_s["x"], conv.weight), bn) - f_t["x"]) ** 2).mean().detach()
    assert abs(float(unrelu) - float(expected)) > 1e-3


def test_fitnet_inverted_projector_stays_linear():
    torch.manual_seed(0)
    term = build_method("fitnet", student="layer2", teacher="layer2", projector="inverted")
    d = Distiller(TinyNet(width=4), TinyNet(width=8), [term], example_input=torch.randn(2, 3, 16, 16))
    f_s, f_t = {}, {}
    d.student.layer2.register_forward_hook(lambda m, i, o: f_s.__setitem__("x", o))
    d.teachers["default"].layer2.register_forward_hook(lambda m, i, o: f_t.__setitem__("x", o))
    d.train()
    _, parts = d({"input": torch.randn(6, 3, 16, 16)})
    conv, bn = term.projector.map[0], term.projector.map[1]
    projected = bn_train(F.conv2d(f_t["x"], conv.weight), bn)  # no ReLU: negative values survive
    assert (projected < 0).any()
    torch.testing.assert_close(parts["fitnet"], ((f_s["x"] - projected) ** 2).mean().detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(parts["fitnet/transfer"] + parts["fitnet/spectral"], parts["fitnet"], rtol=1e-5, atol=1e-6)


# -- 9.3 AB and FSP initialise at lr 0.05, FT at 0.01 (both CIFAR-100 recipe sets) -----------------------
@pytest.mark.parametrize("pair", ["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2"])
@pytest.mark.parametrize("method,lr", [("ab", 0.05), ("fsp", 0.05), ("ft", 0.01)])
def test_cifar100_init_phase_learning_rates(pair, method, lr):
    cfg = load_config(RECIPES / f"cifar100/{pair}/{method}.yaml")
    assert cfg.train.phase_lr == {"init": lr}


# -- 9.4 crd_nce_loss is exact in float32 at the reference's K -------------------------------------------
def reference_nce(P, n, eps=1e-7):
    """The reference's NCELoss, literally: log(P/(P + K·Pn + ε)) and log(K·Pn/(P + K·Pn + ε))."""
    k = P.shape[1] - 1
    pn = 1.0 / n
    log_d1 = torch.log(P[:, 0] / (P[:, 0] + k * pn + eps))
    log_d0 = torch.log((k * pn) / (P[:, 1:] + k * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / P.shape[0]


def test_crd_nce_loss_in_float32_matches_float64_at_k_16384():
    g = torch.Generator().manual_seed(0)
    k, n = 16384, 50000
    logits = torch.randn(64, k + 1, generator=g, dtype=torch.float64) * 1.3
    P = torch.exp(logits) / (torch.exp(logits).mean() * n)
    exact = reference_nce(P, n)  # float64
    assert abs(float(crd_nce_loss(P, n)) / float(exact) - 1) < 1e-12
    assert abs(float(crd_nce_loss(P.float(), n)) / float(exact) - 1) < 3e-7
    # the literal formula in float32 is off by far more (the bias this guards against)
    assert abs(float(reference_nce(P.float(), n)) / float(exact) - 1) > 1e-5


def test_crd_nce_loss_small_hand_case():
    P = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]], dtype=torch.float64)
    n = 4  # K = 2, K·Pn = 0.5
    c = 0.5 + 1e-7
    expected = -sum(math.log(p[0] / (p[0] + c)) + sum(math.log(0.5 / (q + c)) for q in p[1:]) for p in P.tolist()) / 2
    assert abs(float(crd_nce_loss(P, n)) - expected) < 1e-12


# -- 9.5 the differences table's measurements run, and vanish where the table says they do --------------
def test_zoo_differences_measurements():
    from crossdistill.lab.reproduce import zoo_differences as z

    spatial = z.spatial_resizing()
    assert spatial["equal sizes (the shipped pairs)"]["relative difference"] == 0.0
    assert all(spatial[m]["relative difference"] > 0 for m in ("at", "nst", "vid"))
    # two momentum steps (0.1 each) against one: the running mean moves 1 − 0.9² = 0.19 against 0.1
    assert z.ab_wrn_batchnorm()["running-mean step, reference / ours"] == pytest.approx(0.19 / 0.1, rel=1e-5)
    ft = z.ft_factor()
    assert ft["gradient norm, reference / ours"] > 1
    cc = z.cc_formula()
    assert cc["reference β·L (β = 0.02)"] == pytest.approx(0.02 * cc["reference L"])
    assert len(z.rows()) == 7


def test_zoo_reproduction_runs_each_recipe_at_its_scale(tmp_path, monkeypatch):
    """The cells `reproduce zoo` builds (no training here): one column per published recipe of the
    resnet32x4 → resnet8x4 pair, read as shipped (init-phase rates, weights, views, extra teachers),
    with only the epoch-counted options scaled; `only` filters."""
    from crossdistill.lab.reproduce import zoo

    captured = {}

    class Stop(Exception):
        pass

    def grid(cells, out, log, select=None):
        captured["cells"] = cells
        raise Stop

    monkeypatch.setattr(zoo, "train_config", lambda *a, **k: {})
    monkeypatch.setattr(zoo, "run_grid", grid)
    with pytest.raises(Stop):
        zoo.reproduce_zoo(tmp_path, quick=True, log=lambda *a: None, workers=1)
    cells = {c.col: c.config for c in captured["cells"]}
    assert {"student", "KD", "KD+LS", "DKD", "DKD+LS", "DIST", "CTKD", "MLKD", "MLKD+LS", "ReviewKD", "SRD", "VkD",
            "FitNet", "CRD", "CRD+KD"} <= set(cells)
    assert not any("inverted" in str(c) for c in cells.values())  # Learning to Project's readings are not zoo columns
    rates = {col: c.get("train", {}).get("phase_lr") for col, c in cells.items()}
    assert rates["AB"] == {"init": 0.05} and rates["FSP"] == {"init": 0.05} and rates["FT"] == {"init": 0.01}
    assert all(rates[m] is None for m in ("student", "KD", "FitNet", "CRD", "CRD+KD"))
    term = {col: c["distill"]["terms"][0] for col, c in cells.items() if col != "student"}
    # the recipes' weights as shipped; 20 of 240 warm-up epochs at 2 epochs round up to one (= none)
    assert cells["KD"]["distill"]["task_weight"] == 0.1 and term["KD"]["weight"] == 0.9
    assert term["DKD+LS"] == {"method": "dkd", "weight": 1.0, "alpha": 9.0, "beta": 81.0, "T": 4, "warmup": 1,
                              "standardize": True}
    assert term["ReviewKD"]["weight"] == 5.0 and term["ReviewKD"]["warmup_epochs"] == 1
    assert term["AB"]["init_epochs"] == 1 and term["CRD"]["nce_k"] == zoo.SCALES["quick"]["nce_k"]
    # MLKD: the strong view and the same teacher declared on it
    teacher = str(tmp_path / "teacher" / "student.pt")
    assert cells["MLKD"]["data"]["copies"] == 2 and cells["MLKD"]["teachers"]["strong"] == {
        "checkpoint": teacher, "input_field": "input_1"}
    assert cells["MLKD"]["train"]["optimizer"]["lr"] == 0.05  # every column trains alike
    assert cells["MLKD"]["data"]["options"]["subset"] == zoo.SCALES["quick"]["subset"]
    with pytest.raises(Stop):
        zoo.reproduce_zoo(tmp_path, quick=True, log=lambda *a: None, only=["AB", "CRD"], workers=1)
    assert [c.col for c in captured["cells"]] == ["student", "AB", "CRD"]


def test_zoo_scales_each_epoch_counted_option():
    from crossdistill.lab.reproduce.zoo import scaled_terms

    s = {"epochs": 24, "nce_k": 100}
    got = scaled_terms([{"method": "ab", "init_epochs": 30}, {"method": "dkd", "warmup": 20},
                        {"method": "ctkd", "curriculum_epochs": 10}, {"method": "dkd", "warmup": 0},
                        {"method": "crd", "nce_k": 16384}], s)
    assert [got[0]["init_epochs"], got[1]["warmup"], got[2]["curriculum_epochs"], got[3]["warmup"]] == [3, 2, 1, 0]
    assert got[4]["nce_k"] == 100


def test_zoo_states_each_published_number_next_to_ours():
    from crossdistill.lab.reproduce.grid import Result
    from crossdistill.lab.reproduce.zoo import PUBLISHED, published_comparison, zoo_recipes

    # every column has its published resnet32x4 → resnet8x4 number, except the two with none (docs/zoo.md)
    assert set(zoo_recipes()) - set(PUBLISHED) == {"SRD", "VkD"}
    results = [Result("r", "student", "acc", [0.70, 0.72]), Result("r", "KD", "acc", [0.73, 0.75]),
               Result("r", "RKD", "acc", [0.69, 0.69]), Result("r", "SRD", "acc", [0.80, 0.80])]
    md = published_comparison(results, 88.0)
    assert "| KD | 74.00 ± 1.41 | +3.00 | 73.33 | +0.83 |" in md
    assert "| RKD | 69.00 ± 0.00 | -2.00 | 71.90 | -0.60 |" in md
    assert "| SRD | 80.00 ± 0.00 | +9.00 | — |  |" in md
    # KD above the student in both, RKD below in both: the orders agree (ρ = +1 over the two)
    assert "Over the 2 methods with a published number: 1 above the student alone here, 1 in the papers" in md
    assert "ρ between our order and the published one +1.00" in md
