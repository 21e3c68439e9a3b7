"""The classic distiller zoo as methods: AT, SP, CC, VID, RKD, PKT, AB, FT, FSP, NST.

For every method: (a) the Distiller's loss equals the pure loss applied to the tapped tensors after
the method's own projector (the wiring, checked with independent hooks on the networks); (b) a few
steps on one batch lower it; (c) AB/FT/FSP: the init phase lowers its objective and trains only its
own parameters; (d) ``projector="inverted"`` maps teacher → student.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.losses import (
    ab_loss,
    at_loss,
    cc_loss,
    factor_loss,
    fsp_matrix,
    hint_loss,
    nst_loss,
    pkt_loss,
    rkd_loss,
    sp_loss,
    vid_loss,
)
from crossdistill.methods import METHODS, build_method
from crossdistill.models import create_model

STAGES = ["layer1", "layer2", "layer3"]
ZOO = ["at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst"]
WITH_PROJECTOR = ["cc", "vid", "ab", "ft", "fsp"]
TWO_PHASE = ["ab", "ft", "fsp"]


def batch(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(n, 3, size, size, generator=g)}


@pytest.fixture(autouse=True)
def one_thread():
    """The machine is shared: one thread is as fast here and does not starve the neighbours."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def nets(student="resnet8x4", teacher="resnet32x4"):
    """A student and a random teacher whose BN statistics are set on the test batch, so the teacher's
    eval-mode maps have a trained network's scale (a fresh BN in eval mode normalises nothing)."""
    torch.manual_seed(0)
    s, t = create_model(student, num_classes=10), create_model(teacher, num_classes=10)
    for m in t.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running stats = the average over the calibration batches
    with torch.no_grad():
        t.train()(batch()["input"])
    return s, t.eval()


def distiller(name, student_model="resnet8x4", teacher_model="resnet32x4", **opts):
    if name in ("ab", "fsp"):
        opts.setdefault("in_main", True)  # both are init-only by default; test their main loss too
    s, t = nets(student_model, teacher_model)
    return Distiller(s, t, [build_method(name, **opts)], example_input=batch()["input"])


def capture(model, paths):
    """Independent forward hooks: the tensors the method should have received (``path:input``: the
    module's input, by a pre-hook)."""
    out = {}
    for p in paths:
        if p.endswith(":input"):
            model.get_submodule(p[:-6]).register_forward_pre_hook(lambda m, i, p=p: out.__setitem__(p, i[0]))
        else:
            model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: out.__setitem__(p, o))
    return out


# the pre-ReLU sums AB reads on resnet8x4 (1 block per stage) and resnet32x4 (5 blocks per stage)
PREACT_S = [f"layer{i}.0.relu2:input" for i in (1, 2, 3)]
PREACT_T = [f"layer{i}.4.relu2:input" for i in (1, 2, 3)]


def test_registered_with_reference_defaults():
    expected = {"at": (1000, "@stages"), "sp": (3000, "@stage:-1"), "cc": (100, "@pooled"), "vid": (1, "@stages"),
                "rkd": (1, "@pooled"), "pkt": (30000, "@pooled"), "ab": (1, "@preacts"), "ft": (200, "@stage:-1"),
                "fsp": (50, ("stem", "@stages")), "nst": (50, "@stages")}
    for name, (weight, side) in expected.items():
        cls = METHODS.get(name)
        assert cls.default_weight == weight and cls.default_student == side == cls.default_teacher, name


# -- (a) wiring: the loss is the pure function of the tapped tensors after the projector -------------
def expected_loss(name, term, s, t):
    """Recompute a method's main loss from hooked tensors, calling only the pure losses and its modules."""
    stages_s, stages_t = [s[p] for p in STAGES], [t[p] for p in STAGES]
    if name == "at":
        return sum(at_loss(a, b) for a, b in zip(stages_s, stages_t))
    if name == "nst":
        return sum(nst_loss(a, b) for a, b in zip(stages_s, stages_t))
    if name == "sp":
        return sp_loss(s["layer3"], t["layer3"])
    if name == "rkd":
        return rkd_loss(s["pool"], t["pool"], 25.0, 50.0)
    if name == "pkt":
        return pkt_loss(s["pool"], t["pool"], reduction="mean")
    if name == "cc":
        es = F.normalize(term.projector.map(s["pool"]), dim=1)
        return cc_loss(es, F.normalize(t["pool"], dim=1), kernel="gaussian", gamma=0.4, order=2)
    if name == "vid":
        parts = zip(stages_s, stages_t, term.regressors, term.log_scales)
        return sum(vid_loss(reg(a), b, log_scale) for a, b, reg, log_scale in parts)
    if name == "ab":  # same shapes on each side: no connector (the reference)
        assert all(isinstance(c.map, torch.nn.Identity) for c in term.connectors)
        parts = zip([0.25, 0.5, 1.0], [s[p] for p in PREACT_S], [t[p] for p in PREACT_T])  # 2^(i-L+1), ·3/1000
        return sum(w * ab_loss(a, b, 1.0) for w, a, b in parts) * 0.003
    if name == "ft":
        return factor_loss(term.translator(s["layer3"]), term.paraphraser.encoder(t["layer3"]), p=1, reduction="mean")
    if name == "fsp":
        def flows(f):
            maps = [f["stem"]] + [f[p] for p in STAGES]
            out = []
            for a, b in zip(maps[:-1], maps[1:]):
                hw = min(a.shape[-1], b.shape[-1])
                out.append(fsp_matrix(F.adaptive_avg_pool2d(a, hw), F.adaptive_avg_pool2d(b, hw)))
            return out
        return sum((gs - gt).pow(2).mean() for gs, gt in zip(flows(s), flows(t)))
    raise AssertionError(name)


