"""``crossdistill eval CHECKPOINT``: rebuild the student from the checkpoint and score it."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch.utils.data import DataLoader

from ..build import build_task, model_from_spec
from ..config import DataConfig, apply_override
from ..data import create_dataset
from ..data.seeded import AugmentedDataset
from ..data.transforms import build_eval_transform
from ..errors import ConfigError
from ..views import VIEWS
from .checkpoint import load_checkpoint, load_into, student_state


def evaluate_checkpoint(path: str, overrides: Sequence[str] = ()) -> Dict[str, float]:
    ckpt = load_checkpoint(path)
    spec = ckpt["model_spec"]
    raw = {"data": dict(spec.get("data") or {})}
    for item in overrides:
        if not item.split("=", 1)[0].startswith("data."):
            raise ConfigError(f"eval override '{item}': only data.* keys can be changed at evaluation")
        apply_override(raw, item)
    data_cfg = DataConfig.model_validate(raw["data"])
    test = create_dataset(data_cfg.name, "test", data_cfg.root, **data_cfg.options)
    test = AugmentedDataset(test, build_eval_transform(test.info))
    task = build_task(spec["task"], test.info)
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
