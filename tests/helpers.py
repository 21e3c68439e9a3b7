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


class _TokenAt(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index

    def forward(self, tokens):
        return tokens[:, self.index]


class _PatchMean(nn.Module):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def forward(self, tokens):
        return tokens[:, self.prefix:].mean(1)


class _Grid(nn.Module):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix
        self.grid = (0, 0)

    def forward(self, tokens):
        p = tokens[:, self.prefix:]
        return p.transpose(1, 2).reshape(p.shape[0], p.shape[2], *self.grid)


class TinyViT(nn.Module):
    """A tiny vision transformer with the zoo's ViT conventions (models/vit.py): blocks return
    ``[B, N, C]`` tokens (class token first, then DeiT's distillation token when ``distilled``);
    ``feature_layers`` (block outputs), ``cls_layer`` = ``pooled_layer``, ``tokens_layer``,
    ``token_map_layer``, and with ``distilled`` a ``head_dist`` named by ``dist_head``; ``forward``
    returns the mean of both heads for a distilled model."""

    def __init__(self, num_classes=5, in_channels=3, dim=16, depth=2, patch=4, distilled=False):
        super().__init__()
        self.patch = patch
        self.prefix = 2 if distilled else 1
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, self.prefix, dim) * 0.02)
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True,
                                                                 norm_first=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.cls_pool, self.token_pool, self.token_grid = _TokenAt(0), _PatchMean(self.prefix), _Grid(self.prefix)
        self.head = nn.Linear(dim, num_classes)
        self.feature_layers = tuple(f"blocks.{i}" for i in range(depth))
        self.pooled_layer = self.cls_layer = "cls_pool"
        self.tokens_layer, self.token_map_layer, self.classifier = "token_pool", "token_grid", "head"
        if distilled:
            self.dist_pool = _TokenAt(1)
            self.head_dist = nn.Linear(dim, num_classes)
            self.dist_head = "head_dist"

    def forward(self, x):
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        tokens = self.norm(self.blocks(tokens))
        self.token_grid.grid = (h, w)
        self.token_pool(tokens)
        self.token_grid(tokens)
        logits = self.head(self.cls_pool(tokens))
        if self.prefix == 2:
            logits = (logits + self.head_dist(self.dist_pool(tokens))) / 2
        return logits
# -- the tiny run the CLI tests train -------------------------------------------------------------------
TINY_RUN = {
    "name": "tiny",
    "seed": 0,
    "data": {"name": "shapes", "options": {"num_classes": 4, "image_size": 16, "train_size": 64, "test_size": 32},
             "batch_size": 16},
    "student": {"name": "resnet8"},
    "teachers": {"default": {"model": "resnet8", "num_classes": 4, "random_init": True}},
    "distill": {"terms": [{"method": "kd", "T": 4}]},
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "device": "cpu", "precision": "fp32", "progress": False},
}


def _merged(base, changes):
    """``changes`` deep-merged into ``base``: mappings merge, other values replace, ``None`` deletes the key."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def tiny_run_yaml(out, **changes) -> str:
    """The YAML of a run that trains in seconds on built-in ``shapes`` data (4 classes, 16 px, resnet8
    student, a random resnet8 teacher, KD, 1 epoch of 2 steps on the CPU in fp32), written to ``out``;
    ``changes`` are top-level sections deep-merged into it (``train={"epochs": 3}``; ``None`` removes a
    key: ``train={"max_steps_per_epoch": None}``)."""
    import yaml

    return yaml.safe_dump(_merged({**TINY_RUN, "output_dir": str(out)}, changes), sort_keys=False)
