"""How the two spaces meet.

A projector is a small trainable module that is used only during distillation and dropped
afterwards. Its *direction* is the choice that Learning to Project is about:

- ``standard``: student → teacher space; the loss compares ``P(z_s)`` with ``z_t``.
- ``inverted``: teacher → student space; the loss compares ``z_s`` with ``P(z_t)``. Sitting on the
  teacher side, ``P`` can learn to drop teacher directions that do not help the student.
- ``identity``: no projector (shapes must already agree).

Vectors ``[B, D]`` are joined with a linear layer, feature maps ``[B, C, H, W]`` with a 1×1 conv
(optionally conv-BN, as FitNet's regressor), and the projected map is resized to the *student's*
spatial size in both directions. Shapes come from one dry-run forward (see ``Distiller``).

Token tensors ``[B, N, C]`` (a vision transformer's blocks) are joined with a linear layer over the
channel axis, shared by every token (conv-BN: that layer, then BatchNorm over the channels). Before
any projection, :func:`align_layouts` puts the teacher's tensor in the student's layout — the
generic tokens ↔ map step (:mod:`crossdistill.tokens`):

- student map, teacher tokens: the teacher's patch tokens become a map (class/distillation tokens
  dropped, square grid inferred), then the map path above (1×1 conv, resized to the student's size);
- student tokens, teacher map: the teacher's map is resized to the student's patch grid and
  flattened to tokens; the student's patch tokens (prefix tokens dropped) are compared with it;
- both tokens: as they are when the token counts agree (class token against class token), else
  both sides' patch tokens, the teacher's grid resized to the student's.

Readings of the projector (:class:`ProjectorOptions`, the option ``projector_options`` of every
method that builds a :class:`Projector`; docs/cross_task.md says where each comes from):

- ``norm: batchnorm`` — BatchNorm *without* affine parameters on both compared tensors, after the
  projection and before the distance ("Understanding the role of the projector in KD");
- ``orthogonal: true`` — the linear / 1×1 map is orthogonally parametrised
  (``torch.nn.utils.parametrizations.orthogonal``; semi-orthogonal when the widths differ; VkD);
- ``weight_decay: x`` — the projector's own weight decay. It reaches the optimiser as a
  per-parameter hint (:func:`set_weight_decay`) that ``Distiller.parameter_groups`` turns into a
  parameter group; decay is what lets a projector shrink directions towards rank deficiency;
- ``bias: true`` — a bias on the map (the AAAI paper's linear projector has one);
- ``log_singular_values: k`` — the projector logs its top-k singular values, its effective rank
  and its numerical rank every step (:meth:`Projector.spectrum_logs`); 0 (the default) logs
  nothing: each reading is an SVD per step, a device synchronisation on a GPU.
"""
from __future__ import annotations

from typing import Dict, Iterable, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from .errors import ConfigError, ShapeError
from .tokens import as_map, is_tokens, map_to_tokens, patch_tokens, token_grid

DIRECTIONS = ("standard", "inverted", "identity")
#: the attribute a parameter carries when it wants its own weight decay (see ``set_weight_decay``)
WEIGHT_DECAY_HINT = "crossdistill_weight_decay"
#: singular values below this fraction of the largest do not count towards the numerical rank
RANK_TOL = 1e-2


