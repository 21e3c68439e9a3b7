"""Learning to Project: decomposition, teacher-free regulariser, cross-task teachers."""
import torch

from crossdistill.build import build_teacher
from crossdistill.config import TeacherConfig
from crossdistill.distiller import Distiller
from crossdistill.methods import build_method
from crossdistill.models import create_model
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch


def dense_pair(seed=0):
    torch.manual_seed(seed)
    student = create_model("dense_resnet_xs", num_classes=1)
    teacher = create_model("dense_resnet_s", num_classes=7)
    return student, teacher


def scene_batch(n=4, size=32):
    g = torch.Generator().manual_seed(1)
    return {"input": torch.randn(n, 3, size, size, generator=g),
            "depth": torch.rand(n, 1, size, size, generator=g) * 5 + 0.5}


def test_inverted_fitnet_logs_parts_that_sum_to_the_loss():
    student, teacher = dense_pair()
    d = Distiller(student, teacher, [build_method("fitnet", student="@encoder", teacher="@encoder",
                                                  projector="inverted", projector_kind="linear")],
                  task=create_task("depth"), example_input=scene_batch()["input"])
    _, parts = d(scene_batch())
    torch.testing.assert_close(parts["fitnet/transfer"] + parts["fitnet/spectral"], parts["fitnet"], rtol=1e-5, atol=1e-6)
    # the spectral part is the student's own energy: Σσ² / (N·d)
    s_feat = {}
    h = d.student.get_submodule("encoder.stage3").register_forward_hook(lambda m, i, o: s_feat.update(z=o))
    d.eval()
    _, parts = d(scene_batch())
    h.remove()
    z = s_feat["z"].movedim(1, -1).reshape(-1, s_feat["z"].shape[1])
    expected = torch.linalg.svdvals(z.double()).pow(2).sum() / z.numel()
    torch.testing.assert_close(parts["fitnet/spectral"].double(), expected, rtol=1e-4, atol=1e-7)


def test_inverted_projector_in_the_distiller_goes_teacher_to_student():
    student, teacher = dense_pair()
    d = Distiller(student, teacher, [build_method("fitnet", student="@encoder", teacher="@encoder", projector="inverted",
                                                  projector_kind="linear")], example_input=scene_batch()["input"])
    conv = d.terms[0].projector.map
    assert (conv.in_channels, conv.out_channels) == (64, 32)  # teacher stage3 (4·16) → student stage3 (4·8)
    d2 = Distiller(student, teacher, [build_method("fitnet", student="@encoder", teacher="@encoder", projector="standard",
                                                   projector_kind="linear")], example_input=scene_batch()["input"])
    conv = d2.terms[0].projector.map
    assert (conv.in_channels, conv.out_channels) == (32, 64)


class CountingNet(TinyNet):
    calls = 0

    def forward(self, x):
        CountingNet.calls += 1
        return super().forward(x)


def test_teacher_free_regulariser_runs_no_teacher_forward():
    teacher = CountingNet()
    d = Distiller(TinyNet(), teacher, [build_method("spectral", student="layer3")],
                  task=create_task("classification", 5), example_input=toy_batch()["input"])
    CountingNet.calls = 0
    loss, parts = d(toy_batch())
    assert CountingNet.calls == 0 and torch.isfinite(loss)
    # and it works with no teacher at all
    d = Distiller(TinyNet(), None, [build_method("spectral", student="layer3")], example_input=toy_batch()["input"])
    _, parts = d(toy_batch())
    assert "spectral" in parts


def test_teacher_free_regulariser_value_and_descent():
    net = TinyNet()
    d = Distiller(net, None, [build_method("spectral", student="layer3", k_frac=0.5, max_rows=10_000, solver="exact")],
                  example_input=toy_batch()["input"])
    feats = {}
    h = net.layer3.register_forward_hook(lambda m, i, o: feats.update(z=o))
    _, parts = d(toy_batch())
    h.remove()
    z = feats["z"].movedim(1, -1).reshape(-1, feats["z"].shape[1]).double()
    zc = z - z.mean(0)
    sv = torch.linalg.svdvals(zc).pow(2)
    k = int(torch.tensor(0.5 * min(zc.shape)).ceil())
    torch.testing.assert_close(parts["spectral"].double(), sv[k:].sum() / zc.shape[0], rtol=1e-4, atol=1e-6)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss, parts = d(toy_batch())
        loss.backward()
        opt.step()
        first = first if first is not None else parts["spectral"].item()
    assert parts["spectral"].item() < 0.8 * first


def test_random_teacher_is_reproducible_from_its_seed():
    cfg = TeacherConfig(model="dense_resnet_s", num_classes=7, random_init=True, seed=3)
    torch.manual_seed(123)
    a = build_teacher("t", cfg, 3)
    torch.manual_seed(456)  # the global RNG does not matter
    b = build_teacher("t", cfg, 3)
    c = build_teacher("t", TeacherConfig(model="dense_resnet_s", num_classes=7, random_init=True, seed=4), 3)
    for (k, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))


def test_cross_task_teacher_from_checkpoint_uses_its_encoder(tmp_path):
    from crossdistill.engine.trainer import export_student

    seg = create_model("dense_resnet_s", num_classes=7)
    spec = {"name": "dense_resnet_s", "options": {}, "num_classes": 7, "in_channels": 3, "task": "segmentation"}
    export_student(tmp_path / "seg.pt", seg, spec, {})
    teacher = build_teacher("default", TeacherConfig(checkpoint=str(tmp_path / "seg.pt")), 3)
    for k, v in seg.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v)
    student = create_model("dense_resnet_xs", num_classes=1)
    d = Distiller(student, teacher, [build_method("fitnet", student="@encoder", teacher="@encoder", projector="inverted")],
                  task=create_task("depth"), example_input=scene_batch()["input"])
    assert d.plans[0].teacher_paths == {"default": ["encoder.stage3"]}
    loss, _ = d(scene_batch())
    assert torch.isfinite(loss)


def test_subspace_solver_converges_to_the_exact_tail_energy_and_its_gradient():
    torch.manual_seed(0)
    z = torch.randn(64, 32, 4, 4) * torch.linspace(3, 0.1, 32).view(1, -1, 1, 1)
    fast = build_method("spectral", k_frac=0.5, max_rows=10_000)
    exact = build_method("spectral", k_frac=0.5, max_rows=10_000, solver="exact")
    fast.build([z], [])
    for _ in range(150):  # warm-started: one subspace iteration per call
        fast([z], [], {})
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    lf, le = fast([za], [], {}), exact([zb], [], {})
    lf.backward()
    le.backward()
    torch.testing.assert_close(lf, le, rtol=1e-3, atol=1e-5)
    assert (za.grad - zb.grad).norm() < 1e-2 * zb.grad.norm()
