"""Tasks (loss + metrics against hand-computed values) and the dense encoder–decoder models."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from crossdistill.errors import DataError
from crossdistill.models import create_model
from crossdistill.models.dense import ResnetGenerator
from crossdistill.tasks import create_task
from crossdistill.tasks.depth import silog_loss


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is fastest, and two spin badly on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _metrics(task, output, batch, *more):
    m = task.metrics()
    task.update_metrics(m, output, batch)
    for out, b in zip(more[::2], more[1::2]):
        task.update_metrics(m, out, b)
    return task.compute_metrics(m)


# --------------------------------------------------------------------------- classification


def test_classification_loss_and_accuracy():
    task = create_task("classification", num_classes=3)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    batch = {"label": torch.tensor([0, 2])}
    ce = ((math.log(math.e**2 + math.e + 1) - 2) + (math.log(1 + math.e**3 + math.e) - 1)) / 2
    assert task.loss(logits, batch).item() == pytest.approx(ce, rel=1e-6)
    assert _metrics(task, logits, batch) == {"acc": pytest.approx(0.5)}
    assert task.output_channels() == 3 and task.primary_metric == "acc" and task.higher_is_better


def test_classification_top5_kept_apart_from_top1():
    task = create_task("classification", num_classes=10)
    logits = torch.arange(10.0).flip(0).repeat(3, 1)  # class 0 ranked first, class 9 last
    perfect = (logits[:1], {"label": torch.tensor([0])})  # top-1 == top-5 on the first batch
    rest = (logits, {"label": torch.tensor([0, 4, 7])})  # ranks 1, 5, 8
    res = _metrics(task, *perfect, *rest)
    assert res["acc"] == pytest.approx(2 / 4) and res["acc5"] == pytest.approx(3 / 4)


# --------------------------------------------------------------------------- segmentation

SEG_MASK = torch.tensor([[[0, 1, 1], [2, 255, 0]]])
SEG_PRED = torch.tensor([[[0, 1, 0], [2, 2, 0]]])  # the ignored pixel predicts class 2


def _onehot_logits(pred, k, scale=5.0):
    return scale * torch.nn.functional.one_hot(pred, k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("k", [3, 4])  # with k=4, class 3 is absent from both and left out
def test_segmentation_miou_pixel_acc_ignore(k):
    task = create_task("segmentation", num_classes=k)
    res = _metrics(task, _onehot_logits(SEG_PRED, k), {"mask": SEG_MASK})
    # IoU: class 0 = 2/3 (one FP), class 1 = 1/2 (one FN), class 2 = 1 (the FP sits on an ignored pixel)
    assert res["miou"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, abs=1e-6)
    assert res["pixel_acc"] == pytest.approx(4 / 5)


def test_segmentation_loss_ignores_255_and_resizes():
    task = create_task("segmentation", num_classes=3)
    logits = _onehot_logits(SEG_PRED, 3)
    z = math.log(math.exp(5) + 2)
    expected = (4 * (z - 5) + z) / 5  # 4 right, 1 wrong, 1 ignored
    assert task.loss(logits, {"mask": SEG_MASK}).item() == pytest.approx(expected, rel=1e-6)
    logits2 = logits.clone()
    logits2[:, :, 1, 1] = torch.tensor([9.0, -3.0, 1.0])  # change only the ignored pixel
    assert task.loss(logits2, {"mask": SEG_MASK}).item() == pytest.approx(expected, rel=1e-6)
    all_ignored = {"mask": torch.full_like(SEG_MASK, 255)}
    assert task.loss(logits, all_ignored).item() == 0.0
    small = torch.randn(2, 3, 4, 4, requires_grad=True)  # logits at half the mask's size
    loss = task.loss(small, {"mask": torch.randint(0, 3, (2, 8, 8))})
    loss.backward()
    assert torch.isfinite(loss) and small.grad is not None


# --------------------------------------------------------------------------- depth

DEPTH_GT = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])
DEPTH_PRED = torch.tensor([[[[1.0, 3.0], [4.0, 7.0]]], [[[5.0, 5.0], [5.0, 5.0]]], [[[2.4] * 2] * 2]])


def test_depth_metrics_per_image_on_valid_pixels():
    task = create_task("depth")
    out = DEPTH_PRED.log()  # the model predicts log-depth
    res = _metrics(task, out[:2], {"depth": DEPTH_GT[:2]}, out[2:], {"depth": DEPTH_GT[2:]})
    # image 0: errors 0, 1, 0 on three valid pixels; image 1: no valid pixel (skipped); image 2: +20 %
    assert res["abs_rel"] == pytest.approx((0.5 / 3 + 0.2) / 2, rel=1e-5)
    assert res["rmse"] == pytest.approx((math.sqrt(1 / 3) + 0.4) / 2, rel=1e-5)
    assert res["delta1"] == pytest.approx((2 / 3 + 1) / 2, rel=1e-5)
    assert task.primary_metric == "delta1" and task.higher_is_better and task.output_channels() == 1
    # two "ranks" merged through the states' reduce functions (what a DDP sync does) agree
    rank0, rank1 = task.metrics(), task.metrics()
    task.update_metrics(rank0, out[:2], {"depth": DEPTH_GT[:2]})
    task.update_metrics(rank1, out[2:], {"depth": DEPTH_GT[2:]})
    for name, metric in rank0.items():
        metric.merge_state(rank1[name])
    assert task.compute_metrics(rank0) == pytest.approx(res)


def test_depth_silog_loss_formula():
    task = create_task("depth")
    d = [0.0, math.log(1.5), 0.0] + [math.log(1.2)] * 4
    md2, md = sum(x * x for x in d) / 7, sum(d) / 7
    expected = 10 * math.sqrt(md2 - 0.5 * md**2)
    assert task.loss(DEPTH_PRED.log(), {"depth": DEPTH_GT}).item() == pytest.approx(expected, rel=1e-5)
    # with lambda = 1 the loss ignores a global scale of the prediction
    gt, logp = DEPTH_GT[2:], torch.tensor([[[[0.1, 0.7], [0.3, 0.9]]]])
    shifted = silog_loss(logp + 0.4, gt, lam=1.0).item()
    assert shifted == pytest.approx(silog_loss(logp, gt, lam=1.0).item(), rel=1e-4)
    assert task.loss(DEPTH_PRED.log(), {"depth": torch.zeros_like(DEPTH_GT)}).item() == 0.0


# --------------------------------------------------------------------------- translation


def test_translation_loss_psnr_ssim():
    task = create_task("translation")
    target = torch.full((2, 3, 16, 16), 0.5)
    out = torch.full_like(target, math.log(0.6 / 0.4))  # sigmoid(out) = 0.6
    assert task.loss(out, {"translation": target}).item() == pytest.approx(0.1, rel=1e-5)
    res = _metrics(task, out, {"translation": target})
    assert res["psnr"] == pytest.approx(10 * math.log10(1 / 0.1**2), rel=1e-4)
    c1 = (0.01 * 1.0) ** 2  # constant images: SSIM reduces to the luminance term
    assert res["ssim"] == pytest.approx((2 * 0.6 * 0.5 + c1) / (0.6**2 + 0.5**2 + c1), rel=1e-4)
    assert "torchvision" not in sys.modules


# --------------------------------------------------------------------------- all tasks

TASK_CASES = {
    "classification": (5, lambda: torch.randn(2, 5), {"label": torch.tensor([1, 4])}),
    "segmentation": (3, lambda: torch.randn(2, 3, 8, 8), {"mask": torch.randint(0, 3, (2, 8, 8))}),
    "depth": (None, lambda: torch.randn(2, 1, 8, 8), {"depth": torch.rand(2, 1, 8, 8) + 0.1}),
    "translation": (None, lambda: torch.randn(2, 3, 16, 16), {"translation": torch.rand(2, 3, 16, 16)}),
}


@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_missing_target_raises_data_error(name):
    k, make, batch = TASK_CASES[name]
    task = create_task(name, num_classes=k)
    with pytest.raises(DataError, match=task.target_key):
        task.loss(make(), {"input": torch.zeros(1), "other": torch.zeros(1)})
    with pytest.raises(DataError):
        task.update_metrics(task.metrics(), make(), {"input": torch.zeros(1)})


@pytest.mark.parametrize("name", sorted(TASK_CASES))
def test_bf16_output_gives_float32_loss_and_metrics(name):
    k, make, batch = TASK_CASES[name]
    task = create_task(name, num_classes=k)
    out = make().bfloat16()
    loss = task.loss(out, batch)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    res = _metrics(task, out, batch)
    assert task.primary_metric in res and all(math.isfinite(v) for v in res.values())


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["dense_resnet_xs", "dense_resnet_s", "dense_resnet_m"])
def test_dense_model_shapes_and_feature_paths(name):
    model = create_model(name, num_classes=5, in_channels=3)
    for h, w in [(64, 64), (32, 32)] + ([(33, 45)] if name.endswith("xs") else []):
        assert model(torch.randn(2, 3, h, w)).shape == (2, 5, h, w)
    for path in (*model.feature_layers, model.encoder_layer, model.classifier):
        model.get_submodule(path)
    assert model.feature_layers == ("encoder.stage1", "encoder.stage2", "encoder.stage3")
    shapes = {}
    for p in model.feature_layers:
        model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: shapes.__setitem__(p, o.shape[-1]))
    model(torch.randn(1, 3, 64, 64))
    assert [shapes[p] for p in model.feature_layers] == [32, 16, 8]


def test_dense_model_under_bf16_autocast_gives_float32_loss():
    model = create_model("dense_resnet_xs", num_classes=3)
    task = create_task("segmentation", num_classes=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 32, 32))
    loss = task.loss(out, {"mask": torch.randint(0, 3, (2, 32, 32))})
    loss.backward()
    assert loss.dtype == torch.float32 and model.head.conv.weight.grad is not None


def test_resnet_generator_layout_and_block_key_alias():
    torch.manual_seed(0)
    g = create_model("cyclegan_resnet_generator", num_classes=3, ngf=8, n_blocks=3, norm="instance_affine")
    keys = list(g.state_dict())
    assert keys[:2] == ["model.1.weight", "model.1.bias"] and "model.10.conv_block.1.weight" in keys
    assert "model.12.conv_block.6.weight" in keys and keys[-1] == "model.20.bias"  # 3 blocks: last conv at 20
    assert g.feature_layers == ("model.9", "model.11") and g.encoder_layer == "model.11"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert g(x).shape == (2, 3, 32, 32)
    # a checkpoint naming the residual branch "block" (e.g. vintagify's) loads strictly
    sd = {k.replace(".conv_block.", ".block."): v for k, v in g.state_dict().items()}
    ref = ResnetGenerator(ngf=8, n_blocks=3, norm="instance_affine", output="tanh")
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():  # sigmoid of the "logits" output is exactly the tanh image mapped to [0, 1]
        torch.testing.assert_close(torch.sigmoid(g(x)), (ref(x) + 1) / 2, atol=1e-6, rtol=0)
    with torch.device("meta"):  # the CycleGAN default size, without paying for its initialisation
        assert sum(p.numel() for p in ResnetGenerator().parameters()) == 11_378_179


# --------------------------------------------------------------------------- a few training steps


@pytest.mark.parametrize("name", ["segmentation", "depth", "translation"])
def test_few_adam_steps_lower_the_task_loss(name):
    torch.manual_seed(0)
    # a smooth image (bilinear from 8×8): the dense models predict at 1/2 resolution, then upsample
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8), size=32, mode="bilinear", align_corners=False)
    batch = {
        "input": x,
        "mask": (x[:, 0] > 0.5).long() + (x[:, 1] > 0.5).long(),
        "depth": 1.0 + 4.0 * x[:, 2:3],
        "translation": x.flip(1),
    }
    task = create_task(name, num_classes=3 if name == "segmentation" else None)
    model = create_model("dense_resnet_xs", num_classes=task.output_channels())
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(15):
        loss = task.loss(model(x), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
