"""Dense encoder–decoders (segmentation / depth / translation) and the CycleGAN ResNet generator.

``DenseResNet``: a small ResNet encoder and a U-Net-lite decoder, output at input resolution::

    encoder.stem   1/2   conv3x3(stride 2)-BN-ReLU      w
    encoder.stage1 1/2   BasicBlock                     w
    encoder.stage2 1/4   BasicBlock(stride 2)           2w
    encoder.stage3 1/8   BasicBlock(stride 2)           4w   ← encoder_layer (bottleneck)
    decoder.up3    1/8 → 1/4   1×1 to 2w, bilinear upsample, add stage2, conv3x3-BN-ReLU
    decoder.up2    1/4 → 1/2   1×1 to w, bilinear upsample, add stage1 (no conv: see below)
    head           1×1 conv → num_classes at 1/2, then bilinear resize to the input size

Nothing runs at full resolution but the stem's input and the head's output: on a 2-core CPU the
full-resolution layers of a classic U-Net cost more than the rest of the net together, and a conv
at 1/2 after the last skip another ~12 %. So the output is smooth at the scale of 2 pixels (fine
for 64×64 scenes, depth and segmentation; fine texture in translation is the weak spot). Hooking
``head`` gives the full-resolution output.

``ResnetGenerator``: the CycleGAN ResNet generator (Zhu et al. 2017), laid out in one ``nn.Sequential``
``model`` so that state-dict keys are the standard ``model.1.weight``,
``model.10.conv_block.1.weight``, ... Checkpoints that name the residual branch ``block`` instead of
``conv_block`` (e.g. the ``vintagify`` package) load too: the block renames those keys on load.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .registry import register_model


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class DenseEncoder(nn.Module):
    def __init__(self, in_channels: int, widths: Tuple[int, int, int, int]):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = _conv_bn_relu(in_channels, w0, stride=2)
        self.stage1 = BasicBlock(w0, w1)
        self.stage2 = BasicBlock(w1, w2, stride=2)
        self.stage3 = BasicBlock(w2, w3, stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.stage1(self.stem(x))
        f2 = self.stage2(f1)
        return [f1, f2, self.stage3(f2)]


class UpFuse(nn.Module):
    """1×1 to the skip's width, bilinear upsample to its size, add it; then conv3x3-BN-ReLU if ``fuse``."""

    def __init__(self, cin: int, cskip: int, fuse: bool = True):
        super().__init__()
        self.reduce = nn.Conv2d(cin, cskip, 1, bias=False)
        self.fuse = _conv_bn_relu(cskip, cskip) if fuse else nn.Identity()

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(x + skip)


class DenseDecoder(nn.Module):
    def __init__(self, widths: Tuple[int, int, int, int]):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.up3 = UpFuse(w3, w2)  # 1/8 → 1/4
        self.up2 = UpFuse(w2, w1, fuse=False)  # 1/4 → 1/2

    def forward(self, feats: list[Tensor]) -> Tensor:
        f1, f2, f3 = feats
        return self.up2(self.up3(f3, f2), f1)