class ProjectorOptions(BaseModel):
    """How a projector is built beyond its direction and kind (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    norm: Literal["none", "batchnorm"] = "none"
    orthogonal: bool = False
    weight_decay: Optional[float] = Field(None, ge=0)  # None: the optimiser's weight decay
    bias: bool = False
    log_singular_values: int = Field(0, ge=0)

    @classmethod
    def coerce(cls, value: Union["ProjectorOptions", Dict, None]) -> "ProjectorOptions":
        """A dict (from Python or YAML) or None becomes validated options, with a one-line error."""
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(dict(value or {}))
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(p) for p in e["loc"])
            raise ConfigError(f"projector_options.{key}: {e['msg']} (got {e.get('input')!r}); valid keys: "
                              f"{', '.join(cls.model_fields)}") from None


def set_weight_decay(module: nn.Module, weight_decay: Optional[float]) -> None:
    """Give every parameter of ``module`` its own weight decay (None: leave the optimiser's).

    A hint on the parameter itself, so it survives ``.to(device)`` and needs no method-specific
    code anywhere: ``Distiller.parameter_groups`` reads it when the optimiser is built."""
    if weight_decay is None:
        return
    for p in module.parameters():
        setattr(p, WEIGHT_DECAY_HINT, float(weight_decay))


def singular_value_summary(sv: Tensor, top: int, prefix: str = "projector") -> Dict[str, Tensor]:
    """Logs of a spectrum ``sv`` (descending): ``{prefix}_sv/<i>`` for the top ``top`` values,
    ``{prefix}_erank`` — the effective rank ``exp(−Σ p_i log p_i)``, ``p_i = σ_i / Σ σ_j``
    (Roy & Vetterli 2007; 1 for rank one, r for r equal values) — and ``{prefix}_rank``, the number
    of ``σ_i > RANK_TOL · σ_1``."""
    sv = sv.detach().float()
    out = {f"{prefix}_sv/{i}": sv[i] for i in range(min(top, sv.numel()))}
    total = sv.sum()
    if float(total) > 0:
        p = sv / total
        entropy = -(p * p.clamp_min(1e-30).log()).sum()
        out[f"{prefix}_erank"] = entropy.exp()
        out[f"{prefix}_rank"] = (sv > RANK_TOL * sv[0]).sum().float()
    else:
        out[f"{prefix}_erank"] = sv.new_zeros(())
        out[f"{prefix}_rank"] = sv.new_zeros(())
    return out


class PointwiseConv(nn.Module):
    """A 1×1 convolution held as an ``nn.Linear`` (``[out, in]`` weight), so that matrix
    parametrisations such as ``orthogonal`` apply to it as the matrix it is."""

    def __init__(self, c_in: int, c_out: int, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)


def match_spatial(x: Tensor, size: Tuple[int, ...]) -> Tensor:
    """Resize a feature map to ``size`` (bilinear; area when shrinking); vectors pass through."""
    if x.dim() != 4 or tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = "area" if x.shape[-2] >= size[0] and x.shape[-1] >= size[1] else "bilinear"
    x = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x  # resized values are loss inputs: float32
    if mode == "area" and x.shape[-2] % size[0] == 0 and x.shape[-1] % size[1] == 0:
        # an integer factor: area interpolation is exactly average pooling, which is ~30 % cheaper on CPU
        return F.avg_pool2d(x, (x.shape[-2] // size[0], x.shape[-1] // size[1]))
    return F.interpolate(x, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def pool_to_vector(x: Tensor) -> Tensor:
    """A feature map ``[B, C, H, W]`` becomes ``[B, C]`` (global average), tokens ``[B, N, C]`` the
    mean over all their tokens ``[B, C]``; vectors pass through."""
    if is_tokens(x):
        return x.mean(dim=1)
    return x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)


def align_layouts(z_s: Tensor, z_t: Tensor) -> Tuple[Tensor, Tensor]:
    """The teacher's tensor in the student's layout, before any projection (module docstring):
    tokens ↔ map, patch tokens only when the grids must be matched. Vectors and same-layout maps
    pass through unchanged."""
    if is_tokens(z_t) and z_s.dim() == 4:
        return z_s, as_map(z_t)
    if is_tokens(z_s) and (z_t.dim() == 4 or (is_tokens(z_t) and z_t.shape[1] != z_s.shape[1])):
        _, side = token_grid(z_s.shape[1])
        return patch_tokens(z_s), map_to_tokens(match_spatial(as_map(z_t), (side, side)))
    return z_s, z_t


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel (last) axis of tokens ``[B, N, C]`` (statistics over batch and tokens)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            return super().forward(x)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def linear_map(in_shape: torch.Size, out_shape: torch.Size, kind: str = "linear", bias: bool = False,
               orthogonal: bool = False) -> nn.Module:
    """A learned map from features shaped ``in_shape`` to ``out_shape`` (batch dim excluded)."""
    if len(in_shape) == 1 and len(out_shape) == 1:
        layer = nn.Linear(in_shape[0], out_shape[0], bias=bias)
        return nn.utils.parametrizations.orthogonal(layer) if orthogonal else layer
    if len(in_shape) == 2 and len(out_shape) == 2:
        # tokens [N, C]: one linear map over the channels, shared by every token
        layer = nn.Linear(in_shape[-1], out_shape[-1], bias=bias)
        if orthogonal:
            nn.utils.parametrizations.orthogonal(layer)
        return nn.Sequential(layer, TokenBatchNorm(out_shape[-1])) if kind == "conv_bn" else layer
    if len(in_shape) == 3 and len(out_shape) == 3:
        if orthogonal:
            conv = PointwiseConv(in_shape[0], out_shape[0], bias=bias)
            nn.utils.parametrizations.orthogonal(conv.linear)
        else:
            conv = nn.Conv2d(in_shape[0], out_shape[0], kernel_size=1, bias=bias)
        if kind == "conv_bn":
            return nn.Sequential(conv, nn.BatchNorm2d(out_shape[0]))
        return conv
    raise ShapeError(
        f"no projector joins a feature of shape {tuple(in_shape)} to one of shape {tuple(out_shape)}: "
        "tap layers that are both vectors, or feature maps / token tensors"
    )


class Projector(nn.Module):
    """Maps one side into the other's space; ``forward(z_s, z_t) -> (z_s', z_t')``.

    After the call both tensors have the same shape: the compared pair. ``options``
    (:class:`ProjectorOptions` or a dict) holds the readings listed in the module docstring.
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size, direction: str = "standard",
                 kind: str = "linear", options: Union[ProjectorOptions, Dict, None] = None):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ConfigError(f"unknown projector '{direction}': valid choices: {', '.join(DIRECTIONS)}")
        self.direction = direction
        self.options = o = ProjectorOptions.coerce(options)
        s, t = torch.Size(student_shape), torch.Size(teacher_shape)
        if len(s) >= 2 and len(t) >= 2:  # tokens / maps: the shapes after the layout step
            z_s, z_t = align_layouts(torch.empty((1, *s), device="meta"), torch.empty((1, *t), device="meta"))
            s, t = z_s.shape[1:], z_t.shape[1:]
        ch = -1 if len(s) == 2 else 0  # the channel axis (tokens: last)
        if direction == "identity":
            self.map = nn.Identity()
            if s[ch] != t[ch] or len(s) != len(t):
                raise ShapeError(
                    f"student feature {tuple(s)} and teacher feature {tuple(t)} differ and the projector is "
                    "'identity': use projector=standard or projector=inverted"
                )
        elif direction == "standard":
            self.map = linear_map(s, t, kind, o.bias, o.orthogonal)
        else:
            self.map = linear_map(t, s, kind, o.bias, o.orthogonal)
        set_weight_decay(self.map, o.weight_decay)
        # the compared space: the teacher's for "standard", the student's otherwise
        compared = t if direction == "standard" else s
        if o.norm == "batchnorm":
            bn = {1: nn.BatchNorm1d, 2: TokenBatchNorm}.get(len(compared), nn.BatchNorm2d)
            width = compared[-1] if len(compared) == 2 else compared[0]
            self.norm_s, self.norm_t = bn(width, affine=False), bn(width, affine=False)

    def forward(self, z_s: Tensor, z_t: Tensor) -> Tuple[Tensor, Tensor]:
        z_s, z_t = align_layouts(z_s, z_t)
        if self.direction == "standard":
            z_s = self.map(z_s)
        elif self.direction == "inverted":
            z_t = self.map(z_t)
        size = z_s.shape[-2:] if z_s.dim() == 4 else None
        if size is not None:
            z_t = match_spatial(z_t, size)
        if self.options.norm == "batchnorm":
            z_s, z_t = self.norm_s(z_s), self.norm_t(z_t)
        return z_s, z_t

    def weight_matrix(self) -> Optional[Tensor]:
        """The learned linear part as a matrix ``[out, in·k·k]`` (the first Linear / conv of the map,
        after any parametrisation); None for the identity."""
        for m in self.map.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                return m.weight.flatten(1)
        return None

    @torch.no_grad()
    def singular_values(self) -> Optional[Tensor]:
        """Singular values of :meth:`weight_matrix`, descending (None for the identity)."""
        w = self.weight_matrix()
        return None if w is None else torch.linalg.svdvals(w.detach().float())

    def spectrum_logs(self, prefix: str = "projector") -> Dict[str, Tensor]:
        """What the method logs about this projector each step (``options.log_singular_values``)."""
        top = self.options.log_singular_values
        sv = self.singular_values() if top > 0 else None
        return {} if sv is None else singular_value_summary(sv, top, prefix)


