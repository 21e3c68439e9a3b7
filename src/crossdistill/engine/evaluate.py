"""``crossdistill eval CHECKPOINT``: rebuild the student from the checkpoint and score it."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader

from ..build import build_task, model_from_spec
from ..config import DataConfig, apply_override, format_validation_error
from ..data import create_dataset
from ..data.seeded import AugmentedDataset
from ..data.transforms import build_eval_transform
from ..errors import ConfigError
from ..views import VIEWS
from .checkpoint import load_checkpoint, load_into, student_state


def evaluate_checkpoint(path: str, overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Score the student of ``path`` (an exported ``student.pt`` or a training checkpoint) on the test
    split of the dataset it was trained on, or on other data given by ``data.*`` overrides."""
    ckpt = load_checkpoint(path)
    spec = ckpt["model_spec"]
    if not spec.get("data") and not any(o.startswith("data.name=") for o in overrides):
        raise ConfigError(f"'{path}' does not record the dataset it was trained on; give it as data.name=... "
                          "(and data.root=..., data.options=...)")
    raw = {"data": dict(spec.get("data") or {})}
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("data."):
            raise ConfigError(f"eval override '{item}': only data.* keys can be changed at evaluation")
        apply_override(raw, item)
    try:
        data_cfg = DataConfig.model_validate(raw["data"])
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, DataConfig, prefix="data.")) from None
    test = create_dataset(data_cfg.name, "test", data_cfg.root, **data_cfg.options)
    test = AugmentedDataset(test, build_eval_transform(test.info))
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
    load_into(model, student_state(ckpt), "student", path)
    model.eval()
    view = VIEWS.get(spec.get("student_input", "identity"))
    metrics = task.metrics()
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=data_cfg.eval_batch_size or data_cfg.batch_size):
            x = batch["input"]
            out = model(view(x) if view else x)
            task.update_metrics(metrics, out.float(), batch)
    return task.compute_metrics(metrics)
