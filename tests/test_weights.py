"""Teachers (and students) from the files users download: torchvision, timm / DeiT, Hugging Face, SSL.

torchvision cannot run here (its CPU wheel lacks its operators), so its state dicts are written from
the published architecture definitions (torchvision/models/resnet.py, mobilenetv2.py,
vision_transformer.py): every key name and shape, filled with random numbers. The zoo's models must
take them as they are (strict), and give them back unchanged in torchvision's names.
"""
from __future__ import annotations

import subprocess
import sys
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn

from crossdistill.build import build_teacher
from crossdistill.config import TeacherConfig
from crossdistill.errors import CheckpointError, ConfigError
from crossdistill.models import create_model
from crossdistill.models.weights import fit_state, load_weights, read_state_dict, to_torchvision

Shapes = Dict[str, Tuple[int, ...]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------- torchvision's published layouts


def _bn(shapes: Shapes, name: str, c: int) -> None:
    shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
                   f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()})


def tv_resnet_shapes(depth: int, num_classes: int = 1000) -> Shapes:
    """torchvision.models.resnet{18,34,50}: conv1/bn1, layer1..4 of BasicBlock / Bottleneck, fc."""
    bottleneck, blocks = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3))}[depth]
    expansion = 4 if bottleneck else 1
    s: Shapes = {"conv1.weight": (64, 3, 7, 7)}
    _bn(s, "bn1", 64)
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            stride = 2 if (i > 0 and b == 0) else 1
            p = f"layer{i + 1}.{b}"
            if bottleneck:
                s[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                _bn(s, f"{p}.bn1", planes)
                s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(s, f"{p}.bn2", planes)
                s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                _bn(s, f"{p}.bn3", planes * 4)
            else:
                s[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                _bn(s, f"{p}.bn1", planes)
                s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                _bn(s, f"{p}.bn2", planes)
            if stride != 1 or inplanes != planes * expansion:
                s[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    s["fc.weight"], s["fc.bias"] = (num_classes, 512 * expansion), (num_classes,)
    return s


def tv_mobilenet_v2_shapes(num_classes: int = 1000) -> Shapes:
    """torchvision.models.mobilenet_v2: features.0 (conv-BN-ReLU6), 17 inverted residuals, features.18, classifier.1."""
    s: Shapes = {"features.0.0.weight": (32, 3, 3, 3)}
    _bn(s, "features.0.1", 32)
    cin, idx = 32, 1
    for t, c, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for _ in range(n):
            hidden, p, j = cin * t, f"features.{idx}.conv", 0
            if t != 1:
                s[f"{p}.0.0.weight"] = (hidden, cin, 1, 1)
                _bn(s, f"{p}.0.1", hidden)
                j = 1
            s[f"{p}.{j}.0.weight"] = (hidden, 1, 3, 3)
            _bn(s, f"{p}.{j}.1", hidden)
            s[f"{p}.{j + 1}.weight"] = (c, hidden, 1, 1)
            _bn(s, f"{p}.{j + 2}", c)
            cin, idx = c, idx + 1
    s["features.18.0.weight"] = (1280, 320, 1, 1)
    _bn(s, "features.18.1", 1280)
    s["classifier.1.weight"], s["classifier.1.bias"] = (num_classes, 1280), (num_classes,)
    return s


def tv_vit_b_16_shapes(num_classes: int = 1000, layers: int = 12) -> Shapes:
    """torchvision.models.vit_b_16: conv_proj, class_token, encoder.pos_embedding, encoder_layer_N, heads.head."""
    d, m = 768, 3072
    s: Shapes = {"conv_proj.weight": (d, 3, 16, 16), "conv_proj.bias": (d,), "class_token": (1, 1, d),
                 "encoder.pos_embedding": (1, 197, d)}
    for i in range(layers):
        p = f"encoder.layers.encoder_layer_{i}"
        s.update({f"{p}.ln_1.weight": (d,), f"{p}.ln_1.bias": (d,),
                  f"{p}.self_attention.in_proj_weight": (3 * d, d), f"{p}.self_attention.in_proj_bias": (3 * d,),
                  f"{p}.self_attention.out_proj.weight": (d, d), f"{p}.self_attention.out_proj.bias": (d,),
                  f"{p}.ln_2.weight": (d,), f"{p}.ln_2.bias": (d,),
                  f"{p}.mlp.0.weight": (m, d), f"{p}.mlp.0.bias": (m,), f"{p}.mlp.3.weight": (d, m), f"{p}.mlp.3.bias": (d,)})
    s.update({"encoder.ln.weight": (d,), "encoder.ln.bias": (d,), "heads.head.weight": (num_classes, d),
              "heads.head.bias": (num_classes,)})
    return s


def random_state(shapes: Shapes, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 100, (), generator=g) if k.endswith("num_batches_tracked")
                else torch.rand(v, generator=g) + 0.5 if k.endswith("running_var") else torch.randn(v, generator=g))
            for k, v in shapes.items()}


@pytest.mark.parametrize("model,options,shapes", [
    ("ResNet18", {"stem": "imagenet"}, lambda: tv_resnet_shapes(18)),
    ("ResNet34", {"stem": "imagenet"}, lambda: tv_resnet_shapes(34)),
    ("ResNet50", {"stem": "imagenet"}, lambda: tv_resnet_shapes(50)),
    ("mobilenet_v2", {}, tv_mobilenet_v2_shapes),
    ("vit_base_patch16_224", {}, tv_vit_b_16_shapes),
], ids=["resnet18", "resnet34", "resnet50", "mobilenet_v2", "vit_b_16"])
def test_torchvision_files_load_as_they_are_and_round_trip(tmp_path, model, options, shapes):
    tv = random_state(shapes())
    path = tmp_path / "tv.pth"
    torch.save(tv, path)
    net = create_model(model, num_classes=1000, **options)
    load_weights(net, path, "teacher", layout="torchvision")
    back = to_torchvision(net.state_dict())
    assert set(back) == set(tv)
    assert all(torch.equal(back[k], tv[k]) for k in tv)
    # and with auto, the same
    net2 = create_model(model, num_classes=1000, **options)
    load_weights(net2, path, "teacher")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))