@pytest.mark.parametrize("name", ZOO)
def test_loss_is_the_pure_loss_of_the_tapped_tensors(name):
    d = distiller(name).eval()  # eval: the method's modules give the same values when called again
    paths = STAGES + ["stem", "pool"]
    s, t = capture(d.student, paths + PREACT_S), capture(d.teachers["default"], paths + PREACT_T)
    with torch.no_grad():
        loss, parts = d(batch())
        expected = expected_loss(name, d.terms[0], s, t)
    assert torch.isfinite(loss) and parts[name] > 0
    assert_close(parts[name], expected, rtol=1e-4, atol=1e-7)
    assert_close(loss, d.terms[0].weight * expected, rtol=1e-4, atol=1e-6)


def test_vid_starts_at_the_reference_variance():
    d = distiller("vid", teacher_model="resnet8x4")
    for ls in d.terms[0].log_scales:
        assert_close(F.softplus(ls) + 1e-5, torch.full_like(ls, 5.0))


@pytest.mark.parametrize("name", ["ab", "fsp"])
def test_init_only_methods_add_nothing_to_main_training_by_default(name):
    s, t = nets(teacher="resnet8x4")
    calls = []
    t.register_forward_hook(lambda *a: calls.append(1))
    d = Distiller(s, t, [build_method(name)], example_input=batch()["input"])
    calls.clear()
    loss, parts = d(batch())
    assert name not in parts and loss == 0 and not calls  # inactive: no loss, no teacher forward


# -- (b) a few steps on one batch lower each method's own loss (no task loss) --------------------------
def steps(d, n, lr, part):
    opt = torch.optim.Adam(d.trainable_parameters(d.phase), lr=lr)
    d.train()
    values = []
    for _ in range(n):
        opt.zero_grad()
        loss, parts = d(batch())
        loss.backward()
        opt.step()
        values.append(parts[part].item())
    return values


@pytest.mark.parametrize("name", ZOO)
def test_few_steps_lower_the_loss(name):
    d = distiller(name, teacher_model="resnet8x4")  # a small teacher keeps the steps fast
    # VID's NLL is mostly ½·log σ² (σ² starts at 5 and moves slowly): only its error part can fall fast
    lr, ratio = (1e-2, 0.98) if name == "vid" else (1e-3, 0.9)
    values = steps(d, 10, lr, name)
    assert values[-1] < ratio * values[0], values


