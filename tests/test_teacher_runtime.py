"""The frozen teacher as an inference engine (``teacher_runtime.py``, ``distill.fast_teacher``): BatchNorms
folded into their convolutions give the plain teacher's outputs and taps within float rounding, a
tapped module (or one whose input is tapped) keeps its BatchNorm, and the teacher's original state is
still what the teacher cache keys on."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from crossdistill.distiller import Distiller
from crossdistill.methods import build_method
from crossdistill.models import create_model
from crossdistill.taps import FeatureTap
from crossdistill.teacher_cache import weights_hash
from crossdistill.teacher_runtime import fold_batchnorms, prepare_teacher, unfolded_state_dict

#: per model: taps inside folded blocks, BN outputs, ``:input`` taps (a BN's output read as a ReLU's input)
TAPS = {
    "resnet8x4": ["layer1.0.conv1", "layer1.0.relu1:input", "layer2", "layer3.0.downsample", "layer3.0.relu2:input"],
    "resnet32x4": ["layer1.2.bn2", "layer2.4.relu1", "layer3"],
    "wrn_16_2": ["layer2.0.bn1", "layer3.0.conv1", "layer2.0.relu2:input", "bn_relu.0:input"],
    "vgg8": ["layer1", "layer2.2:input", "layer3.0"],
    "mobilenetv2": ["layer1.0.conv.2:input", "layer2"],
    "shufflenetv1": ["layer1.0.relu1", "layer2"],
}


def _random_stats(model: nn.Module) -> nn.Module:
    """BatchNorms with non-trivial running statistics and affine parameters (a trained teacher's)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max())))


def _model(name: str) -> nn.Module:
    try:
        return _random_stats(create_model(name, num_classes=10))
    except Exception as e:  # a zoo name another branch renamed
        pytest.skip(f"{name}: {e}")


@pytest.mark.parametrize("name", sorted(TAPS))
def test_folded_teacher_gives_the_plain_outputs_and_taps(name):
    plain = _model(name)
    fast = copy.deepcopy(plain)
    paths = TAPS[name]
    tap_plain, tap_fast = FeatureTap(plain, paths), FeatureTap(fast, paths)  # hooks first, as the Distiller does
    report = prepare_teacher(fast, paths)
    assert report.skipped is None and report.folded, report
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out_plain, out_fast = plain(x), fast(x)
    assert _close(out_fast, out_plain)
    got, want = tap_fast.pop(), tap_plain.pop()
    assert got.keys() == want.keys() == set(paths)
    for p in paths:
        assert _close(got[p], want[p]), p
    # a tapped module, and a BN whose output a tap reads as a module's input, keeps its BatchNorm
    folded_bns = {bn for _, bn in report.folded}
    for p in paths:
        module = p.split(":")[0]
        assert module not in folded_bns
        assert not any(conv == module for conv, _ in report.folded), f"{module} is tapped: its output must stay exact"
    # the original state is still there, exactly (the teacher cache keys on it)
    sd = unfolded_state_dict(fast)
    ref = plain.state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert weights_hash(fast) == weights_hash(plain)


def test_input_taps_and_tapped_bns_are_not_folded():
    net = _model("resnet8x4")
    FeatureTap(net, ["layer1.0.relu1:input", "layer1.0.bn2"])
    report = prepare_teacher(net)  # read from the hooks alone
    assert isinstance(net.layer1[0].bn1, nn.BatchNorm2d)  # its output is relu1's tapped input
    assert isinstance(net.layer1[0].bn2, nn.BatchNorm2d)
    assert isinstance(net.layer2[0].bn1, nn.Identity)  # nobody reads it: folded
    assert net.layer2[0].conv1.bias is not None
    assert "layer1.0.bn1" in report.kept and "layer1.0.bn2" in report.kept


def test_an_untraceable_teacher_runs_unfolded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return self.bn(self.conv(-x))

    net = _random_stats(Branchy())
    report = fold_batchnorms(net)
    assert report.skipped and not report.folded and isinstance(net.bn, nn.BatchNorm2d)


def _distiller(teacher, fast: bool, student=None):
    student = student or create_model("resnet8", num_classes=10)
    terms = [build_method("kd"), build_method("fitnet", student="@stage:1", teacher="@stage:1"),
             build_method("at")]
    return Distiller(student, teacher, terms, example_input=torch.randn(2, 3, 32, 32), fast_teacher=fast)


def test_the_distiller_folds_its_teacher_and_reads_the_same_tensors():
    teacher = _model("resnet32x4")
    plain = _distiller(copy.deepcopy(teacher), False)
    fast = _distiller(copy.deepcopy(teacher), True)
    assert all(isinstance(m, nn.BatchNorm2d) for m in plain.teachers["default"].modules() if "BatchNorm" in type(m).__name__)
    assert any(isinstance(m, nn.Identity) for m in fast.teachers["default"].modules())
    x = torch.randn(4, 3, 32, 32)
    a, b = plain.teacher_features("default", x), fast.teacher_features("default", x)
    assert a.keys() == b.keys() and len(a) >= 4  # output, the FitNet stage, AT's stages
    for k in a:
        assert _close(b[k], a[k]), k
    # the tapped stage outputs are untouched modules; checkpoints never hold the teacher
    assert not any(k.startswith("teachers.") for k in fast.state_dict())


def test_a_teacher_that_is_the_student_is_not_folded():
    net = _model("resnet8")  # the same module as student and teacher: folding would change what trains
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    d = Distiller(net, {"default": net}, [build_method("kd")], example_input=torch.randn(2, 3, 32, 32))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.student.modules()) == bns


def test_a_compiled_student_keeps_its_taps_and_edits():
    """``train.compile`` compiles the student in place (``student.compile()``): the Distiller's taps and
    edits are forward hooks, which dynamo traces into the graph. Backend ``eager`` here (the same
    tracing as inductor's, without minutes of C++ compilation on a CPU)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_edits import _distiller as edit_distiller

    eager, batch = edit_distiller()
    compiled, _ = edit_distiller()
    compiled.student.compile(backend="eager")
    eager.train(), compiled.train()
    loss_e, parts_e = eager(batch)
    loss_c, parts_c = compiled(batch)
    assert compiled.terms[0].calls == eager.terms[0].calls == 1  # the edit ran in the compiled forward
    assert _close(loss_c.detach(), loss_e.detach())
    for k in parts_e:
        assert _close(parts_c[k], parts_e[k]), k
    loss_e.backward(), loss_c.backward()
    for (n, a), (_, b) in zip(eager.student.named_parameters(), compiled.student.named_parameters()):
        assert _close(b.grad, a.grad), n
