"""What a resumed run must share with the run that wrote its checkpoint: the config (but for keys
that do not touch the numbers), the number of processes, and the training data itself."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict

import torch
from pydantic import BaseModel, ValidationError

from ..errors import CheckpointError

#: Config keys a resumed run may change: they do not touch the weights or the metrics.
RESUME_MAY_CHANGE = ("output_dir", "data.num_workers", "train.progress", "train.log_every",
                     "train.checkpoint_every", "train.checkpoint_every_steps", "train.nonfinite", "train.device",
                     "train.threads", "train.deterministic", "teacher_cache.dir", "teacher_cache.rebuild",
                     "teacher_cache.fill_batch_size")


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": [1]}}`` → ``{"a.b.0": 1}``; an empty dict or list is a leaf."""
    if isinstance(d, dict) and d:
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d:
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def check_same_config(ckpt: Dict[str, Any], cfg: BaseModel, path: Path) -> None:
    """Resuming under another config would silently mix two runs: refuse, naming the keys."""
    saved = ckpt.get("config") or {}
    try:  # keys added to the schema since the checkpoint was written compare at their defaults
        saved = type(cfg).model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass
    old = flatten(saved)
    new = flatten(cfg.model_dump(mode="json"))

    def free(key: str) -> bool:
        return any(key == m or key.startswith(m + ".") for m in RESUME_MAY_CHANGE)

    diff = [k for k in sorted(set(old) | set(new)) if not free(k) and old.get(k, "<unset>") != new.get(k, "<unset>")]
    if diff:
        k = diff[0]
        more = f" (and {len(diff) - 1} more key(s))" if len(diff) > 1 else ""
        raise CheckpointError(f"'{path}' was written by another config: {k} is {old.get(k, '<unset>')!r} there "
                              f"but {new.get(k, '<unset>')!r} now{more}; resume with the config that wrote it, "
                              "or start a new run with another output_dir=...")


def check_same_world(ckpt: Dict[str, Any], world: int, path: Path) -> None:
    saved = int(ckpt.get("world", 1))
    if saved != world:
        raise CheckpointError(f"'{path}' was written by a run on {saved} process(es), this one has "
                              f"{world}; resume with the same number of processes")


def data_identity(train_set, test_set) -> Dict[str, Any]:
    """The data's size and a digest of a few raw samples (first, middle, last) and of the labels:
    cheap to compute, and changed by any edit a user would make to a data folder (files added,
    removed, replaced)."""
    return {"train_size": len(train_set), "test_size": len(test_set),
            "train_digest": _digest(train_set), "test_digest": _digest(test_set)}


def check_same_data(ckpt: Dict[str, Any], now: Dict[str, Any], path: Path) -> None:
    saved = ckpt.get("data_identity")
    if not isinstance(saved, dict):
        return  # written before data identities were recorded
    for split in ("train", "test"):
        was, is_ = saved.get(f"{split}_size"), now[f"{split}_size"]
        if was != is_:
            raise CheckpointError(f"the {split} data changed since '{path}' was written ({was} samples then, "
                                  f"{is_} now); resume with the same data, or start a new run with another output_dir=...")
        if saved.get(f"{split}_digest") != now[f"{split}_digest"]:
            raise CheckpointError(f"the {split} data changed since '{path}' was written (same size, other "
                                  "samples); resume with the same data, or start a new run with another output_dir=...")


def _raw(dataset):
    """The dataset under every wrapper (index field, seeded augmentation, per-sample fields, subsets):
    the files' content, whatever is computed from it."""
    while getattr(dataset, "dataset", None) is not None:
        dataset = dataset.dataset
    return dataset


def _digest(dataset) -> str:
    raw = _raw(dataset)
    h = hashlib.sha256()
    n = len(raw)
    for i in sorted({0, n // 2, n - 1}) if n else []:
        sample = raw[i]
        for key in sorted(sample):
            v = sample[key]
            h.update(key.encode())
            if isinstance(v, torch.Tensor):
                h.update(str(tuple(v.shape)).encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    labels = getattr(raw, "labels", None)
    if isinstance(labels, torch.Tensor):
        h.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
