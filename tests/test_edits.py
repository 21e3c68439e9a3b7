"""Student edits and input taps in the Distiller, and AB on the reference's pre-activation maps."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossdistill.distiller import Distiller
from crossdistill.engine.checkpoint import load_checkpoint, student_state
from crossdistill.engine.trainer import export_student
from crossdistill.errors import ConfigError
from crossdistill.losses import hint_loss
from crossdistill.methods import Method, build_method
from crossdistill.models import create_model
from crossdistill.taps import FeatureTap
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch


class MixTeacher(Method):
    """Test-only: mixes the teacher's ``layer2`` map (through a 1×1 conv) into the student's ``layer2``
    output during training, and regresses the student's mixed ``layer3`` onto the teacher's."""

    default_weight = 1.0
    default_student = "layer2"
    default_teacher = "layer2"

    def __init__(self, share: float = 0.5, **sides):
        super().__init__(**sides)
        self.share = share

    def build(self, s, t):
        self.proj = nn.Conv2d(t[0].shape[1], s[0].shape[1], 1)
        self.calls = 0

    def edits(self):
        return {"layer2": self.mix}

    def mix(self, out, t, batch):
        self.calls += 1
        return (1 - self.share) * out + self.share * self.proj(t[0])

    def forward(self, s, t, batch):
        return hint_loss(s[0], self.proj(t[0]))


def _distiller(**kw):
    torch.manual_seed(0)
    b = toy_batch()
    d = Distiller(TinyNet(width=4), TinyNet(width=8), [MixTeacher(**kw)], task=create_task("classification", 5),
                  example_input=b["input"])
    return d, b


def test_an_edit_changes_the_training_forward_only():
    d, b = _distiller()
    term = d.terms[0]
    assert term.calls == 0  # not in the dry run
    bare = TinyNet(width=4)
    bare.load_state_dict(d.student.state_dict())
    d.train()
    bare.train()
    order = []
    d.teachers["default"].register_forward_hook(lambda *a: order.append("teacher"))
    d.student.register_forward_hook(lambda *a: order.append("student"))
    _, parts = d(b)
    assert order == ["teacher", "student"]  # the teachers run first when an active term edits
    assert term.calls == 1
    # the task loss saw the edited student: it differs from the bare model's
    bare_loss = F.cross_entropy(bare(b["input"]), b["label"])
    assert abs(float(parts["task"]) - float(bare_loss.detach())) > 1e-4
    # predict and evaluation see the bare student
    bare.load_state_dict(d.student.state_dict())  # the same BN statistics
    d.eval()
    bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(d.predict(b["input"]), bare(b["input"]))
        d(b)  # an eval-mode forward: no edit either
    assert term.calls == 1


def test_the_tap_sees_the_module_output_before_the_edit():
    d, b = _distiller(share=1.0)
    seen = {}
    d.student.layer2.register_forward_hook(lambda m, i, o: seen.__setitem__("raw", o.clone()), prepend=True)
    d.student.layer3.register_forward_pre_hook(lambda m, i: seen.__setitem__("next", i[0].clone()))
    t_map = {}
    d.teachers["default"].layer2.register_forward_hook(lambda m, i, o: t_map.__setitem__("t", o))
    d.train()
    with torch.no_grad():
        _, parts = d(b)
        mixed = d.terms[0].proj(t_map["t"])
    torch.testing.assert_close(seen["next"], mixed)  # the rest of the network got the edit (share 1)
    torch.testing.assert_close(parts["mixteacher"], hint_loss(seen["raw"], mixed))  # the loss, the raw map


def test_a_method_that_edits_the_student_trains_and_exports_the_bare_student(tmp_path):
    d, b = _distiller()
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    d.train()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss, _ = d(b)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    export_student(tmp_path / "student.pt", d.student, {"name": "tiny", "options": {}, "num_classes": 5,
                                                        "in_channels": 3}, {})
    exported = student_state(load_checkpoint(tmp_path / "student.pt"))
    bare = TinyNet(width=4)
    assert set(exported) == set(bare.state_dict())  # nothing of the method, no extra keys
    bare.load_state_dict(exported)
    for k, v in d.student.state_dict().items():
        assert torch.equal(exported[k], v)
    bare.eval()
    d.eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(b["input"]), d.predict(b["input"]))


def test_edits_resolve_like_sides_and_fail_at_construction():
    class Bad(MixTeacher):
        def edits(self):
            return {"layr2": self.mix}

    with pytest.raises(ConfigError, match="layr2"):
        Distiller(TinyNet(), TinyNet(), [Bad()])
    with pytest.raises(ConfigError, match="'output'"):
        class Out(MixTeacher):
            def edits(self):
                return {"output": self.mix}
        Distiller(TinyNet(), TinyNet(), [Out()])


# -- input taps ----------------------------------------------------------------------------------------
def test_input_taps_read_a_module_input_and_survive_in_place_modules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1))
    tap = FeatureTap(net, ["1:input", "1", "0"])
    x = torch.randn(2, 3, 8, 8)
    net(x)
    feats = tap.pop()
    pre = F.conv2d(x, net[0].weight, net[0].bias, padding=1)
    torch.testing.assert_close(feats["1:input"], pre)  # not overwritten by the in-place ReLU
    assert (feats["1:input"] < 0).any()
    torch.testing.assert_close(feats["1"], pre.clamp_min(0))


def test_side_syntax_for_inputs_and_preact_aliases():
    from crossdistill.distiller import resolve_side

    r8 = create_model("resnet8x4", num_classes=10)
    assert resolve_side(r8, "@preacts", "student") == [f"layer{i}.0.relu2:input" for i in (1, 2, 3)]
    assert resolve_side(r8, "@preact:-1", "student") == ["layer3.0.relu2:input"]
    assert resolve_side(r8, "@stage:1:input", "student") == ["layer2:input"]
    assert resolve_side(create_model("wrn_16_2", num_classes=10), "@preacts", "student") == \
        ["layer2.0.bn1", "layer3.0.bn1", "bn_relu.0"]
    assert resolve_side(create_model("vgg8", num_classes=10), "@preacts", "student") == ["layer1", "layer2", "layer3"]


@pytest.mark.parametrize("name", ["resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2"])
def test_preact_taps_leave_the_models_state_and_size_unchanged(name):
    model = create_model(name, num_classes=100)
    keys = list(model.state_dict())
    count = sum(p.numel() for p in model.parameters())
    Distiller(model, create_model(name, num_classes=100), [build_method("ab")], example_input=torch.randn(2, 3, 32, 32))
    assert list(model.state_dict()) == keys
    assert sum(p.numel() for p in model.parameters()) == count
    published = {"resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_16_2": 0.70, "wrn_40_2": 2.26}  # M params
    assert abs(count / 1e6 - published[name]) < 0.01


# -- AB on the reference's pre-activations --------------------------------------------------------------
def reference_ab(source, target, margin=1.0):
    """RepDistiller's ``criterion_alternative_l2``, divided by the batch size."""
    loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).float()
            + (source - margin) ** 2 * ((source <= margin) & (target > 0)).float())
    return loss.abs().sum() / source.shape[0]


