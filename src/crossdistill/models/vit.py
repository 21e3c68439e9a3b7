"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) and DeiT
(Touvron et al., "Training data-efficient image transformers & distillation through attention", ICML
2021), in timm's key layout so that timm / DeiT checkpoints load as they are:

``patch_embed.proj``, ``cls_token``, (``dist_token``), ``pos_embed``, ``blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head`` (and ``head_dist`` for DeiT's distilled models).

Sizes registered: ViT / DeiT Tiny, Small, Base at 224 px with 16-px patches (published parameter
counts at 1000 classes: 5.7M, 22.1M, 86.6M; distilled: 5.9M, 22.4M, 87.3M), and small-image variants
with 4-px patches for 32-px (and 28-px) inputs: ``vit_tiny_patch4_32``, ``vit_small_patch4_32``.
``img_size`` changes the input size a model is built for; an input of another size is accepted too
(the position embedding is resized bicubically, as timm's ``dynamic_img_size``).

Taps (module paths, all in the forward path; the three views of the last tokens do not change the
logits):

- ``feature_layers``: the outputs of four evenly spaced blocks, ``[B, N, C]`` token tensors (N counts
  the class/distillation tokens too)
- ``cls_layer`` = ``pooled_layer`` = ``"cls_pool"``: the normalised class token ``[B, C]`` (what the head reads)
- ``tokens_layer`` = ``"token_pool"``: the mean of the normalised patch tokens ``[B, C]``
- ``token_map_layer`` = ``"token_grid"``: the normalised patch tokens as a map ``[B, C, H/p, W/p]``
- distilled models also ``dist_layer`` = ``"dist_pool"`` (the distillation token ``[B, C]``) and
  ``dist_head`` = ``"head_dist"`` (its logits); ``forward`` returns the mean of both heads' logits, as DeiT
  does at test time.
"""
from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``×``patch`` patches, linearly embedded (one strided conv): ``[B, N, C]``."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention; q, k, v from one ``qkv`` Linear in that order (timm's and
    torchvision's ``in_proj`` order), computed by ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016): drops a residual branch with probability ``p``
    during training and rescales the kept ones; the identity at test time."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, eps: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TokenAt(nn.Module):
    """``x[:, index]``: one prefix token as a vector ``[B, C]`` (a named module so it can be tapped)."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.index]


class PatchTokenMean(nn.Module):
    """The mean of the patch tokens (prefix tokens skipped): ``[B, N, C]`` → ``[B, C]``."""

    def __init__(self, num_prefix: int):
        super().__init__()
        self.num_prefix = num_prefix

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.num_prefix:].mean(dim=1)


class TokenGrid(nn.Module):
    """The patch tokens laid out as the image's patch grid: ``[B, N, C]`` → ``[B, C, H, W]``.
    ``grid`` is set by the model for each forward (the input's size decides it)."""

    def __init__(self, num_prefix: int):
        super().__init__()
        self.num_prefix = num_prefix
        self.grid = (0, 0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        patches = tokens[:, self.num_prefix:]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)


class VisionTransformer(nn.Module):
    """ViT with class token (and, with ``distilled=True``, DeiT's distillation token and second head)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        distilled: bool = False,
        drop_path_rate: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size, self.embed_dim = img_size, patch_size, embed_dim
        self.num_prefix_tokens = 2 if distilled else 1
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + self.num_prefix_tokens, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay rule (timm, DeiT)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, eps, r) for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.cls_pool = TokenAt(0)
        self.token_pool = PatchTokenMean(self.num_prefix_tokens)
        self.token_grid = TokenGrid(self.num_prefix_tokens)
        self.head = nn.Linear(embed_dim, num_classes)
        if distilled:
            self.dist_pool = TokenAt(1)
            self.head_dist = nn.Linear(embed_dim, num_classes)

        step = depth / 4
        self.feature_layers: tuple[str, ...] = tuple(
            f"blocks.{max(round(step * (i + 1)) - 1, 0)}" for i in range(4)) if depth >= 4 else \
            tuple(f"blocks.{i}" for i in range(depth))
        self.pooled_layer = "cls_pool"
        self.classifier = "head"
        self.cls_layer = "cls_pool"
        self.tokens_layer = "token_pool"
        self.token_map_layer = "token_grid"
        if distilled:
            self.dist_layer = "dist_pool"
            self.dist_head = "head_dist"
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's defaults: truncated normal(0.02) for embeddings and Linear weights, zero biases
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # the patch projection as a Linear on the flattened patch (timm's lecun-normal variant aside)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The position embedding for an ``h``×``w`` patch grid (bicubic resize if it differs)."""
        pos = self.pos_embed
        n = self.num_prefix_tokens
        side = int(math.isqrt(pos.shape[1] - n))
        if (h, w) == (side, side):
            return pos
        grid = pos[:, n:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :n], grid.flatten(2).transpose(1, 2)], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, ``[B, prefix + H·W, C]``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed(x)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1) + self._pos_embed(h, w)
        self.token_grid.grid = (h, w)
        return self.norm(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        # the pooled patch tokens and their map are computed for taps only; the logits read the class token
        self.token_pool(tokens)
        self.token_grid(tokens)
        logits = self.head(self.cls_pool(tokens))
        if self.dist_token is not None:
            logits = (logits + self.head_dist(self.dist_pool(tokens))) / 2
        return logits


_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


def _vit(size: str, patch: int, img: int, distilled: bool = False):
    dim, depth, heads = _SIZES[size]

    def factory(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> VisionTransformer:
        options = dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                       distilled=distilled)
        options.update(kwargs)
        return VisionTransformer(num_classes=num_classes, in_channels=in_channels, **options)

    factory.__doc__ = (f"{'DeiT' if distilled else 'ViT'}-{size[0].upper()} ({dim}-d, {depth} blocks, {heads} heads), "
                       f"{patch}-px patches at {img} px{', distillation token' if distilled else ''}; options: "
                       "img_size, patch_size, depth, embed_dim, num_heads, mlp_ratio, drop_path_rate.")
    return factory


for _size in ("tiny", "small", "base"):
    register_model(f"vit_{_size}_patch16_224")(_vit(_size, 16, 224))
    register_model(f"deit_{_size}_patch16_224")(_vit(_size, 16, 224))  # same network as ViT; DeiT's recipe
    register_model(f"deit_{_size}_distilled_patch16_224")(_vit(_size, 16, 224, distilled=True))
for _size in ("tiny", "small"):
    register_model(f"vit_{_size}_patch4_32")(_vit(_size, 4, 32))

