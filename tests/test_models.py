"""The CIFAR model zoo: sizes against the published table, and the conventions distillers rely on."""
from __future__ import annotations

import sys
from functools import lru_cache

import pytest
import torch
import torch.nn as nn

from crossdistill.errors import ConfigError
from crossdistill.models import create_model, list_models

ZOO = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2", "shufflenetv1", "shufflenetv2",
    "ResNet18", "ResNet34", "ResNet50",
]  # fmt: skip

# Millions of parameters at 100 classes, as published with the CRD benchmark (Tian et al. 2020, RepDistiller).
PUBLISHED_SIZES_M = {
    "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn_40_2": 2.26, "wrn_40_1": 0.57, "wrn_16_2": 0.70,
    "vgg13": 9.46, "vgg8": 3.97, "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet56": 0.86, "resnet20": 0.28, "resnet110": 1.74, "resnet32": 0.47, "ResNet50": 23.7,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _single_thread_then_free():
    # Tiny batches gain nothing from intra-op threads, and on a shared box the spinning threads hurt.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _model.cache_clear()  # ~0.5 GB of weights; free them for the rest of the session


@lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=100, in_channels=3).eval()


def _capture(model: nn.Module, paths: list[str], x: torch.Tensor):
    """Logits and ``{path: output}`` for each module path, read with forward hooks."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, o))
        for p in paths
    ]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def test_every_zoo_model_is_registered():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PUBLISHED_SIZES_M))
def test_parameter_count_matches_published(name):
    n = sum(p.numel() for p in _model(name).parameters()) / 1e6
    assert n == pytest.approx(PUBLISHED_SIZES_M[name], rel=0.01)


@pytest.mark.parametrize("name", ZOO)
def test_forward_and_tap_paths(name):
    torch.manual_seed(0)
    model = _model(name)
    for attr in ("feature_layers", "pooled_layer", "classifier"):
        assert hasattr(model, attr), attr
    assert model.pooled_layer == "pool"
    assert len(model.feature_layers) >= 3
    fc = model.get_submodule(model.classifier)
    assert isinstance(fc, nn.Linear) and fc.out_features == 100

    taps = ["stem", *model.feature_layers, model.pooled_layer]  # every zoo model names its stem `stem`
    out, seen = _capture(model, taps, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 100)
    pooled = seen["pool"]
    assert pooled.shape == (2, fc.in_features)
    # The final ReLU runs before `pool`, so the hooked vector is the real (non-negative) feature.
    assert pooled.min() >= 0
    sizes = [seen[p].shape[-1] for p in model.feature_layers]
    assert all(seen[p].dim() == 4 and seen[p].shape[0] == 2 for p in model.feature_layers)
    assert sizes == sorted(sizes, reverse=True), f"stages must go shallow to deep: {sizes}"


@pytest.mark.parametrize("name", ZOO)
def test_no_inplace_activations(name):
    # An in-place ReLU would rewrite a tensor that a hook on the preceding BN has already captured.
    assert not any(getattr(m, "inplace", False) for m in _model(name).modules())


@pytest.mark.parametrize(
    "name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2", "ResNet18"]
)
def test_grayscale_28px(name):
    model = create_model(name, num_classes=10, in_channels=1).eval()
    out, seen = _capture(model, [model.pooled_layer], torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert seen["pool"].shape == (2, model.get_submodule(model.classifier).in_features)


def test_backward_reaches_the_stem():
    model = create_model("resnet8", num_classes=10).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.stem[0].weight.grad is not None


def test_unknown_model_suggests_close_names():
    with pytest.raises(ConfigError):
        create_model("nope")
    with pytest.raises(ConfigError, match="resnet56"):
        create_model("resnet57")


def test_timm_adapter_reports_missing_timm(monkeypatch):
    from crossdistill.models.timm_adapter import create_timm_model

    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ConfigError, match="timm is not installed"):
        create_timm_model("resnet18", num_classes=10, in_channels=3)