def test_timm_deit_file_with_its_wrapper_gives_the_source_outputs(tmp_path):
    """DeiT's released files are ``{"model": state_dict}`` in timm's names (the zoo's own)."""
    torch.manual_seed(0)
    src = create_model("deit_tiny_distilled_patch16_224", num_classes=10, depth=2, img_size=32).eval()
    torch.save({"model": src.state_dict(), "epoch": 299}, tmp_path / "deit.pth")
    cfg = TeacherConfig(model="deit_tiny_distilled_patch16_224", num_classes=10, options={"depth": 2, "img_size": 32},
                        weights=str(tmp_path / "deit.pth"), weights_layout="timm")
    teacher = build_teacher("t", cfg, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), src(x))


def test_safetensors_file(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    src = create_model("resnet8", num_classes=10).eval()
    safetensors.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    net = load_weights(create_model("resnet8", num_classes=10), tmp_path / "w.safetensors", "teacher").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))


def test_old_crossdistill_resnet_names_still_load(tmp_path):
    torch.manual_seed(0)
    src = create_model("ResNet18", num_classes=10).eval()
    old = {("stem.0." + k[6:] if k.startswith("conv1.") else "stem.1." + k[4:] if k.startswith("bn1.") else k): v
           for k, v in src.state_dict().items()}
    assert "stem.0.weight" in old
    net = create_model("ResNet18", num_classes=10)
    net.load_state_dict(old)  # the model's own hook, also for torch-only users
    torch.save(old, tmp_path / "old.pt")
    net = load_weights(create_model("ResNet18", num_classes=10), tmp_path / "old.pt", "teacher",
                       layout="crossdistill").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))


