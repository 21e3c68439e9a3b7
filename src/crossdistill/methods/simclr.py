"""SimCLR — Chen et al. 2020: a self-supervised objective (NT-Xent between two augmented views), no teacher.

Trains a backbone without labels (``task: self_supervised``, ``data.copies: 2``, ``data.augment:
ssl``): the student runs on ``input`` and on the second view ``input_1``; both pooled features go
through one projection head ``Linear(d→hidden)+BN+ReLU+Linear(hidden→proj_dim)`` and
``losses.nt_xent_loss`` pulls the two views of an image together against the other ``2B − 2``
images of the batch. The head is a term module, so it is dropped at export: ``student.pt`` is the
bare backbone, usable as a teacher like any other checkpoint. Temperature 0.5: SimCLR's CIFAR-10
setting.
"""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field

from ..errors import ConfigError
from ..losses import nt_xent_loss
from ..projectors import MLPHead, pool_to_vector
from .base import Method, register_method


@register_method("simclr")
class SimCLR(Method):
    paper = "Chen et al., ICML 2020 — A Simple Framework for Contrastive Learning of Visual Representations"
    year = 2020
    kind = "self-supervised"
    needs_teacher = False
    default_student = "@pooled"
    default_teacher = ()

    def __init__(self, temperature: Annotated[float, Field(gt=0)] = 0.5, proj_dim: Annotated[int, Field(gt=0)] = 128,
                 hidden_dim: Optional[Annotated[int, Field(gt=0)]] = None,
                 second_view: Annotated[str, Field(pattern=r"^input(_[1-9][0-9]*)?$")] = "input_1", **sides):
        super().__init__(**sides)
        self.temperature, self.proj_dim, self.hidden_dim = float(temperature), int(proj_dim), hidden_dim
        self.extra_student_inputs = (second_view,)

    def build(self, s, t):
        if len(s) != 2:
            raise ConfigError(f"simclr reads one student side on two views; got {len(s) // 2} side(s)")
        d = pool_to_vector(s[0]).shape[1]
        self.head = MLPHead(d, (self.hidden_dim or d,), self.proj_dim)

    def forward(self, s, t, batch):
        return nt_xent_loss(self.head(s[0]), self.head(s[1]), self.temperature)
