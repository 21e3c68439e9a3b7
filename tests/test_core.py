"""The Distiller, taps and projectors: shapes, directions, state, errors, a few steps."""
import pytest
import torch
import torch.nn as nn

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError, ShapeError
from crossdistill.methods import build_method
from crossdistill.projectors import Projector
from crossdistill.taps import FeatureTap, unwrap
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch


def test_standard_projector_maps_student_to_teacher_space():
    p = Projector(torch.Size([8, 8, 8]), torch.Size([32, 4, 4]), "standard")
    zs, zt = p(torch.randn(2, 8, 8, 8), torch.randn(2, 32, 4, 4))
    assert isinstance(p.map, nn.Conv2d) and (p.map.in_channels, p.map.out_channels) == (8, 32)
    # compared in the teacher's channel space, at the student's spatial size
    assert zs.shape == (2, 32, 8, 8) and zt.shape == (2, 32, 8, 8)


def test_inverted_projector_maps_teacher_to_student_space():
    p = Projector(torch.Size([8, 8, 8]), torch.Size([32, 4, 4]), "inverted")
    zs_in = torch.randn(2, 8, 8, 8)
    zs, zt = p(zs_in, torch.randn(2, 32, 4, 4))
    assert (p.map.in_channels, p.map.out_channels) == (32, 8)
    assert torch.equal(zs, zs_in)  # the student's feature is never transformed
    assert zt.shape == (2, 8, 8, 8)


def test_vector_projectors_are_linear_in_both_directions():
    s = Projector(torch.Size([16]), torch.Size([64]), "standard")
    i = Projector(torch.Size([16]), torch.Size([64]), "inverted")
    assert s.map.weight.shape == (64, 16) and i.map.weight.shape == (16, 64)
    zs, zt = i(torch.randn(3, 16), torch.randn(3, 64))
    assert zs.shape == zt.shape == (3, 16)


def test_projector_refuses_vector_to_map():
    with pytest.raises(ShapeError, match="no projector joins"):
        Projector(torch.Size([16]), torch.Size([8, 4, 4]), "standard")
    with pytest.raises(ShapeError, match="identity"):
        Projector(torch.Size([16]), torch.Size([32]), "identity")


def test_unknown_layer_fails_at_build_with_close_names():
    with pytest.raises(ConfigError, match=r"no layer 'layr2'.*layer2"):
        FeatureTap(TinyNet(), ["layr2"], "student")
    with pytest.raises(ConfigError, match="did you mean"):
        Distiller(TinyNet(), TinyNet(), [build_method("fitnet", student="layer9", teacher="layer2")])


def test_taps_see_through_compile_and_dataparallel_wrappers():
    net = TinyNet()
    wrapped = nn.DataParallel(net)
    assert unwrap(wrapped) is net
    tap = FeatureTap(wrapped, ["layer2"])
    wrapped(torch.randn(2, 3, 16, 16))
    assert tap.pop()["layer2"].shape == (2, 16, 8, 8)
    compiled = torch.compile(net, backend="eager")
    assert unwrap(compiled) is net


def _distiller(terms, task=True, **kw):
    torch.manual_seed(0)
    student, teacher = TinyNet(width=4), TinyNet(width=8)
    return Distiller(student, teacher, terms, task=create_task("classification", 5) if task else None,
                     example_input=toy_batch()["input"], **kw)


def test_teacher_frozen_eval_and_excluded_from_state_dict():
    d = _distiller([build_method("kd")])
    d.train()
    teacher = d.teachers["default"]
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teachers.") for k in d.state_dict())
    assert set(d.student.state_dict()) == {k[len("student."):] for k in d.state_dict() if k.startswith("student.")}
    ids = {id(p) for p in d.trainable_parameters()}
    assert not any(id(p) in ids for p in teacher.parameters())


def test_parts_and_total_are_consistent():
    d = _distiller([build_method("kd", weight=0.9), build_method("fitnet", weight=2.0)], task_weight=0.1)
    loss, parts = d(toy_batch())
    expected = 0.1 * parts["task"] + 0.9 * parts["kd"] + 2.0 * parts["fitnet"]
    torch.testing.assert_close(loss.detach(), expected)


@pytest.mark.parametrize("method,opts", [("kd", {}), ("fitnet", {"projector": "standard"}),
                                         ("fitnet", {"projector": "inverted"})])
def test_few_steps_lower_the_loss(method, opts):
    d = _distiller([build_method(method, **opts)], task=False)  # the term alone must go down
    batch = toy_batch()
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    d.train()
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss, parts = d(batch)
        loss.backward()
        opt.step()
        losses.append(parts[method].item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_teacher_gets_no_gradient_and_tuple_batches_work():
    d = _distiller([build_method("kd")])
    b = toy_batch()
    loss, _ = d((b["input"], b["label"]))
    loss.backward()
    assert all(p.grad is None for p in d.teachers["default"].parameters())


def test_ensemble_of_teachers_is_averaged():
    torch.manual_seed(0)
    t1, t2, s = TinyNet(), TinyNet(), TinyNet()
    d = Distiller(s, {"a": t1, "b": t2}, [build_method("kd", from_teacher=["a", "b"])],
                  example_input=toy_batch()["input"])
    d.eval()
    x = toy_batch()["input"]
    _, parts = d({"input": x})
    from crossdistill.losses import kd_loss
    with torch.no_grad():
        expected = kd_loss(s(x), (t1(x) + t2(x)) / 2, 4.0)
    torch.testing.assert_close(parts["kd"], expected)


def test_unbuilt_distiller_says_how_to_build():
    d = Distiller(TinyNet(), TinyNet(), [build_method("kd")])
    with pytest.raises(RuntimeError, match="example_input"):
        d(toy_batch())


def test_method_options_are_validated():
    with pytest.raises(ConfigError, match="unknown option 'projectr'.*projector"):
        build_method("fitnet", projectr="inverted")
    with pytest.raises(ConfigError, match="projector"):
        build_method("fitnet", projector="sideways")
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*kd"):
        build_method("kdd")