class DenseHead(nn.Module):
    """1×1 conv at 1/2 resolution, then bilinear resize of the (few-channel) output to ``size``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, size) -> Tensor:
        # The 1×1 conv as a matmul: oneDNN's conv with 1–3 output channels is slow on CPU
        # (backward included, 15 % of dense_resnet_s's step).
        w = self.conv.weight.flatten(1).to(x.dtype)
        y = torch.einsum("oc,bchw->bohw", w, x) + self.conv.bias.to(x.dtype).view(1, -1, 1, 1)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class DenseResNet(nn.Module):
    feature_layers = ("encoder.stage1", "encoder.stage2", "encoder.stage3")
    encoder_layer = "encoder.stage3"
    classifier = "head"

    def __init__(self, num_classes: int = 1, in_channels: int = 3, width: int = 16):
        super().__init__()
        widths = (width, width, 2 * width, 4 * width)
        self.encoder = DenseEncoder(in_channels, widths)
        self.decoder = DenseDecoder(widths)
        self.head = DenseHead(widths[1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.head.conv.weight, std=0.01)
        nn.init.zeros_(self.head.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.decoder(self.encoder(x)), size=x.shape[-2:])


@register_model("dense_resnet_xs")
def dense_resnet_xs(num_classes: int = 1, in_channels: int = 3, **kw) -> DenseResNet:
    return DenseResNet(num_classes, in_channels, width=kw.pop("width", 8), **kw)


@register_model("dense_resnet_s")
def dense_resnet_s(num_classes: int = 1, in_channels: int = 3, **kw) -> DenseResNet:
    return DenseResNet(num_classes, in_channels, width=kw.pop("width", 16), **kw)


@register_model("dense_resnet_m")
def dense_resnet_m(num_classes: int = 1, in_channels: int = 3, **kw) -> DenseResNet:
    return DenseResNet(num_classes, in_channels, width=kw.pop("width", 32), **kw)


# --------------------------------------------------------------------------- CycleGAN generator


def _norm_layer(norm: str):
    if norm == "instance":  # the CycleGAN reference default: no affine, no running stats
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if norm == "instance_affine":  # e.g. vintagify's checkpoints
        return lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=False)
    if norm == "batch":
        return nn.BatchNorm2d
    raise ConfigError(f"unknown norm '{norm}': valid choices: batch, instance, instance_affine")


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm_layer, use_bias: bool):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), norm_layer(dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept checkpoints that call the residual branch "block" (same indices inside).
        for key in [k for k in state_dict if k.startswith(prefix + "block.")]:
            state_dict[prefix + "conv_block." + key[len(prefix + "block."):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class TanhAsLogit(nn.Module):
    """Returns ``2x`` so that ``sigmoid(2x) == (tanh(x) + 1) / 2``: the tanh image mapped to [0, 1]."""

    def forward(self, x: Tensor) -> Tensor:
        return 2.0 * x


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator; ``model`` indices (n_blocks=9)::

        0 pad3  1 conv7  2 norm  3 relu | 4 conv↓ 5 norm 6 relu | 7 conv↓ 8 norm 9 relu
        10..18 ResnetBlock | 19 convT↑ 20 norm 21 relu | 22 convT↑ 23 norm 24 relu | 25 pad3 26 conv7 27 out

    ``output="tanh"`` ends in ``nn.Tanh`` (image in [−1, 1], the reference). ``output="logits"`` ends
    in :class:`TanhAsLogit`, so that the translation task's sigmoid yields exactly ``(tanh + 1) / 2``;
    neither has parameters, so both load the same checkpoints. Inputs are expected in [−1, 1].
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", output: str = "tanh"):
        super().__init__()
        if n_blocks < 1:
            raise ConfigError(f"ResnetGenerator needs n_blocks >= 1, got {n_blocks}")
        if output not in ("tanh", "logits"):
            raise ConfigError(f"unknown output '{output}': valid choices: logits, tanh")
        norm_layer = _norm_layer(norm)
        use_bias = norm != "batch"
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=use_bias), norm_layer(ngf),
                  nn.ReLU(True)]
        for i in range(2):
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=use_bias), norm_layer(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm_layer, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=use_bias),
                       norm_layer(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7),
                   nn.Tanh() if output == "tanh" else TanhAsLogit()]
        self.model = nn.Sequential(*layers)
        # Tapped features: the end of the downsampling part and the middle residual block.
        self.feature_layers = ("model.9", f"model.{10 + n_blocks // 2}")
        self.encoder_layer = self.feature_layers[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@register_model("cyclegan_resnet_generator")
def cyclegan_resnet_generator(num_classes: int = 3, in_channels: int = 3, **kw) -> ResnetGenerator:
    kw.setdefault("output", "logits")  # crossdistill tasks apply their own output activation
    return ResnetGenerator(in_channels=in_channels, out_channels=num_classes, **kw)
