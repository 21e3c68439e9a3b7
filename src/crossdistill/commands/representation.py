"""``crossdistill eval --protocol knn|linear``: a checkpoint's backbone scored by the representation
protocols of :mod:`crossdistill.engine.representation`; the result is written into ``eval.json``
next to the checkpoint (atomically, merged with what is already there)."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import torch

from ..build import cached_dataset, model_from_spec
from ..data.seeded import AugmentedDataset
from ..data.transforms import build_eval_transform
from ..engine.checkpoint import atomic_write_text, load_into
from ..engine.representation import EVAL_FILE, PROTOCOLS, extract_features, knn_eval, linear_probe, resolve_feature
from ..errors import ConfigError, DataError
from ..views import VIEWS
from .evaluate import checkpoint_for_eval


def evaluate_representation(path: str, protocol: Union[str, Sequence[str]], overrides: Sequence[str] = (),
                            ks: Sequence[int] = (1, 20), feature: str = "@pooled", write: bool = True,
                            **probe: Any) -> Dict[str, Any]:
    """Score the backbone of checkpoint ``path`` with ``protocol`` (``knn`` or ``linear``, or a list
    of both: the features are computed once) on the training and test splits of the data set it was
    trained on (or of ``data.*`` overrides), and record the result in ``eval.json`` next to the
    checkpoint. Every check runs before any feature is computed, and nothing is written unless the
    evaluation succeeds. Returns the record (for a list: ``{protocol: record}``)."""
    protocols = [protocol] if isinstance(protocol, str) else list(protocol)
    for p in protocols:
        if p not in PROTOCOLS:
            raise ConfigError(f"unknown protocol '{p}': valid choices: {', '.join(PROTOCOLS)}")
    ks = [int(k) for k in ks]
    if "knn" in protocols and (not ks or min(ks) < 1):
        raise ConfigError(f"k-NN needs k >= 1, got {ks}")
    spec, state, data_cfg = checkpoint_for_eval(path, overrides)
    model = model_from_spec(spec)
    load_into(model, state, "network", path)
    resolve_feature(model, feature)
    if torch.cuda.is_available():  # the backbone forwards on the GPU; k-NN and the probe on the cached CPU features
        model = model.cuda()
    splits = {}
    for split in ("train", "test"):
        # the same cache as training (a reproduction evaluates many runs on one data set)
        root = os.path.expanduser(data_cfg.root) if data_cfg.root else None
        ds = cached_dataset(data_cfg.name, split, root, json.dumps(data_cfg.options, sort_keys=True))
        info = ds.info
        if "label" not in (info.fields or ("label",)) or getattr(info, "num_classes", 0) < 2:
            raise DataError(f"--protocol {protocols[0]} needs class labels, but dataset '{data_cfg.name}' gives only "
                            f"{', '.join(info.fields)}; evaluate on a classification data set (data.name=...)")
        splits[split] = AugmentedDataset(ds, build_eval_transform(info))
    if "knn" in protocols and max(ks) > len(splits["train"]):
        raise ConfigError(f"k-NN with k={max(ks)} needs at least {max(ks)} training samples, but "
                          f"'{data_cfg.name}' has {len(splits['train'])}; lower --k")
    view = VIEWS.get(spec.get("student_input", "identity"))
    feats = extract_features(model, splits["train"], splits["test"], feature, view,
                             data_cfg.eval_batch_size or data_cfg.batch_size, splits["train"].info.num_classes)
    records: Dict[str, Dict[str, Any]] = {}
    for p in protocols:
        result: Dict[str, Any] = knn_eval(feats, ks) if p == "knn" else linear_probe(feats, **probe)
        record = {**result, "checkpoint": Path(path).name, "feature": feature, "data": data_cfg.name,
                  "train_size": int(feats.train.shape[0]), "test_size": int(feats.test.shape[0])}
        if p == "linear":
            defaults = {n: q.default for n, q in inspect.signature(linear_probe).parameters.items() if n != "features"}
            record["probe"] = {**defaults, **probe}
        records[p] = record
    if write:
        target = Path(path).parent / EVAL_FILE
        try:
            held = json.loads(target.read_text()) if target.is_file() else {}
        except (OSError, ValueError):
            held = {}
        held = held if isinstance(held, dict) else {}
        held.update(records)
        atomic_write_text(json.dumps(held, indent=2, sort_keys=True), target)
    return records[protocol] if isinstance(protocol, str) else records
