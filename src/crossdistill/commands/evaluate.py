"""``crossdistill eval``: a checkpoint's student rebuilt and scored by the evaluation loop training
uses (:func:`crossdistill.engine.evaluate.evaluate`), on its test split or other data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence

import torch
from pydantic import ValidationError
from torch.utils.data import Dataset

from ..build import build_task, build_test_set, model_from_spec
from ..config import DataConfig, apply_override, format_validation_error
from ..distiller import Distiller
from ..engine.checkpoint import load_checkpoint, load_into, student_state
from ..engine.device import Precision
from ..engine.distributed import world_info
from ..engine.evaluate import eval_loader, evaluate
from ..engine.export import non_finite
from ..errors import CheckpointError, ConfigError
from ..views import VIEWS


@dataclass
class EvalSetup:
    """What ``crossdistill eval`` rebuilds from a checkpoint: the student, its data, its task."""

    model: torch.nn.Module
    spec: Dict[str, Any]
    data: Any  # DataConfig
    task: Any
    test_set: Dataset
    input_view: str


def checkpoint_for_eval(path: str, overrides: Sequence[str] = ()):
    """``(spec, state, data config)`` of checkpoint ``path`` for an evaluation: the network's spec, its
    weights (refused if any is non-finite) and the data set it was trained on, with ``data.*``
    overrides applied (any other key is refused). Shared by ``eval`` and its representation protocols."""
    ckpt = load_checkpoint(path)
    spec = ckpt["model_spec"]
    state = student_state(ckpt)
    bad = non_finite(state)
    if bad:
        raise CheckpointError(f"the student in '{path}' has non-finite weights (NaN/Inf in {len(bad)} of {len(state)} "
                              f"tensors, e.g. '{bad[0]}'), so any metric would be meaningless; it comes from a "
                              "diverged run: train again with a lower learning rate")
    if not spec.get("data") and not any(o.startswith("data.name=") for o in overrides):
        raise ConfigError(f"'{path}' does not record the dataset it was trained on; give it as data.name=... "
                          "(and data.root=..., data.options=...)")
    raw = {"data": dict(spec.get("data") or {})}
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(f"eval override '{item}': only data.* keys can be changed at evaluation")
        apply_override(raw, item)
    try:
        return spec, state, DataConfig.model_validate(raw["data"])
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, DataConfig, prefix="data.")) from None


def load_for_eval(path: str, overrides: Sequence[str] = ()) -> EvalSetup:
    """The student of ``path`` (an exported ``student.pt`` or a training checkpoint), the test split of
    the dataset it was trained on (or other data given by ``data.*`` overrides), and its task."""
    spec, state, data_cfg = checkpoint_for_eval(path, overrides)
    test = build_test_set(data_cfg)
    task_name = spec.get("task", "classification")
    task = build_task(task_name, test.info)
    if getattr(task, "output_side", "output") != "output":
        raise ConfigError(f"'{path}' is a backbone trained by task '{task_name}', which has no output to score; "
                          "evaluate its features with --protocol knn or --protocol linear")
    trained = spec.get("task_classes")
    if trained is not None and task.num_classes is not None and trained != task.num_classes:
        raise ConfigError(f"the student in '{path}' predicts {trained} classes but this data has {task.num_classes}; "
                          "evaluate it on data with the same classes")
    model = model_from_spec(spec)
    load_into(model, state, "student", path)
    return EvalSetup(model, spec, data_cfg, task, test, spec.get("student_input", "identity"))


def evaluate_checkpoint(path: str, overrides: Sequence[str] = (), precision: str = "fp32",
                        device: str = "auto") -> Dict[str, float]:
    """Score the student of ``path`` on its test split: the loop training uses, the same settings."""
    setup = load_for_eval(path, overrides)
    how = Precision.pick(device, precision)
    views = {"student": VIEWS[setup.input_view]} if setup.input_view != "identity" else {}
    distiller = Distiller(setup.model, input_transforms=views).to(how.device)
    rank, world = world_info()
    loader = eval_loader(setup.test_set, setup.data.eval_batch_size or setup.data.batch_size,
                         setup.data.num_workers, rank, world)
    metrics, _ = evaluate(distiller, loader, setup.task, how)
    return metrics