def _calibrated(name):
    m = create_model(name, num_classes=10)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
    with torch.no_grad():
        m.train()(torch.randn(8, 3, 32, 32))
    return m.eval()


def test_ab_on_wrn_reads_the_reference_preactivations():
    """RepDistiller's WRN with ``preact=True``: f1 = block2.layer[0].bn1(f1), f2 = block3.layer[0].bn1(f2),
    f3 = bn1(f3) (the closing BN), each applied to the raw stage output; AB compares those, with no
    connector between maps of the same shape (wrn_40_2 → wrn_16_2: 32/64/128 channels)."""
    torch.manual_seed(0)
    student, teacher = create_model("wrn_16_2", num_classes=10), _calibrated("wrn_40_2")
    x = torch.randn(6, 3, 32, 32)
    d = Distiller(student, teacher, [build_method("ab", in_main=True)], example_input=x[:2])
    raw_s, raw_t = {}, {}
    for net, store in ((student, raw_s), (teacher, raw_t)):
        for p in ("layer1", "layer2", "layer3"):
            net.get_submodule(p).register_forward_hook(lambda m, i, o, p=p, store=store: store.__setitem__(p, o))
    d.train()
    with torch.no_grad():
        _, parts = d({"input": x})

    def preact(net, raw, training):
        bns = [net.layer2[0].bn1, net.layer3[0].bn1, net.bn_relu[0]]
        return [F.batch_norm(raw[p], bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False)
                if not training else
                F.batch_norm(raw[p], None, None, bn.weight, bn.bias, training=True)
                for p, bn in zip(("layer1", "layer2", "layer3"), bns)]

    fs, ft = preact(student, raw_s, True), preact(teacher, raw_t, False)
    assert all(isinstance(c.map, nn.Identity) for c in d.terms[0].connectors)
    expected = (sum(2.0 ** (i - 2) * reference_ab(a, b) for i, (a, b) in enumerate(zip(fs, ft))) * 3 / 1000).detach()
    torch.testing.assert_close(parts["ab"], expected, rtol=1e-5, atol=1e-7)
    # reading the raw stage outputs instead (the old behaviour) gives another value
    raw = sum(2.0 ** (i - 2) * reference_ab(raw_s[p], raw_t[p]) for i, p in enumerate(("layer1", "layer2", "layer3")))
    assert abs(float(raw) * 3 / 1000 - float(expected)) > 1e-3 * float(expected)