# ------------------------------------------------------------------------------ self-supervised files


def _pooled(model, x):
    seen = {}
    h = model.get_submodule(model.pooled_layer).register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["p"]


def _moco_like(src: nn.Module) -> Dict[str, torch.Tensor]:
    """MoCo v2's file: module.encoder_q (with an MLP fc) and module.encoder_k (another network), a queue."""
    state = {}
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            state["module.encoder_q." + k] = v
            state["module.encoder_k." + k] = torch.randn_like(v.float()).to(v.dtype)
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.0.bias": torch.randn(512),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 512), "module.encoder_q.fc.2.bias": torch.randn(128),
                  "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return state


@pytest.mark.parametrize("layout,prefix", [("auto", None), ("ssl", None), ("ssl", "module.encoder_q.")])
def test_moco_checkpoint_gives_the_query_encoder(tmp_path, layout, prefix):
    torch.manual_seed(0)
    src = create_model("ResNet18", num_classes=1000, stem="imagenet").eval()
    torch.save({"state_dict": _moco_like(src), "epoch": 200, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    cfg = TeacherConfig(model="ResNet18", num_classes=1000, options={"stem": "imagenet"},
                        weights=str(tmp_path / "moco.pth.tar"), weights_layout=layout, strip_prefix=prefix)
    teacher = build_teacher("moco", cfg, 3).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_pooled(teacher, x), _pooled(src, x))
    assert torch.count_nonzero(teacher.fc.weight) == 0  # a backbone has no classifier


def test_dino_training_checkpoint_gives_the_teacher_backbone(tmp_path):
    torch.manual_seed(0)
    src = create_model("vit_tiny_patch4_32", num_classes=10, depth=2).eval()
    backbone = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    ckpt = {"teacher": {**{"backbone." + k: v for k, v in backbone.items()},
                        "head.mlp.0.weight": torch.randn(64, 192), "head.last_layer.weight_g": torch.randn(100, 1)},
            "student": {**{"module.backbone." + k: torch.randn_like(v) for k, v in backbone.items()},
                        "module.head.mlp.0.weight": torch.randn(64, 192)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}, "epoch": 100}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    model, notes = create_model("vit_tiny_patch4_32", num_classes=10, depth=2), None
    state, notes = fit_state(model, read_state_dict(tmp_path / "checkpoint.pth"), "ssl")
    assert any("teacher.backbone." in n for n in notes)
    model.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(_pooled(model.eval(), x), _pooled(src, x))


def test_a_wrong_prefix_is_one_line(tmp_path):
    torch.save(create_model("resnet8", num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="no key of .* starts with strip_prefix 'module.encoder_q.'"):
        load_weights(create_model("resnet8", num_classes=10), tmp_path / "w.pt", "teacher", "ssl", "module.encoder_q.")


def test_mismatch_counts_missing_and_unexpected(tmp_path):
    torch.save(create_model("resnet8", num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError) as e:
        load_weights(create_model("ResNet18", num_classes=10), tmp_path / "w.pt", "teacher 't'")
    msg = str(e.value)
    assert "\n" not in msg and "do not fit the teacher 't'" in msg
    assert "66 missing ['layer1.1." in msg and "of another shape" in msg
    torch.save(create_model("vgg8", num_classes=10).state_dict(), tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=r"\d+ missing \['layer1.*; \d+ unexpected \['"):
        load_weights(create_model("ResNet18", num_classes=10), tmp_path / "v.pt", "teacher 't'", "timm")


# --------------------------------------------------------------------------------- Hugging Face folders


def test_hf_vit_folder_is_a_zoo_vit_with_the_same_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=16, patch_size=4, num_labels=5)
    hf = transformers.ViTForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "vit")
    teacher = build_teacher("hf", TeacherConfig(weights=str(tmp_path / "vit")), 3).eval()
    from crossdistill.models.vit import VisionTransformer

    assert isinstance(teacher, VisionTransformer) and teacher.token_map_layer == "token_grid"
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(teacher(x), hf(pixel_values=x).logits, atol=1e-5)


def test_hf_deit_with_teacher_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     image_size=16, patch_size=8, num_labels=3)
    hf = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    hf.save_pretrained(tmp_path / "deit")
    teacher = build_teacher("hf", TeacherConfig(weights=str(tmp_path / "deit"), weights_layout="hf"), 3).eval()
    assert teacher.dist_token is not None
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(teacher(x), hf(pixel_values=x).logits, atol=1e-5)


