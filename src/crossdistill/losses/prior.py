"""DPK's prior knowledge: teacher patches put in place of student patches, per sample.

Pure functions: the mask is drawn from the generator it is given (so a caller that seeds the
generator from the run's seed and the step draws the same masks after a resume), and mixing is a
``where`` — the teacher's patches carry whatever gradient the teacher tensor carries (none, for a
frozen teacher under ``no_grad``), the student's patches carry the student's.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ..errors import ShapeError

__all__ = ["patch_mask", "mix_patches"]


def patch_mask(batch: int, height: int, width: int, patch: int, share: Union[float, Tensor],
               generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None) -> Tensor:
    """A boolean mask ``[batch, 1, height, width]``: ``True`` where the teacher's patch is used.

    The map is cut into ``patch × patch`` patches; for every sample and patch independently a uniform
    ``u ~ U[0, 1)`` is drawn and the patch is the teacher's where ``u < share``. So each patch is the
    teacher's with probability ``share`` (clamped to [0, 1]) and the expected teacher fraction of a
    map is ``share``; ``share = 0`` gives no teacher patch, ``share = 1`` gives only teacher patches.
    ``share`` may be a 0-d tensor on the device (no host synchronisation). Draws on the generator's
    device (or ``device``).
    """
    if patch < 1 or height % patch or width % patch:
        raise ShapeError(f"patch_mask: a patch of {patch}×{patch} does not tile a {height}×{width} map; "
                         "use a patch size that divides both sides")
    rows, cols = height // patch, width // patch
    where = generator.device if generator is not None else device
    u = torch.rand(batch, 1, rows, 1, cols, 1, generator=generator, device=where)
    if isinstance(share, Tensor):
        share = share.to(u.device)
    teacher = u < share
    return teacher.expand(batch, 1, rows, patch, cols, patch).reshape(batch, 1, height, width)


def mix_patches(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """``teacher`` where ``mask`` is ``True``, ``student`` elsewhere; ``mask`` ``[B, 1, H, W]``
    broadcasts over channels. Both maps must already be in one space (same shape)."""
    if student.shape != teacher.shape:
        raise ShapeError(f"mix_patches: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must "
                         "have the same shape (align them first)")
    if mask.dim() != student.dim() or mask.shape[0] != student.shape[0] or mask.shape[2:] != student.shape[2:]:
        raise ShapeError(f"mix_patches: mask {tuple(mask.shape)} does not fit maps {tuple(student.shape)}")
    return torch.where(mask, teacher, student)
