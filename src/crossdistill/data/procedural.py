"""``"shapes"``: a built-in procedural classification dataset that needs no files.

Each class is a combination of **shape** (disc, square, triangle, ring, cross, bar, hexagon,
semicircle, ellipse, star), **hue** and **texture** (solid, stripes, checker), sometimes also a
base rotation (square vs. diamond). Every image draws the shape at a random position, size, aspect
and rotation, with colour jitter, over a cluttered background (a smooth random colour field, a faint
random grating, small distractor shapes of random colour) plus brightness/contrast jitter and pixel
noise. The jitter ranges make a few class pairs genuinely confusable, so a small CNN does *not*
reach 100 % and distillation has room to matter:

- disc (red) vs. hexagon (orange): hues overlap and a small hexagon looks round at 32×32;
- disc vs. ring of the same colour: thick rings have small holes;
- square vs. diamond: rotation jitter of ±25° around 0° and 45° overlaps near ±22°;
- solid vs. striped triangle: the stripe contrast can be low, and the background has gratings too.

Classes beyond the ten hand-picked ones enumerate further (shape, hue, texture) combinations in a
fixed order (up to 240 classes). Class definitions never depend on the seed; the seed only draws the
images. Train and test come from different random streams (derived from ``seed`` and the split
name), so the splits are disjoint draws of the same distribution. All images are rendered at
construction, vectorised in torch, and stored as uint8; inputs are normalised with the mean/std of a
reference draw (same for both splits, independent of the split).
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .registry import DatasetInfo, register_dataset
from .wrappers import InMemoryDataset, check_split, positive_int, resolve_options

SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar", "hexagon", "semicircle", "ellipse", "star")
TEXTURES = ("solid", "stripes", "checker")
NUM_HUES = 8

# (shape, hue in [0, 1), texture, base rotation in degrees): the ten default classes.
_CURATED: Tuple[Tuple[str, float, str, float], ...] = (
    ("disc", 0.0, "solid", 0.0),
    ("ring", 0.0, "solid", 0.0),
    ("square", 0.625, "solid", 0.0),
    ("square", 0.625, "solid", 45.0),      # "diamond"
    ("triangle", 0.375, "solid", 0.0),
    ("triangle", 0.375, "stripes", 0.0),
    ("cross", 0.15, "solid", 0.0),
    ("star", 0.15, "solid", 0.0),
    ("hexagon", 0.06, "solid", 0.0),
    ("bar", 0.5, "solid", 0.0),
)

HUE_JITTER = 0.05
ROT_JITTER_DEG = 25.0


@lru_cache(maxsize=None)
def class_table(num_classes: int) -> Tuple[Tuple[str, float, str, float], ...]:
    """The (shape, hue, texture, base rotation) of each class, fixed for a given ``num_classes``."""
    table: List[Tuple[str, float, str, float]] = list(_CURATED)
    used = {(s, round(h * NUM_HUES) % NUM_HUES, t) for s, h, t, r in _CURATED if r == 0.0}
    for t in TEXTURES:
        for hi in range(NUM_HUES):
            for s in SHAPES:
                if len(table) >= num_classes:
                    break
                if (s, hi, t) not in used:
                    table.append((s, hi / NUM_HUES, t, 0.0))
    if num_classes > len(table):
        raise ConfigError(f"dataset 'shapes': num_classes={num_classes} is more than the {len(table)} it can draw")
    return tuple(table[:num_classes])


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the previous setting.

    The generators run thousands of small elementwise ops; with 2 intra-op threads on a
    shared 2-core machine a busy core stalls every op (measured: 0.4 s → 10–30 s for the same
    6000 images), whereas one thread is steady. Results are identical either way.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from a key: independent streams for (dataset, split, seed)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------- rendering helpers

def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """[N] each → [N, 3]."""
    h = (h % 1.0) * 6.0
    k = torch.stack([(5 + h) % 6, (3 + h) % 6, (1 + h) % 6], dim=-1)
    f = (torch.minimum(k, 4 - k)).clamp(0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def _polygon(u: Tensor, v: Tensor, sides: int, apothem: float, phase: float = 0.0) -> Tensor:
    d = None
    for i in range(sides):
        a = phase + 2 * math.pi * i / sides
        p = u * math.cos(a) + v * math.sin(a)
        d = p if d is None else torch.maximum(d, p)
    return d - apothem


def _sdf(shape: str, u: Tensor, v: Tensor, p: Tensor) -> Tensor:
    """Signed distance (approximately, in local units: the shape has radius ~1) of one shape type.

    ``p`` is a per-image shape parameter in [0, 1] (ring hole size, arm width, ...).
    """
    au, av = u.abs(), v.abs()
    if shape == "disc":
        return torch.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return torch.maximum(au, av) - 0.8
    if shape == "triangle":
        return _polygon(u, v, 3, 0.5, phase=math.pi / 2)
    if shape == "ring":
        inner = 0.25 + 0.35 * p
        return (torch.sqrt(u * u + v * v) - (1 + inner) / 2).abs() - (1 - inner) / 2
    if shape == "cross":
        w = 0.22 + 0.15 * p
        return torch.minimum(torch.maximum(au - 1, av - w), torch.maximum(au - w, av - 1))
    if shape == "bar":
        w = 0.22 + 0.15 * p
        return torch.maximum(au - 1, av - w)
    if shape == "hexagon":
        return _polygon(u, v, 6, 0.87)
    if shape == "semicircle":
        vv = v - 0.4
        return torch.maximum(torch.sqrt(u * u + vv * vv) - 1.0, vv)
    if shape == "ellipse":
        return torch.sqrt(u * u + (v / (0.45 + 0.15 * p)) ** 2) - 1.0
    if shape == "star":
        r = torch.sqrt(u * u + v * v)
        ang = torch.atan2(v, u)
        return r - (0.62 + 0.38 * torch.cos(5 * ang))
    raise ValueError(shape)


def _coverage(sdf_local: Tensor, radius_px: Tensor) -> Tensor:
    """Anti-aliased coverage from a local-unit SDF and the shape radius in pixels ([N,1,1])."""
    return (0.5 - sdf_local * radius_px).clamp(0.0, 1.0)


def render_shapes(
    labels: Tensor, num_classes: int, image_size: int, generator: torch.Generator
) -> Tensor:
    """Render one image per label → float ``[N, 3, S, S]`` in [0, 1]."""
    n, s = labels.numel(), image_size
    g = generator
    table = class_table(num_classes)

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    lin = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    ys, xs = lin.view(1, s, 1), lin.view(1, 1, s)

    # ---- background: smooth colour field + faint grating
    base = rand(n, 3, 1, 1) * 0.6 + 0.2
    field = F.interpolate(rand(n, 3, 4, 4) - 0.5, size=(s, s), mode="bilinear", align_corners=False)
    img = (base + 0.5 * field).clamp(0, 1)
    g_ang = rand(n, 1, 1) * math.pi
    g_freq = (rand(n, 1, 1) * 0.5 + 0.25) * s / 2  # cycles per unit length
    g_amp = rand(n, 1, 1) * 0.12
    grating = torch.sin(math.pi * g_freq * (xs * torch.cos(g_ang) + ys * torch.sin(g_ang)) + rand(n, 1, 1) * 6.3)
    img = img + (g_amp * grating)[:, None]

    # ---- distractors: small discs / bars / squares of random colour
    for _ in range(2):
        present = (rand(n) < 0.7).float().view(n, 1, 1)
        kind = torch.randint(0, 3, (n,), generator=g)
        cx, cy = rand(n, 1, 1) * 1.8 - 0.9, rand(n, 1, 1) * 1.8 - 0.9
        rad = rand(n, 1, 1) * 0.15 + 0.1
        ang = rand(n, 1, 1) * math.pi
        dx, dy = xs - cx, ys - cy
        u = (dx * torch.cos(ang) + dy * torch.sin(ang)) / rad
        v = (-dx * torch.sin(ang) + dy * torch.cos(ang)) / rad
        d = torch.where(
            (kind == 0).view(n, 1, 1), torch.sqrt(u * u + v * v) - 1,
            torch.where((kind == 1).view(n, 1, 1), torch.maximum(u.abs() - 1, v.abs() - 0.3),
                        torch.maximum(u.abs(), v.abs()) - 0.8))
        a = _coverage(d, rad * s / 2) * present
        col = _hsv_to_rgb(rand(n), rand(n) * 0.8, rand(n) * 0.7 + 0.3).view(n, 3, 1, 1)
        img = img + (col - img) * a[:, None]

    # ---- the class shape
    shape_id = torch.tensor([SHAPES.index(t[0]) for t in table])[labels]
    hue = torch.tensor([t[1] for t in table])[labels]
    tex_id = torch.tensor([TEXTURES.index(t[2]) for t in table])[labels]
    rot0 = torch.tensor([math.radians(t[3]) for t in table])[labels]

    cx, cy = (rand(n) * 0.7 - 0.35).view(n, 1, 1), (rand(n) * 0.7 - 0.35).view(n, 1, 1)
    scale = (rand(n) * 0.3 + 0.3).view(n, 1, 1)            # radius as a fraction of half the side
    aspect = torch.exp((rand(n) - 0.5) * 0.4).view(n, 1, 1)  # ≈ 0.82 … 1.22
    theta = (rot0 + math.radians(ROT_JITTER_DEG) * (rand(n) * 2 - 1)).view(n, 1, 1)
    param = rand(n).view(n, 1, 1)
    dx, dy = xs - cx, ys - cy
    c, sn = torch.cos(theta), torch.sin(theta)
    u = (c * dx + sn * dy) / (scale * aspect)
    v = (-sn * dx + c * dy) / (scale / aspect)

    sdf = torch.empty(n, s, s)
    for sid in shape_id.unique().tolist():
        idx = (shape_id == sid).nonzero().squeeze(1)
        sdf[idx] = _sdf(SHAPES[sid], u[idx], v[idx], param[idx])
    alpha = _coverage(sdf, scale * s / 2)

    col1 = _hsv_to_rgb(hue + HUE_JITTER * (rand(n) * 2 - 1), rand(n) * 0.45 + 0.55, rand(n) * 0.45 + 0.55)
    col2 = col1 * (rand(n, 1) * 0.3 + 0.3)
    period = (rand(n, 1, 1) * 1.5 + 3.0) / (scale * s / 2)   # 3–4.5 px, in local units
    phase = rand(n, 1, 1) * 6.3
    contrast = rand(n, 1, 1) * 0.6 + 0.3
    light = (u * torch.cos(phase) + v * torch.sin(phase)).clamp_(-1, 1).mul_(0.25).add_(1.0)
    fg = col1.view(n, 3, 1, 1) * light[:, None]
    textured = (tex_id > 0).nonzero().squeeze(1)
    if textured.numel():  # only the textured classes pay for the pattern
        ut, vt, pt, ph = u[textured], v[textured], period[textured], phase[textured]
        wave = torch.sin(2 * math.pi * ut / pt + ph)
        checker = (tex_id[textured] == 2).view(-1, 1, 1)
        pattern = torch.where(checker, (wave * torch.sin(2 * math.pi * vt / pt) > 0).float(), 0.5 + 0.5 * wave)
        pattern = pattern * contrast[textured]
        diff = (col2 - col1)[textured].view(-1, 3, 1, 1)
        fg[textured] += diff * (pattern * light[textured])[:, None]
    img = img + (fg - img) * alpha[:, None]

    # ---- global photometric jitter + sensor noise
    contrast_g = (rand(n) * 0.5 + 0.75).view(n, 1, 1, 1)
    bright = (rand(n) * 0.3 - 0.15).view(n, 1, 1, 1)
    img = (img - 0.5) * contrast_g + 0.5 + bright
    sigma = (rand(n) * 0.06 + 0.02).view(n, 1, 1, 1)
    img = img + sigma * torch.randn(n, 3, s, s, generator=g)
    return img.clamp_(0, 1)


def _to_uint8(img: Tensor, in_channels: int) -> Tensor:
    if in_channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        img = (img * w).sum(1, keepdim=True)
    return (img * 255).round_().to(torch.uint8)


def _balanced_labels(n: int, num_classes: int, g: torch.Generator) -> Tensor:
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=g)]


def _generate(n: int, num_classes: int, image_size: int, in_channels: int, seed_key: int,
              chunk: int = 256) -> Tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed_key)
    labels = _balanced_labels(n, num_classes, g)
    with single_thread():
        parts = [
            _to_uint8(render_shapes(labels[i:i + chunk], num_classes, image_size, g), in_channels)
            for i in range(0, n, chunk)
        ]
    images = torch.cat(parts) if parts else torch.empty(0, in_channels, image_size, image_size, dtype=torch.uint8)
    return images, labels


@lru_cache(maxsize=32)
def _stats(num_classes: int, image_size: int, in_channels: int, seed: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    images, _ = _generate(512, num_classes, image_size, in_channels, stream_seed("shapes", "stats", seed))
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


DEFAULTS = dict(num_classes=10, image_size=32, train_size=5000, test_size=1000, in_channels=3, seed=0)


class ShapesDataset(InMemoryDataset):
    """See the module docstring. Fields: ``input`` (normalised), ``label``."""

    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options("shapes", options, DEFAULTS)
        check_split("shapes", split)
        k = positive_int(o["num_classes"], "shapes", "num_classes", 2)
        size = positive_int(o["image_size"], "shapes", "image_size", 8)
        n = positive_int(o[f"{split}_size"], "shapes", f"{split}_size", 1)
        seed = o["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"dataset 'shapes': option seed={seed!r} must be an int")
        if o["in_channels"] not in (1, 3):
            raise ConfigError(f"dataset 'shapes': option in_channels={o['in_channels']!r} must be 1 or 3")
        c = o["in_channels"]
        class_table(k)  # validates num_classes
        images, labels = _generate(n, k, size, c, stream_seed("shapes", split, seed))
        mean, std = _stats(k, size, c, seed)
        info = DatasetInfo(
            num_classes=k, in_channels=c, image_size=(size, size), fields=("input", "label"),
            mean=mean, std=std,
        )
        super().__init__(info, {"input": images, "label": labels})
        self.split = split
        self.class_names = tuple(
            f"{tex}-{shape}-h{hue:.2f}" + (f"-r{int(rot)}" if rot else "") for shape, hue, tex, rot in class_table(k)
        )


register_dataset("shapes")(ShapesDataset)
