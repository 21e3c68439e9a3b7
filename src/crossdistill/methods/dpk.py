"""DPK — Qiu et al. 2023: teacher feature patches as the student's input, their share set by the feature gap.

At every tapped stage (default ``@stages``) an alignment projector brings the student's and the
teacher's maps into one space; per-sample patch masks put teacher patches in place of student
patches; a small *generation block* maps the mixed map and regresses the teacher target (MSE). The
teacher *share* (expected fraction of teacher patches) is ``1 − EMA(CKA)`` by default, with CKA the
minibatch linear CKA of the stage's raw student and teacher maps under ``no_grad``: a large gap (low
CKA) gives much prior knowledge, and as the student closes the gap the task gets harder. Logit KD at
temperature ``T`` is added inside the term (``"output"`` is read on both sides after the stages);
the task loss stays. Choices and their reasons: ``docs/dpk.md``.

Directions (``projector``):

- ``standard`` (default): a 1×1 conv(-BN) maps the student into the teacher's space; the target is
  the raw teacher map (resized to the student's spatial size) — fixed, nothing trainable produces it.
- ``inverted``: a 1×1 conv maps the teacher into the student's space and the target is that map of
  the teacher. Since a trainable map produces the target, ``map → 0`` and ``generator → 0`` would be
  a trivial minimiser; the map is therefore constrained to be *semi-orthogonal* (orthonormal rows or
  columns, a QR parametrisation), so it cannot shrink the target: it is an isometry when the
  student is at least as wide as the teacher, and otherwise keeps at least the energy of the
  teacher's weakest directions (``tests/test_dpk.py`` shows the unprotected map collapsing).

State that must survive a resume is in buffers (``state_dict``): ``cka_ema`` per stage, the step
counter ``steps`` and the mask seed ``mask_seed`` (drawn from the torch RNG when the method is built,
i.e. from the run's seed). The masks of step ``n`` at stage ``i`` come from a generator seeded with
``(mask_seed, n, i, rank)``, so a resumed run draws the same masks. Logged every step:
``cka/<i>``, ``share/<i>``, ``loss/<i>`` (``i`` = index among the tapped stages) and ``kd``.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from pydantic import Field
from torch import Tensor
from torch.nn.utils import parametrize

from ..errors import ConfigError, ShapeError
from ..losses import hint_loss, kd_loss, linear_cka, mix_patches, patch_mask
from ..projectors import Projector
from .base import Method, as_list, register_method

Fraction = Annotated[float, Field(ge=0, le=1)]
PatchSize = Annotated[int, Field(gt=0)]
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One round of SplitMix64 (Steele et al. 2014): a bijective 64-bit mix, well spread."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mask_seed(seed: int, step: int, stage: int, rank: int = 0) -> int:
    """The generator seed of the masks of (``step``, ``stage``) on ``rank``: a pure function of its
    arguments, below 2⁶³. Each argument is added to the SplitMix64 hash of the ones before it, so two
    tuples collide only if two 64-bit hashes differ by exactly the difference of two small counters."""
    h = _splitmix64(seed & _MASK64)
    for v in (step, stage, rank):
        h = _splitmix64((h + v) & _MASK64)
    return h >> 1


class SemiOrthogonal(nn.Module):
    """Parametrisation of a ``[out, in, 1, 1]`` conv weight as a matrix with orthonormal rows
    (``out ≤ in``) or columns (``out > in``): the Q factor of a QR decomposition, with signs fixed so
    that R has a positive diagonal (unique and smooth in the free weight). ``‖W z‖ = ‖z‖`` for every
    ``z`` when ``out ≥ in``; ``W`` keeps a whole ``out``-dimensional subspace when ``out < in``."""

    def forward(self, weight: Tensor) -> Tensor:
        m = weight.flatten(1)
        wide = m.shape[0] <= m.shape[1]
        q, r = torch.linalg.qr(m.t() if wide else m)
        q = q * torch.where(torch.diagonal(r) >= 0, 1.0, -1.0).to(q.dtype).unsqueeze(0)
        return (q.t() if wide else q).reshape(weight.shape)


class Bottleneck(nn.Module):
    """``x + conv1×1(ReLU(BN(conv3×3(ReLU(BN(conv1×1(x)))))))``; the last conv starts at zero, so a
    fresh generation block is the identity."""

    residual_region = True  # under a bf16 network the whole block runs in bf16, residual sum included (precision.py)

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, channels, 1))
        nn.init.zeros_(self.branch[-1].weight)
        nn.init.zeros_(self.branch[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def generation_block(channels: int, depth: int, width: float) -> nn.Sequential:
    """``depth`` residual bottlenecks at ``round(width · channels)`` inner channels (at least 1)."""
    inner = max(1, round(width * channels))
    return nn.Sequential(*[Bottleneck(channels, inner) for _ in range(depth)])


@register_method("dpk")
class DPK(Method):
    paper = "Qiu et al., ICLR 2023 submission — Better Teacher Better Student: Dynamic Prior Knowledge for Knowledge Distillation"
    year = 2023
    kind = "prior"
    default_weight = 1.0
    default_student = "@stages"
    default_teacher = "@stages"

    def __init__(self,
                 projector: Literal["standard", "inverted"] = "standard",
                 projector_kind: Optional[Literal["linear", "conv_bn"]] = None,
                 patch_size: Union[PatchSize, List[PatchSize], None] = None,
                 schedule: Literal["cka", "fixed", "linear"] = "cka",
                 share: Fraction = 0.5,
                 share_start: Fraction = 0.5,
                 share_end: Fraction = 0.0,
                 cka_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 cka_init: Fraction = 0.5,
                 cka_batch: Optional[Annotated[int, Field(ge=2)]] = None,
                 gen_depth: Annotated[int, Field(ge=1)] = 2,
                 gen_width: Annotated[float, Field(gt=0)] = 0.25,
                 feature_weight: Annotated[float, Field(ge=0)] = 1.0,
                 kd_weight: Annotated[float, Field(ge=0)] = 1.0,
                 T: Annotated[float, Field(gt=0)] = 4.0,
                 **sides):
        super().__init__(**sides)
        if projector == "inverted" and projector_kind == "conv_bn":
            raise ConfigError("dpk: projector=inverted needs projector_kind=linear: a BN after the teacher's map "
                              "could scale the regression target to zero; drop projector_kind or set it to linear")
        # the logits follow the stages on both sides (for the KD part)
        self.student_side = as_list(self.student_side) + ["output"]
        self.teacher_side = as_list(self.teacher_side) + ["output"]
        self.direction = projector
        self.projector_kind = projector_kind or ("conv_bn" if projector == "standard" else "linear")
        self.patch_size = patch_size
        self.schedule = schedule
        self.share, self.share_start, self.share_end = float(share), float(share_start), float(share_end)
        self.cka_momentum, self.cka_init = float(cka_momentum), float(cka_init)
        self.cka_batch = cka_batch
        self.gen_depth, self.gen_width = int(gen_depth), float(gen_width)
        self.feature_weight, self.kd_weight, self.T = float(feature_weight), float(kd_weight), float(T)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._step, self._seed, self._progress = 0, 0, 0.0
        self._generators: Dict[torch.device, torch.Generator] = {}

    # -- wiring -------------------------------------------------------------------------------
    def build(self, s: List[Tensor], t: List[Tensor]) -> None:
        s_maps, t_maps = s[:-1], t[:-1]
        if len(s_maps) != len(t_maps) or not s_maps:
            raise ConfigError(f"dpk: {len(s_maps)} student maps but {len(t_maps)} teacher maps; tap as many "
                              "stages on each side")
        for i, f in enumerate(s_maps + t_maps):
            if f.dim() != 4:
                side = "student" if i < len(s_maps) else "teacher"
                raise ShapeError(f"dpk mixes feature maps: the {side}'s stage {i % len(s_maps)} gives shape "
                                 f"{tuple(f.shape)}, not [B, C, H, W]; tap convolutional stages")
        self.patches = self._patch_sizes([tuple(f.shape[-2:]) for f in s_maps])
        self.projectors = nn.ModuleList()
        self.generators = nn.ModuleList()
        for fs, ft in zip(s_maps, t_maps):
            proj = Projector(fs.shape[1:], ft.shape[1:], self.direction, self.projector_kind)
            if self.direction == "inverted":
                parametrize.register_parametrization(proj.map, "weight", SemiOrthogonal())
            self.projectors.append(proj)
            channels = ft.shape[1] if self.direction == "standard" else fs.shape[1]
            self.generators.append(generation_block(channels, self.gen_depth, self.gen_width))
        self.register_buffer("cka_ema", torch.full((len(s_maps),), self.cka_init))
        # the torch RNG runs under the run's seed while the Distiller is built
        self.register_buffer("mask_seed", torch.randint(0, 2 ** 62, (), dtype=torch.long))
        self._sync_counters()

    def _patch_sizes(self, sizes: List[tuple]) -> List[int]:
        n = len(sizes)
        if self.patch_size is None:  # the same image region at every stage: as many patches as the smallest map has positions
            grid = min(min(h, w) for h, w in sizes)
            patches = [max(1, min(h, w) // grid) for h, w in sizes]
        elif isinstance(self.patch_size, int):
            patches = [self.patch_size] * n
        else:
            patches = list(self.patch_size)
            if len(patches) != n:
                raise ConfigError(f"dpk: patch_size lists {len(patches)} sizes for {n} stages; give one per stage "
                                  "or a single number")
        for i, ((h, w), p) in enumerate(zip(sizes, patches)):
            if h % p or w % p:
                divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
                raise ConfigError(f"dpk: patch_size {p} does not divide stage {i}'s {h}×{w} student map; use a "
                                  f"divisor of both sides ({', '.join(map(str, divisors))}) or a list, one per stage")
        return patches

    def _sync_counters(self) -> None:
        self._step = int(self.steps)
        if hasattr(self, "mask_seed"):
            self._seed = int(self.mask_seed)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_counters()  # the hot path reads host copies: no device sync per step

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        # the linear schedule moves once per epoch: a function of the trainer's position, so resume-safe
        self._progress = min(1.0, epoch / max(num_epochs - 1, 1))

    # -- the share of teacher patches ---------------------------------------------------------
    def shares(self) -> Tensor:
        """The expected teacher fraction of each stage's mixed map, now."""
        if self.schedule == "cka":
            return 1.0 - self.cka_ema  # big gap (low CKA) → more prior knowledge
        if self.schedule == "fixed":
            return torch.full_like(self.cka_ema, self.share)
        return torch.full_like(self.cka_ema, self.share_start + (self.share_end - self.share_start) * self._progress)

    @torch.no_grad()
    def _update_gap(self, s_maps: List[Tensor], t_maps: List[Tensor]) -> Tensor:
        n = self.cka_batch  # the Gram form costs O(n² · C·H·W): a large batch may measure the gap on its first n
        cka = torch.stack([linear_cka(a[:n], b[:n]) for a, b in zip(s_maps, t_maps)])
        if self.training:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(cka)  # every rank keeps the same EMA (and so the same checkpoint)
                cka /= dist.get_world_size()
            self.cka_ema.mul_(self.cka_momentum).add_(cka, alpha=1.0 - self.cka_momentum)
        return cka

    def _generator(self, device: torch.device, stage: int) -> torch.Generator:
        g = self._generators.get(device)
        if g is None:
            g = self._generators[device] = torch.Generator(device=device)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return g.manual_seed(mask_seed(self._seed, self._step, stage, rank))

    # -- the loss -----------------------------------------------------------------------------
    def forward(self, s, t, batch):
        if not hasattr(self, "projectors"):
            raise RuntimeError("dpk is not built: the Distiller builds it from one dry run (example_input=...)")
        s_maps, t_maps = s[:-1], [f.detach() for f in t[:-1]]
        cka = self._update_gap(s_maps, t_maps)
        share = self.shares()
        parts: Dict[str, Tensor] = {}
        feature = []
        for i, (fs, ft, proj, gen, p) in enumerate(zip(s_maps, t_maps, self.projectors, self.generators, self.patches)):
            z_s, z_t = proj(fs, ft)  # one space, the student's spatial size
            b, _, h, w = z_s.shape
            mask = patch_mask(b, h, w, p, share[i], self._generator(z_s.device, i))
            loss = hint_loss(gen(mix_patches(z_s, z_t, mask)), z_t)
            feature.append(loss)
            parts[f"cka/{i}"], parts[f"share/{i}"], parts[f"loss/{i}"] = cka[i], share[i], loss.detach()
        total = self.feature_weight * torch.stack(feature).sum()
        if self.kd_weight > 0:
            kd = kd_loss(s[-1], t[-1], self.T)
            parts["kd"] = kd.detach()
            total = total + self.kd_weight * kd
        if self.training:
            self._step += 1
            self.steps.add_(1)
        return {"loss": total, **parts}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, projector={self.direction}, schedule={self.schedule}, "
                f"patches={getattr(self, 'patches', self.patch_size)}, kd_weight={self.kd_weight}, T={self.T}")
