"""Every distillation loss as a pure function of tensors.

No function holds state or reads globals, and none detaches the teacher: the ``Distiller`` runs the
teacher under ``no_grad`` (so the same functions serve mutual learning). Inputs arrive already
projected and resized; a mismatch raises :class:`~crossdistill.errors.ShapeError`. Each docstring
states the formula and its normalisation.
"""
from __future__ import annotations

from .contrastive import (
    crd_dense_grad,
    crd_dense_logits,
    crd_estimate_z,
    crd_log_z_stats,
    crd_logits,
    crd_loss_from_logits,
    crd_nce_fused,
    crd_nce_loss,
    crd_nce_terms,
    crd_scores,
    with_gradient,
)
from .cross_architecture import deit_hard_loss, deit_soft_loss, ofa_loss
from .distances import feature_distance, l2_distance, log_sum_distance, smooth_l1_distance
from .features import (
    ab_loss,
    at_loss,
    attention_map,
    factor_loss,
    fsp_loss,
    fsp_matrix,
    hint_loss,
    nst_loss,
    vid_loss,
)
from .logit_methods import (
    dist_loss,
    dkd_loss,
    kd_loss_per_temperature,
    median_kept_fraction,
    mlkd_batch_loss,
    mlkd_class_loss,
    mlkd_instance_loss,
    mlkd_levels,
    standardize_logits,
)
from .logits import kd_loss
from .normalised import batch_standardise, layer_standardise, srd_loss, vkd_loss
from .prior import mix_patches, patch_mask
from .regression import normalized_regression_loss
from .relations import cc_loss, pkt_loss, rkd_angle_loss, rkd_distance_loss, rkd_loss, sp_loss
from .review import hcl_loss, hcl_stage_loss
from .self_supervised import nt_xent_loss
from .similarity import centred_gram, linear_cka
from .spectral import (
    feature_rows,
    inverted_l2_decomposition,
    spectral_energy,
    spectral_tail_energy,
    spectral_tail_ratio,
)

__all__ = [
    "kd_loss",
    "standardize_logits",
    "dkd_loss",
    "dist_loss",
    "kd_loss_per_temperature",
    "mlkd_instance_loss",
    "mlkd_batch_loss",
    "mlkd_class_loss",
    "median_kept_fraction",
    "mlkd_levels",
    "deit_soft_loss",
    "deit_hard_loss",
    "ofa_loss",
    "feature_distance",
    "l2_distance",
    "smooth_l1_distance",
    "log_sum_distance",
    "hint_loss",
    "attention_map",
    "at_loss",
    "ab_loss",
    "factor_loss",
    "fsp_matrix",
    "fsp_loss",
    "nst_loss",
    "vid_loss",
    "sp_loss",
    "cc_loss",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "pkt_loss",
    "crd_logits",
    "crd_scores",
    "crd_nce_loss",
    "crd_loss_from_logits",
    "crd_nce_terms",
    "crd_nce_fused",
    "crd_dense_logits",
    "crd_dense_grad",
    "crd_log_z_stats",
    "crd_estimate_z",
    "with_gradient",
    "feature_rows",
    "inverted_l2_decomposition",
    "spectral_energy",
    "spectral_tail_ratio",
    "spectral_tail_energy",
    "centred_gram",
    "linear_cka",
    "patch_mask",
    "mix_patches",
    "normalized_regression_loss",
    "nt_xent_loss",
    "hcl_loss",
    "hcl_stage_loss",
    "batch_standardise",
    "layer_standardise",
    "srd_loss",
    "vkd_loss",
]
