"""Small models for fast tests (the zoo has its own tests)."""
import torch
import torch.nn as nn


class TinyNet(nn.Module):
    """conv stages + pool + fc, following the zoo's conventions (feature_layers, pooled_layer)."""

    def __init__(self, num_classes=5, in_channels=3, width=8):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)
        self.feature_layers = ("layer1", "layer2", "layer3")
        self.pooled_layer = "pool"
        self.classifier = "fc"

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))


def toy_batch(n=16, classes=5, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += y.view(-1, 1, 1).float() / classes  # learnable signal
    return {"input": x, "label": y, "index": torch.arange(n)}


class PlainNet(nn.Module):
    """TinyNet without BatchNorm: under DDP its forward does not depend on how the global batch is
    split over processes, so a 2-process run must match a 1-process run up to rounding."""

    def __init__(self, num_classes=5, in_channels=3, width=8):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)
        self.feature_layers = ("layer1", "layer2", "layer3")
        self.pooled_layer = "pool"

    def forward(self, x):
        return self.fc(self.pool(self.layer3(self.layer2(self.layer1(x)))))


def register_test_models() -> None:
    """``test_plainnet`` in the model registry, for configs run by tests (and tests/ddp_worker.py)."""
    from crossdistill.models import MODELS, register_model

    if "test_plainnet" not in MODELS:
        register_model("test_plainnet")(PlainNet)
