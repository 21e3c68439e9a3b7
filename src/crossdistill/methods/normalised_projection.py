"""What SRD and VkD share: a linear projector between the pooled features, a distance after a
parameter-free normalisation, and KD on the logits (both recipes of Miles et al.).

Sides: ``["@pooled", "output"]`` on each network — the pooled feature (a map is pooled to a vector)
and the logits; with ``kd_weight: 0`` the logits side may be left out. The projector is a
:class:`~crossdistill.projectors.Projector` (``projector: standard`` maps the student's feature
into the teacher's width, as both papers; ``inverted`` maps the teacher's into the student's);
``projector_options`` are its options, with each method's own defaults (SRD: a bias; VkD:
orthogonal). ``projector_options.norm`` is refused: the normalisation is the method's own.

The term: ``feature_weight · distance + kd_weight · kd_loss(T)``, both parts logged
(``<term>/feature``, ``<term>/kd``); the term's ``weight`` multiplies the sum.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict

from torch import Tensor

from ..errors import ConfigError
from ..losses import kd_loss
from ..projectors import ProjectorOptions, pool_to_vector
from .base import NonNegative, Positive
from .projected import ProjectedMethod


class NormalisedProjection(ProjectedMethod):
    """``class SRD(NormalisedProjection)`` with ``feature_distance(z_s, z_t)`` and ``option_defaults``
    (the method's own projector defaults, under what the user gives); the distance receives the
    projected pair (its normalisation included). ``projector``, ``projector_options``:
    :class:`~crossdistill.methods.projected.ProjectedMethod`."""

    option_defaults: ClassVar[Dict[str, Any]] = {}
    default_student = ["@pooled", "output"]
    default_teacher = ["@pooled", "output"]

    def __init__(self, feature_weight: NonNegative = 1.0, kd_weight: NonNegative = 1.0, T: Positive = 1.0,
                 **options):
        super().__init__(**options)
        given = self.projector_options.model_dump(exclude_unset=True)
        self.projector_options = ProjectorOptions.coerce({**self.option_defaults, **given})
        if self.projector_options.norm != "none":
            raise ConfigError(f"{self.name}: projector_options.norm must be 'none': the method normalises the "
                              "features itself")
        self.feature_weight, self.kd_weight, self.T = feature_weight, kd_weight, T

    def build(self, s, t):
        if self.kd_weight > 0 and (len(s) < 2 or len(t) < 2):
            raise ConfigError(f"{self.name}: kd_weight > 0 needs the logits as a second side on each network "
                              f"(sides ['@pooled', 'output']), got {len(s)} student and {len(t)} teacher side(s); "
                              "or set kd_weight: 0")
        z_s, z_t = pool_to_vector(s[0]), pool_to_vector(t[0])
        self.projector = self.make_projector(z_s.shape[1:], z_t.shape[1:])

    def feature_distance(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, s, t, batch):
        z_s, z_t = self.projector(pool_to_vector(s[0]), pool_to_vector(t[0]))
        feature = self.feature_distance(z_s, z_t)
        out = {"feature": feature.detach(), **self.projector.spectrum_logs()}
        loss = self.feature_weight * feature
        if self.kd_weight > 0:
            kd = kd_loss(s[1], t[1], self.T)
            out["kd"] = kd.detach()
            loss = loss + self.kd_weight * kd
        return {"loss": loss, **out}