def test_hf_folder_of_another_model_is_wrapped(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=4)
    hf = transformers.ResNetForImageClassification(config).eval()
    hf.save_pretrained(tmp_path / "resnet")
    teacher = build_teacher("hf", TeacherConfig(weights=str(tmp_path / "resnet")), 3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), hf(pixel_values=x).logits, atol=1e-5)


def test_hf_folder_naming_its_own_code_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoModel": "x.Model"}}')
    with pytest.raises(ConfigError, match="never runs code"):
        build_teacher("hf", TeacherConfig(weights=str(tmp_path / "m")), 3)


def test_weights_without_model_must_be_a_folder(tmp_path):
    torch.save(create_model("resnet8", num_classes=10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="needs model: NAME"):
        build_teacher("t", TeacherConfig(weights=str(tmp_path / "w.pt")), 3)


# -------------------------------------------------------------------------------------------- the CLI


def test_wrong_weights_file_is_one_line_from_the_cli(tmp_path):
    torch.save(create_model("vgg8", num_classes=10).state_dict(), tmp_path / "w.pt")
    args = ["train", "quickstart/kd", f"output_dir={tmp_path / 'run'}", "teachers.default.checkpoint=null",
            "teachers.default.model=ResNet18",
            "teachers.default.num_classes=10", "teachers.default.random_init=false",
            f"teachers.default.weights={tmp_path / 'w.pt'}", "teachers.default.weights_layout=torchvision"]
    res = subprocess.run([sys.executable, "-m", "crossdistill.cli", *args], capture_output=True, text=True, timeout=180)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "do not fit the teacher 'default'" in lines[0] and "missing" in lines[0] and "unexpected" in lines[0]


def test_a_student_starts_from_a_torchvision_file(tmp_path):
    from crossdistill.build import build_student
    from crossdistill.cli import RECIPES
    from crossdistill.config import load_config
    from crossdistill.tasks import create_task

    tv = random_state(tv_resnet_shapes(18, num_classes=10))
    torch.save({"state_dict": {"module." + k: v for k, v in tv.items()}}, tmp_path / "r18.pth")  # DataParallel's
    cfg = load_config(RECIPES / "quickstart/student.yaml", [
        "student.name=ResNet18", "student.options={stem: imagenet}", f"student.checkpoint={tmp_path / 'r18.pth'}",
        "student.checkpoint_layout=torchvision"])
    student, _ = build_student(cfg, create_task("classification", num_classes=10), 3)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in tv.items())


def test_imagenet_mobilenet_v2_follows_the_zoo_conventions():
    model = create_model("mobilenet_v2", num_classes=10).eval()
    assert sum(p.numel() for p in create_model("mobilenet_v2", num_classes=1000).parameters()) == 3_504_872
    seen = {}
    paths = ["stem", *model.feature_layers, model.pooled_layer]
    hooks = [model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o)) for p in paths]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 10) and model.get_submodule(model.classifier).out_features == 10
    assert seen["stem"].shape == (2, 32, 32, 32)
    assert [tuple(seen[p].shape[1:]) for p in model.feature_layers] == [(24, 16, 16), (32, 8, 8), (96, 4, 4), (1280, 2, 2)]
    assert seen["pool"].shape == (2, 1280)
    assert not any(getattr(m, "inplace", False) for m in model.modules())
