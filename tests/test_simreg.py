"""SimReg: the loss, the heads, several teachers with independent heads, same / different views, export."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError, DataError, ShapeError
from crossdistill.losses import normalized_regression_loss
from crossdistill.methods import build_method
from crossdistill.methods.simreg import head_hidden_widths
from crossdistill.projectors import MLPHead

from helpers import TinyNet, toy_batch

D64 = torch.float64


# ------------------------------------------------------------------------------------------ loss
def test_normalized_regression_loss_hand_case():
    # row 0: (3,4)·(4,3) = 24, norms 5·5 → cos 24/25 → 2 − 48/25 = 2/25; row 1: orthogonal → 2
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=D64)
    z = torch.tensor([[4.0, 3.0], [0.0, 2.0]], dtype=D64)
    assert_close(normalized_regression_loss(p, z), torch.tensor((2 / 25 + 2) / 2, dtype=D64))
    # opposite directions give 4, equal directions (any scale) give 0
    assert_close(normalized_regression_loss(p, -3 * p), torch.tensor(4.0, dtype=D64))
    assert_close(normalized_regression_loss(p, 7 * p), torch.tensor(0.0, dtype=D64))


def test_normalized_regression_loss_is_the_squared_distance_of_unit_vectors():
    rng = np.random.default_rng(3)
    p, z = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = np.mean([np.sum((p[i] / np.linalg.norm(p[i]) - z[i] / np.linalg.norm(z[i])) ** 2) for i in range(5)])
    cos = [p[i] @ z[i] / (np.linalg.norm(p[i]) * np.linalg.norm(z[i])) for i in range(5)]
    assert_close(normalized_regression_loss(torch.tensor(p), torch.tensor(z)), torch.tensor(expected, dtype=D64))
    assert math.isclose(expected, np.mean([2 - 2 * c for c in cos]), rel_tol=1e-12)


def test_normalized_regression_loss_refuses_maps_and_mismatches():
    with pytest.raises(ShapeError):
        normalized_regression_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    with pytest.raises(ShapeError):
        normalized_regression_loss(torch.randn(2, 3), torch.randn(2, 4))


# ------------------------------------------------------------------------------------------ heads
def _kinds(head: MLPHead):
    return [type(m).__name__ for m in head.net]


def test_head_widths_follow_the_paper():
    assert head_hidden_widths(8, 4) == [16, 8, 16]
    assert head_hidden_widths(8, 2) == [16]
    assert head_hidden_widths(8, 1) == []
    student, teacher = TinyNet(width=2), TinyNet(width=6)    # pooled widths 8 and 24
    for layers, widths in ((4, (8, 16, 8, 16, 24)), (2, (8, 16, 24)), (1, (8, 24))):
        d = Distiller(student, teacher, [build_method("simreg", head_layers=layers)], example_input=toy_batch()["input"])
        head = d.terms[0].heads[0]
        assert head.widths == widths
        # the paper's text: Linear+BN+ReLU between layers, nothing after the last
        assert _kinds(head) == ["Linear", "BatchNorm1d", "ReLU"] * (layers - 1) + ["Linear"]
    d = Distiller(student, teacher, [build_method("simreg", head_width=5)], example_input=toy_batch()["input"])
    assert d.terms[0].heads[0].widths == (8, 10, 5, 10, 24)


def test_head_variant_code_follows_the_released_code():
    student, teacher = TinyNet(width=2), TinyNet(width=6)
    x = toy_batch()["input"]
    four = Distiller(student, teacher, [build_method("simreg", head_variant="code")], example_input=x).terms[0].heads[0]
    assert _kinds(four) == ["Linear", "BatchNorm1d", "ReLU", "Linear", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert four.widths == (8, 16, 8, 16, 24)
    two = Distiller(student, teacher, [build_method("simreg", head_layers=2, head_variant="code")],
                    example_input=x).terms[0].heads[0]
    assert _kinds(two) == ["Linear", "Linear"]
    lin = Distiller(student, teacher, [build_method("simreg", head_layers=1, head_variant="code")],
                    example_input=x).terms[0].heads[0]
    assert _kinds(lin) == ["BatchNorm1d", "Linear"]


def test_no_head_needs_equal_widths_and_inverted_head_maps_teacher_to_student():
    x = toy_batch()["input"]
    with pytest.raises(ShapeError, match="head_layers >= 1"):
        Distiller(TinyNet(width=2), TinyNet(width=6), [build_method("simreg", head_layers=0)], example_input=x)
    d = Distiller(TinyNet(width=2), TinyNet(width=2), [build_method("simreg", head_layers=0)], example_input=x)
    assert isinstance(d.terms[0].heads[0], nn.Identity)
    inv = Distiller(TinyNet(width=2), TinyNet(width=6), [build_method("simreg", projector="inverted", head_layers=2)],
                    example_input=x).terms[0].heads[0]
    assert inv.widths == (24, 48, 8)


def test_simreg_loss_is_two_minus_two_cos_of_head_output_and_teacher_feature():
    student, teacher = TinyNet(width=2), TinyNet(width=6)
    batch = toy_batch()
    d = Distiller(student, teacher, [build_method("simreg")], example_input=batch["input"])
    d.train()
    loss, parts = d(batch)
    f_s = student.pool(student.layer3(student.layer2(student.layer1(batch["input"]))))
    with torch.no_grad():
        f_t = teacher.pool(teacher.layer3(teacher.layer2(teacher.layer1(batch["input"]))))
    p = d.terms[0].heads[0](f_s)
    cos = nn.functional.cosine_similarity(p, f_t, dim=1)
    assert_close(parts["simreg"], (2 - 2 * cos).mean(), rtol=1e-5, atol=1e-6)
    assert "task" not in parts and torch.allclose(loss, parts["simreg"])


# ------------------------------------------------------------------------------------------ several teachers
def _two_teacher_distiller(**options):
    torch.manual_seed(0)
    student = TinyNet(width=2)
    teachers = {"a": TinyNet(width=4), "b": TinyNet(width=6)}     # different widths: 16 and 24
    term = build_method("simreg", from_teacher=["a", "b"], **options)
    return Distiller(student, teachers, [term], example_input=toy_batch()["input"]), term


def test_one_independent_head_per_teacher_with_its_own_width():
    d, term = _two_teacher_distiller()
    assert len(term.heads) == 2
    assert term.heads[0].widths[-1] == 16 and term.heads[1].widths[-1] == 24
    assert term.heads[0] is not term.heads[1]
    d.train()
    loss, parts = d(toy_batch())
    assert set(parts) == {"simreg", "simreg/a", "simreg/b"}
    assert_close(parts["simreg"], (parts["simreg/a"] + parts["simreg/b"]) / 2)


def test_each_head_gets_gradient_only_from_its_own_teacher():
    d, term = _two_teacher_distiller()
    d.train()
    batch = toy_batch()
    s_feats, t_feats = d._forward_networks(batch, [True])
    s, t = d._term_inputs(0, s_feats, t_feats)
    out = term(s, t, batch)
    grads = torch.autograd.grad(out["a"], list(term.heads[0].parameters()) + list(term.heads[1].parameters()),
                                allow_unused=True, retain_graph=True)
    n0 = len(list(term.heads[0].parameters()))
    assert any(g is not None and g.abs().sum() > 0 for g in grads[:n0])                 # a's head learns from a's term
    assert all(g is None or g.abs().sum() == 0 for g in grads[n0:])        # b's head: nothing from a's term
    grads = torch.autograd.grad(out["b"], list(term.heads[0].parameters()), allow_unused=True, retain_graph=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads)             # a's head: nothing from b's term
    # the total's gradient on a's head does not change when teacher b's features change
    g_total = torch.autograd.grad(out["loss"], list(term.heads[0].parameters()), retain_graph=True)
    t_noise = [t[0], torch.randn_like(t[1])]
    out2 = term(s, t_noise, batch)
    g_noise = torch.autograd.grad(out2["loss"], list(term.heads[0].parameters()))
    for g1, g2 in zip(g_total, g_noise):
        assert_close(g1, g2)


def test_separate_teachers_equal_one_term_per_teacher_with_weights_one_over_n():
    d, term = _two_teacher_distiller()
    student = d.student
    a = build_method("simreg", from_teacher="a", weight=0.5)
    b = build_method("simreg", from_teacher="b", weight=0.5)
    d2 = Distiller(copy.deepcopy(student), dict(d.teachers), [a, b], example_input=toy_batch()["input"])
    a.heads[0].load_state_dict(term.heads[0].state_dict())
    b.heads[0].load_state_dict(term.heads[1].state_dict())
    d.train(), d2.train()
    loss1, _ = d(toy_batch())
    loss2, parts2 = d2(toy_batch())
    assert_close(loss1, loss2, rtol=1e-5, atol=1e-6)


def test_teacher_weights_weigh_and_are_checked():
    d, term = _two_teacher_distiller(teacher_weights=[3.0, 1.0])
    d.train()
    _, parts = d(toy_batch())
    assert_close(parts["simreg"], 0.75 * parts["simreg/a"] + 0.25 * parts["simreg/b"])
    with pytest.raises(ConfigError, match="one per teacher"):
        build_method("simreg", from_teacher=["a", "b"], teacher_weights=[1.0])


def test_heads_for_a_teacher_that_is_not_configured_fail_at_construction():
    with pytest.raises(ConfigError, match="teacher 'c'"):
        Distiller(TinyNet(width=2), {"a": TinyNet(width=4)}, [build_method("simreg", from_teacher=["a", "c"])],
                  example_input=toy_batch()["input"])


def test_averaged_ensemble_is_unchanged_for_other_methods():
    # fitnet keeps combine_teachers="mean": two same-shaped teachers are averaged before its loss
    torch.manual_seed(0)
    teachers = {"a": TinyNet(width=4), "b": TinyNet(width=4)}
    d = Distiller(TinyNet(width=2), teachers, [build_method("fitnet", from_teacher=["a", "b"], student="layer2",
                                                            teacher="layer2")], example_input=toy_batch()["input"])
    s_feats, t_feats = d._forward_networks(toy_batch(), [True])
    _, t = d._term_inputs(0, s_feats, t_feats)
    assert len(t) == 1
    assert_close(t[0], (t_feats["a"]["layer2"] + t_feats["b"]["layer2"]) / 2)


# ------------------------------------------------------------------------------------------ views
class _Recorder:
    def __init__(self, model):
        self.inputs = []
        model.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0]))


def test_same_view_feeds_the_identical_tensor_to_student_and_teacher():
    student, teacher = TinyNet(width=2), TinyNet(width=6)
    d = Distiller(student, teacher, [build_method("simreg")], example_input=toy_batch()["input"])
    rs, rt = _Recorder(student), _Recorder(teacher)
    batch = toy_batch()
    batch["input_1"] = batch["input"] + 1.0
    d(batch)
    assert rs.inputs[-1] is batch["input"] and rt.inputs[-1] is batch["input"]


def test_different_views_feed_the_teacher_its_own_copy():
    student, teacher = TinyNet(width=2), TinyNet(width=6)
    d = Distiller(student, teacher, [build_method("simreg")], example_input=toy_batch()["input"],
                  input_fields={"default": "input_1"})
    rs, rt = _Recorder(student), _Recorder(teacher)
    batch = toy_batch()
    batch["input_1"] = torch.randn_like(batch["input"])
    d(batch)
    assert rs.inputs[-1] is batch["input"] and rt.inputs[-1] is batch["input_1"]
    assert not torch.equal(rs.inputs[-1], rt.inputs[-1])
    del batch["input_1"]
    with pytest.raises(DataError, match="input_1"):
        d(batch)


def test_views_through_the_config_and_the_data_pipeline(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    raw = {"task": "self_supervised", "data": {"name": "shapes", "augment": "resized_crop_flip", "batch_size": 4,
                                               "options": {"num_classes": 3, "image_size": 16, "train_size": 8,
                                                           "test_size": 4}},
           "student": {"name": "resnet8"},
           "teachers": {"t": {"model": "resnet8", "num_classes": 3, "random_init": True}},
           "distill": {"terms": [{"method": "simreg", "from_teacher": "t"}]}, "train": {"epochs": 1}}
    same = build_run(load_config(data=raw))
    sample = same.train_set[0]
    assert set(sample) == {"input", "label", "index"}
    diff_raw = copy.deepcopy(raw)
    diff_raw["data"]["copies"] = 2
    diff_raw["teachers"]["t"]["input_field"] = "input_1"
    diff = build_run(load_config(data=diff_raw))
    sample2 = diff.train_set[0]
    # copy 0 is unchanged by adding copies; copy 1 is augmented independently
    assert torch.equal(sample2["input"], sample["input"])
    assert not torch.equal(sample2["input_1"], sample2["input"])
    again = diff.train_set[0]
    assert torch.equal(again["input_1"], sample2["input_1"])                     # a pure function of (seed, epoch, index, copy)
    rs, rt = _Recorder(diff.distiller.student), _Recorder(diff.distiller.teachers["t"])
    from torch.utils.data import default_collate
    batch = default_collate([diff.train_set[i] for i in range(4)])
    diff.distiller.train()
    diff.distiller(batch)
    assert torch.equal(rs.inputs[-1], batch["input"]) and torch.equal(rt.inputs[-1], batch["input_1"])
    # a field the data does not make is refused before any work
    bad = copy.deepcopy(diff_raw)
    bad["data"]["copies"] = 1
    with pytest.raises(ConfigError, match="data.copies: 2"):
        build_run(load_config(data=bad))


def test_augmented_copies_are_pure_functions_of_seed_epoch_index_and_copy():
    from crossdistill.data import create_dataset
    from crossdistill.data.seeded import AugmentedDataset
    from crossdistill.data.transforms import build_train_transform

    ds = create_dataset("shapes", "train", num_classes=3, image_size=16, train_size=4)
    one = AugmentedDataset(ds, build_train_transform(ds.info, "resized_crop_flip"), seed=5)
    three = AugmentedDataset(ds, build_train_transform(ds.info, "resized_crop_flip"), seed=5, copies=3)
    a = three[2]
    assert torch.equal(a["input"], one[2]["input"])            # copy 0 is what it was without copies
    assert not torch.equal(a["input_1"], a["input_2"]) and set(a) == {"input", "input_1", "input_2", "label"}
    three.set_epoch(1)
    b = three[2]
    assert not torch.equal(a["input_1"], b["input_1"])         # a new epoch draws new copies
    three.set_epoch(0)
    assert all(torch.equal(a[k], three[2][k]) for k in a)       # and the old epoch comes back exactly


# ------------------------------------------------------------------------------------------ training and export
def _train_raw(tmp_path, **distill):
    return {"name": "simreg", "output_dir": str(tmp_path / "run"), "task": "self_supervised",
            "data": {"name": "shapes", "batch_size": 16, "augment": "resized_crop_flip",
                     "options": {"num_classes": 3, "image_size": 16, "train_size": 64, "test_size": 16}},
            "student": {"name": "resnet8"},
            "teachers": {"t": {"model": "vgg8", "num_classes": 3, "random_init": True}},
            "distill": {"terms": [{"method": "simreg", "from_teacher": "t", **distill}]},
            "train": {"epochs": 1, "progress": False, "precision": "fp32", "optimizer": {"lr": 0.05}}}


def test_simreg_lowers_its_loss_in_a_few_steps():
    torch.manual_seed(0)
    student, teacher = TinyNet(width=2), TinyNet(width=6)
    d = Distiller(student, teacher, [build_method("simreg")], example_input=toy_batch()["input"])
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    d.train()
    batch = toy_batch(n=32)
    losses = []
    for _ in range(30):
        loss, _ = d(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_exported_student_has_no_head(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.checkpoint import load_checkpoint
    from crossdistill.engine.trainer import Trainer
    from crossdistill.models import create_model

    run = build_run(load_config(data=_train_raw(tmp_path)))
    Trainer(run).fit()
    ckpt = load_checkpoint(tmp_path / "run" / "student.pt")
    bare = create_model("resnet8", num_classes=ckpt["model_spec"]["num_classes"], in_channels=3)
    assert set(ckpt["student"]) == set(bare.state_dict())
    assert not any("head" in k for k in ckpt["student"])
    # the training checkpoint holds the head (to resume), the student file does not
    train_state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["distiller"]
    assert any(k.startswith("terms.0.heads.0.") for k in train_state)


# ------------------------------------------------------------------------------------------ bad input (CLI)
TRAIN_YAML = """
name: simreg-bad
output_dir: {out}
task: self_supervised
data:
  name: shapes
  options: {{num_classes: 3, image_size: 16, train_size: 32, test_size: 16}}
  batch_size: 16