def spectrum_logs(projectors: Iterable[Projector], prefix: str = "projector") -> Dict[str, Tensor]:
    """:meth:`Projector.spectrum_logs` of several projectors (``{prefix}<i>_...`` when more than one)."""
    projectors = [p for p in projectors if isinstance(p, Projector)]
    if len(projectors) == 1:
        return projectors[0].spectrum_logs(prefix)
    out: Dict[str, Tensor] = {}
    for i, p in enumerate(projectors):
        out.update(p.spectrum_logs(f"{prefix}{i}"))
    return out


class MLPHead(nn.Module):
    """A deep MLP head (SimReg / BYOL / SimCLR style): widths ``hidden`` then ``out``; Linear+BN+ReLU
    between layers, none after the last. Dropped after training.

    ``plain``: indices of hidden layers that get no BN+ReLU (a biased Linear alone) — SimReg's
    released code leaves layer 1 (the second) of its 4-layer head bare. ``input_norm``: a
    BatchNorm1d on the input first — the released code's "linear" head is BN + Linear.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, plain: Sequence[int] = (),
                 input_norm: bool = False):
        super().__init__()
        dims = (int(in_dim), *(int(h) for h in hidden))
        bad = [i for i in plain if not 0 <= i < len(dims) - 1]
        if bad:
            raise ConfigError(f"MLPHead: plain layer index {bad[0]} is not one of the {len(dims) - 1} hidden layer(s)")
        layers: list[nn.Module] = [nn.BatchNorm1d(dims[0])] if input_norm else []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if i in plain:
                layers.append(nn.Linear(a, b))
            else:
                layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-1], int(out_dim)))
        self.net = nn.Sequential(*layers)

    @property
    def widths(self) -> Tuple[int, ...]:
        """Input width, then the output width of every Linear: ``(in, *hidden, out)``."""
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        return (linears[0].in_features, *(m.out_features for m in linears))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(pool_to_vector(x))