# -- (c) init phases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,part", [("ab", "ab"), ("ft", "ft"), ("fsp", "fsp")])
def test_init_phase_lowers_its_objective_and_trains_only_its_parameters(name, part):
    s, t = nets(teacher="resnet8x4")
    d = Distiller(s, t, [build_method(name)], example_input=batch()["input"])
    assert d.phases() == [("init", 30)]
    term = d.terms[0]
    d.phase = "init"
    init_ids = {id(p) for p in d.trainable_parameters("init")}
    fc = {id(p) for p in d.student.fc.parameters()}
    if name == "ft":  # the paraphraser alone: an autoencoder of the teacher's map
        assert init_ids == {id(p) for p in term.paraphraser.parameters()}
    else:  # the student's body (+ connectors / projectors), never its classifier
        body = {id(p) for p in d.student.parameters()} - fc
        assert init_ids == body | {id(p) for p in term.parameters()}
    loss, parts = d(batch())
    assert "task" not in parts
    # the init objective is the reference's, whatever β: weights apply to the main phase only
    assert_close(loss, parts[part])
    loss.backward()
    touched = {id(p) for p in d.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and touched <= init_ids
    values = steps(d, 10, 1e-3, part)
    assert values[-1] < 0.9 * values[0], values


def test_init_phase_can_be_switched_off():
    s, t = nets(teacher="resnet8x4")
    d = Distiller(s, t, [build_method("ft", init_epochs=0)], example_input=batch()["input"])
    assert d.phases() == []


# -- (d) inverted projectors map the teacher into the student's space ---------------------------------
# resnet8 (16/16/32/64 channels) under resnet8x4 (32/64/128/256): every width differs
S_CH = {"stem": 16, "layer1": 16, "layer2": 32, "layer3": 64}
T_CH = {"stem": 32, "layer1": 64, "layer2": 128, "layer3": 256}


def channel_maps(name, term):
    """(channels in, channels out) of each learned map joining the two networks."""
    if name == "cc":
        return [tuple(term.projector.map.weight.shape[::-1])]  # Linear weight: (out, in)
    if name == "vid":
        return [(r[0].in_channels, r[-1].out_channels) for r in term.regressors]
    if name == "ab":
        return [(c.map[0].in_channels, c.map[0].out_channels) for c in term.connectors]
    if name == "fsp":
        return [(p.map.in_channels, p.map.out_channels) for p in term.projectors]
    if name == "ft":
        return [(term.paraphraser.encoder[0].in_channels, term.paraphraser.encoder[-2].out_channels)]
    raise AssertionError(name)


@pytest.mark.parametrize("name", WITH_PROJECTOR)
def test_inverted_projector_goes_teacher_to_student(name):
    d = distiller(name, "resnet8", "resnet8x4", projector="inverted")
    term = d.terms[0]
    taps = {"cc": ["layer3"], "ft": ["layer3"], "fsp": ["stem"] + STAGES}.get(name, STAGES)  # cc: pooled layer3
    assert channel_maps(name, term) == [(T_CH[p], S_CH[p]) for p in taps]
    if name == "vid":  # it predicts the student's map: one variance per student channel
        assert [ls.shape[0] for ls in term.log_scales] == [S_CH[p] for p in STAGES]
    if name == "ft":  # the student's own map is its factor
        assert term.translator is None
    for phase in ["init", "main"] if name in TWO_PHASE else ["main"]:
        d.phase = phase
        d.zero_grad()
        loss, _ = d(batch())
        assert torch.isfinite(loss)
        loss.backward()
    assert d.student.layer3[0].conv1.weight.grad is not None  # the student learns in the main phase


@pytest.mark.parametrize("name", WITH_PROJECTOR)
def test_standard_projector_goes_student_to_teacher(name):
    d = distiller(name, "resnet8", "resnet8x4")
    taps = {"cc": ["layer3"], "ft": ["layer3"], "fsp": ["stem"] + STAGES}.get(name, STAGES)
    if name == "ft":  # the translator reaches the teacher's factor width, rate · C_t = 128
        term = d.terms[0]
        assert (term.translator[0].in_channels, term.translator[-3].out_channels) == (64, 128)
        assert term.paraphraser.encoder[-2].out_channels == 128
    else:
        assert channel_maps(name, d.terms[0]) == [(S_CH[p], T_CH[p]) for p in taps]


# -- stage lists of any length, spatial sizes that differ, mismatches that fail at build ---------------
@pytest.mark.parametrize("name", ["at", "nst", "vid", "ab"])
def test_any_number_of_stages_and_resized_teacher_maps(name):
    # two student stages against two teacher stages one level deeper (half the spatial size)
    d = distiller(name, "resnet8", "resnet8x4", student=["layer1", "layer2"], teacher=["layer2", "layer3"])
    loss, parts = d(batch())
    assert torch.isfinite(loss) and parts[name] > 0
    if name == "at":
        s, t = capture(d.student, ["layer1", "layer2"]), capture(d.teachers["default"], ["layer2", "layer3"])
        with torch.no_grad():
            _, parts = d(batch())
            up = [F.interpolate(t[p], size=s[q].shape[-2:], mode="bilinear", align_corners=False)
                  for p, q in [("layer2", "layer1"), ("layer3", "layer2")]]
            assert_close(parts["at"], at_loss(s["layer1"], up[0]) + at_loss(s["layer2"], up[1]))


@pytest.mark.parametrize("name", ["at", "nst", "vid", "ab", "sp"])
def test_unequal_stage_counts_fail_at_build(name):
    s, t = nets("resnet8", "resnet8x4")
    with pytest.raises(ConfigError, match=name):
        Distiller(s, t, [build_method(name, student=["layer1", "layer2"], teacher="@stages")],
                  example_input=batch()["input"])


def test_ft_init_objective_is_the_reconstruction_mse():
    d = distiller("ft", teacher_model="resnet8x4").eval()
    t = capture(d.teachers["default"], ["layer3"])
    d.phase = "init"
    with torch.no_grad():
        loss, parts = d(batch())
        expected = hint_loss(d.terms[0].paraphraser(t["layer3"]), t["layer3"])
    assert_close(parts["ft"], expected)
    assert_close(loss, expected)