student: {{name: resnet8}}
teachers:
  a: {{model: {teacher}, num_classes: 3, random_init: true{field}}}
distill:
  terms:
    - {{method: simreg, from_teacher: {names}{options}}}
train: {{epochs: 1, progress: false}}
"""


@pytest.mark.parametrize("case", ["teacher_not_configured", "no_pooled_feature", "weights_per_teacher", "copy_not_made"])
def test_train_bad_simreg_config_is_one_line_and_writes_nothing(tmp_path, case):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = dict(out=out, teacher="vgg8", field="", names="[a]", options="")
    if case == "teacher_not_configured":
        args["names"], want = "[a, b]", "reads teacher 'b', but the teachers are: a"
    elif case == "no_pooled_feature":
        args["teacher"], want = "dense_resnet_xs", "cannot resolve '@pooled'"
    elif case == "weights_per_teacher":
        args["options"], want = ", teacher_weights: [1, 2]", "one per teacher"
    else:
        args["field"], want = ", input_field: input_1", "set data.copies: 2"
    (tmp_path / "cfg.yaml").write_text(TRAIN_YAML.format(**args))
    r = subprocess.run([sys.executable, "-m", "crossdistill.cli", "train", str(tmp_path / "cfg.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], r.stderr
    assert not out.exists()


def test_list_methods_shows_simreg_and_the_self_supervised_objectives(capsys):
    from crossdistill.cli import main

    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    for name in ("simreg", "simclr", "simsiam"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert main(["list", "tasks"]) == 0 and "self_supervised" in capsys.readouterr().out