def test_ab_on_cifar_resnets_reads_the_pre_relu_sum():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", num_classes=10), _calibrated("resnet32x4")
    x = torch.randn(4, 3, 32, 32)
    d = Distiller(student, teacher, [build_method("ab", in_main=True)], example_input=x[:2])
    pre_s, pre_t = {}, {}
    for net, store, last in ((student, pre_s, 0), (teacher, pre_t, 4)):
        for i in (1, 2, 3):
            block = net.get_submodule(f"layer{i}.{last}")
            # the block's pre-ReLU sum, recomputed from its parts: bn2(conv2(·)) + shortcut(input)
            block.register_forward_hook(lambda m, inp, o, i=i, store=store: store.__setitem__(
                i, m.bn2(m.conv2(m.relu1(m.bn1(m.conv1(inp[0]))))) + m.downsample(inp[0])))
    d.eval()  # eval: recomputing the block above gives the same numbers
    with torch.no_grad():
        _, parts = d({"input": x})
    expected = sum(2.0 ** (i - 3) * reference_ab(pre_s[i], pre_t[i]) for i in (1, 2, 3)) * 3 / 1000
    torch.testing.assert_close(parts["ab"], expected, rtol=1e-5, atol=1e-7)


def test_ab_refuses_an_identity_connector_on_post_relu_maps():
    with pytest.raises(ConfigError, match="connect_equal"):
        Distiller(create_model("resnet8x4", num_classes=10), create_model("resnet8x4", num_classes=10),
                  [build_method("ab", student="@stages", teacher="@stages")], example_input=torch.randn(2, 3, 32, 32))
    d = Distiller(create_model("resnet8x4", num_classes=10), create_model("resnet8x4", num_classes=10),
                  [build_method("ab", student="@stages", teacher="@stages", connect_equal=True)],
                  example_input=torch.randn(2, 3, 32, 32))
    assert all(not isinstance(c.map, nn.Identity) for c in d.terms[0].connectors)


def test_an_old_ab_checkpoint_fails_with_a_clear_error():
    """Before AB read pre-activations it always had conv-BN connectors; such a state no longer fits."""
    from crossdistill.errors import CheckpointError

    def make(**kw):
        torch.manual_seed(0)
        return Distiller(create_model("resnet8", num_classes=10), create_model("resnet8", num_classes=10),
                         [build_method("ab", **kw)], example_input=torch.randn(2, 3, 32, 32))

    old = make(student="@stages", teacher="@stages", connect_equal=True).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected \['terms.0.connectors.*older crossdistill"):
        make().load_state_dict(old)
