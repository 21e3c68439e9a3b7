"""The vision transformers of the zoo: timm's key layout and sizes, the token taps, a training step."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from crossdistill.models import create_model, list_models
from crossdistill.models.vit import VisionTransformer

# Parameters at 1000 classes as timm reports them (timm's results tables; torchvision's ViT-B/16: 86,567,656).
PUBLISHED = {
    "vit_tiny_patch16_224": 5.72, "vit_small_patch16_224": 22.05, "vit_base_patch16_224": 86.57,
    "deit_tiny_patch16_224": 5.72, "deit_small_patch16_224": 22.05, "deit_base_patch16_224": 86.57,
    "deit_tiny_distilled_patch16_224": 5.91, "deit_small_distilled_patch16_224": 22.44,
    "deit_base_distilled_patch16_224": 87.34,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_timm(name):
    with torch.device("meta"):  # sizes only: no memory, no init time
        model = create_model(name, num_classes=1000)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PUBLISHED[name]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in model.state_dict().values())


def test_timm_key_layout():
    keys = set(create_model("deit_tiny_distilled_patch16_224", num_classes=10).state_dict())
    expected = {"cls_token", "dist_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
        expected |= {f"blocks.11.{part}.weight", f"blocks.11.{part}.bias"}
    assert expected <= keys
    assert not {k for k in keys if not k.startswith(("blocks.0.", "blocks.1", "blocks.2", "blocks.3", "blocks.4",
                                                     "blocks.5", "blocks.6", "blocks.7", "blocks.8", "blocks.9"))} - expected


def _capture(model: nn.Module, paths, x):
    seen = {}
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o)) for p in paths]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_small_image_taps_shapes():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_32", num_classes=10, depth=4).eval()
    paths = [*model.feature_layers, model.pooled_layer, model.cls_layer, model.tokens_layer, model.token_map_layer]
    out, seen = _capture(model, paths, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert model.feature_layers == ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    assert all(seen[p].shape == (2, 65, 192) for p in model.feature_layers)
    assert seen["cls_pool"].shape == (2, 192) and seen["token_pool"].shape == (2, 192)
    grid = seen["token_grid"]
    assert grid.shape == (2, 192, 8, 8)
    # the map is the patch tokens in raster order; the pooled tokens are their mean
    tokens = model.forward_tokens(torch.randn(1, 3, 32, 32))
    assert torch.allclose(seen["token_pool"], grid.mean(dim=(2, 3)), atol=1e-6)
    assert tokens.shape == (1, 65, 192)
    # the head reads the class token
    assert torch.allclose(out, model.head(seen["cls_pool"]), atol=1e-6)


def test_taps_do_not_change_logits_and_attention_matches_reference():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_32", num_classes=5, depth=2, img_size=16).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
    out, _ = _capture(model, [model.token_map_layer, model.tokens_layer], x)
    assert torch.equal(out, plain)

    # the same network written out by hand (softmax(q kᵀ / √d) v per head), for the attention maths
    def reference(x):
        t = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([model.cls_token.expand(len(x), -1, -1), t], 1) + model.pos_embed
        for blk in model.blocks:
            y = blk.norm1(t)
            b, n, c = y.shape
            h = blk.attn.num_heads
            q, k, v = blk.attn.qkv(y).split(c, dim=-1)
            q, k, v = (z.reshape(b, n, h, c // h).transpose(1, 2) for z in (q, k, v))
            a = torch.softmax(q @ k.transpose(-1, -2) / (c // h) ** 0.5, dim=-1) @ v
            t = t + blk.attn.proj(a.transpose(1, 2).reshape(b, n, c))
            t = t + blk.mlp.fc2(torch.nn.functional.gelu(blk.mlp.fc1(blk.norm2(t))))
        return model.head(model.norm(t)[:, 0])

    with torch.no_grad():
        assert torch.allclose(plain, reference(x), atol=1e-5)


def test_distilled_model_averages_its_two_heads():
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", num_classes=7, depth=1, img_size=32).eval()
    out, seen = _capture(model, [model.dist_layer, model.cls_layer, model.dist_head, "head"], torch.randn(2, 3, 32, 32))
    assert seen["dist_pool"].shape == (2, 192) and seen["head_dist"].shape == (2, 7)
    assert torch.allclose(out, (seen["head"] + seen["head_dist"]) / 2, atol=1e-6)


def test_other_input_sizes_and_grayscale():
    model = create_model("vit_tiny_patch4_32", num_classes=10, in_channels=1, depth=1).eval()
    out, seen = _capture(model, [model.token_map_layer], torch.randn(2, 1, 28, 28))  # position embedding resized
    assert out.shape == (2, 10) and seen["token_grid"].shape == (2, 192, 7, 7)
    model = create_model("vit_tiny_patch4_32", num_classes=10, in_channels=1, depth=1, img_size=28)
    assert model.pos_embed.shape == (1, 50, 192)


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_32", num_classes=4, depth=2, embed_dim=64, num_heads=4,
                         drop_path_rate=0.1).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.patch_embed.proj.weight.grad is not None and model.cls_token.grad is not None


def test_bad_options_are_one_config_error():
    from crossdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="img_size"):
        create_model("vit_tiny_patch4_32", img_size=30)
    with pytest.raises(ConfigError, match="num_heads"):
        create_model("vit_tiny_patch4_32", num_heads=5)


def test_listed():
    names = set(list_models())
    assert set(PUBLISHED) | {"vit_tiny_patch4_32", "vit_small_patch4_32"} <= names
    out = subprocess.run([sys.executable, "-m", "crossdistill.cli", "list", "models"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "vit_tiny_patch4_32" in out.stdout.split() and "deit_base_distilled_patch16_224" in out.stdout.split()
    assert isinstance(create_model("vit_small_patch4_32", num_classes=3, depth=1), VisionTransformer)


def test_a_vit_student_learns_from_a_cnn_teacher_on_built_in_data(tmp_path):
    """The config path end to end: a ViT student, a (random) CNN teacher, KD, two steps on shapes."""
    from crossdistill.build import build_run
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    overrides = [
        "student.name=vit_tiny_patch4_32", "student.options={depth: 2, embed_dim: 64, num_heads: 2}",
        "data.options={num_classes: 10, image_size: 32, train_size: 64, test_size: 32}", "data.batch_size=16",
        "data.num_workers=0", "teachers={default: {model: resnet8, num_classes: 10, random_init: true}}",
        "distill.terms=[{method: kd, weight: 0.9, T: 4}]", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.optimizer={name: adamw, lr: 0.001, weight_decay: 0.05}", "train.precision=fp32", "train.progress=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    run = build_run(load_config(RECIPES / "quickstart/student.yaml", overrides))
    summary = Trainer(run).fit()
    assert summary["last"]["step"] == 2 and 0 <= summary["last"]["acc"] <= 1
