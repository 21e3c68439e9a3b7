"""The base of every method whose learned connectors are :class:`~crossdistill.projectors.Projector`\\ s
(FitNet, CC, AB, FSP): the options they share and their building, in one place.

Options (the keyword arguments below, validated like any method option):

- ``projector``: where the learned map sits — ``"standard"`` (student → teacher space, the
  references'), ``"inverted"`` (teacher → student space, Learning to Project), and for the methods
  that allow it (``projector_directions``) ``"identity"`` (no map);
- ``projector_options``: the readings of the projector (:class:`~crossdistill.projectors.ProjectorOptions`:
  BN without affine on both sides, orthogonal parametrisation, own weight decay, bias, singular-value
  logs), a dict in a config.

A subclass keeps its own options in its ``__init__`` and passes the rest on (``**options``); it builds
its projectors with :meth:`make_projector` and logs their spectra with
:func:`~crossdistill.projectors.spectrum_logs`.
"""
from __future__ import annotations

from typing import ClassVar, Literal, Optional, Tuple

from ..errors import ConfigError
from ..projectors import Projector, ProjectorOptions
from .base import Method


class ProjectedMethod(Method):
    #: the directions this method accepts for ``projector``
    projector_directions: ClassVar[Tuple[str, ...]] = ("standard", "inverted")

    def __init__(self, projector: Literal["standard", "inverted", "identity"] = "standard",
                 projector_options: Optional[ProjectorOptions] = None, **sides):
        # the type catches a typo when the config is read; ``projector_directions`` what this method allows
        super().__init__(**sides)
        if projector not in self.projector_directions:
            raise ConfigError(f"method '{self.name}': bad value for 'projector' ({projector!r}): valid choices: "
                              f"{', '.join(self.projector_directions)}")
        self.projector_direction = projector
        self.projector_options = ProjectorOptions.coerce(projector_options)

    def make_projector(self, student_shape, teacher_shape, kind: str = "linear",
                       direction: Optional[str] = None) -> Projector:
        """A projector between the two (per-sample) shapes, in this term's direction (or ``direction``,
        e.g. ``"identity"`` where a method needs no map), with this term's projector options."""
        return Projector(student_shape, teacher_shape, direction or self.projector_direction, kind,
                         self.projector_options)
