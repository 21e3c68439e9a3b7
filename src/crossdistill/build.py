"""Build everything a run needs from a validated :class:`~crossdistill.config.Config`.

Kept apart from the trainer so that the same objects serve the CLI, tests and user scripts.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

from .checks import check_student_output
from .config import Config, DataConfig, TeacherConfig, recipe_writing
from .data import IndexedDataset, create_dataset
from .data.transforms import build_eval_transform, build_train_transform
from .data.seeded import AugmentedDataset, SampleFieldsDataset, copy_field
from .data.wrappers import SubsetDataset, validation_split
from .distiller import Distiller
from .engine.checkpoint import load_checkpoint, load_into, load_state_dict_file, student_state
from .errors import CheckpointError, ConfigError
from .methods import DataSetup, build_method
from .models import create_model
from .tasks import Task, create_task
from .views import VIEW_CHANNELS, VIEWS


@dataclass
class Run:
    cfg: Config
    train_set: Dataset
    eval_set: Dataset
    task: Task
    distiller: Distiller
    model_spec: Dict[str, Any]
    eval_split: str = "test"  # "validation" when data.validation holds out part of the training split


@functools.lru_cache(maxsize=8)
def cached_dataset(name: str, split: str, root: Optional[str], options_json: str) -> Dataset:
    """Datasets are read-only once built: a process that runs many configs (a reproduction grid)
    builds each one once."""
    return create_dataset(name, split, root, **json.loads(options_json))


def build_data(cfg: Config):
    """``(train, eval, info, eval_split)``. With ``data.validation`` the eval set is a held-out
    part of the training split (``eval_split = "validation"``) and the test split is never built."""
    d = cfg.data
    train = cached_dataset(d.name, "train", d.root, json.dumps(d.options, sort_keys=True))
    info = train.info
    tc = cfg.teacher_cache  # fixed views per sample, so that the teacher's outputs can be stored
    if tc and d.copies > 1:
        raise ConfigError(f"teacher_cache stores the teacher's outputs for one view per sample; it cannot be combined "
                          f"with data.copies={d.copies} (several views per sample): remove one of the two")
    held_out = None
    if d.validation is not None:
        train_idx, val_idx = validation_split(len(train), d.validation)
        train, held_out = SubsetDataset(train, train_idx), SubsetDataset(train, val_idx)
    train = IndexedDataset(AugmentedDataset(train, build_train_transform(info, d.augment), seed=cfg.seed,
                                            views=tc.views if tc else None, view_seed=tc.seed if tc else 0,
                                            copies=d.copies))
    if held_out is None:
        return train, build_test_set(d, cfg.seed), info, "test"
    return train, IndexedDataset(AugmentedDataset(held_out, build_eval_transform(info), seed=cfg.seed)), info, "validation"


def build_test_set(d: DataConfig, seed: int = 0) -> Dataset:
    """The test split as training evaluates it and as ``crossdistill eval`` does (one way for both)."""
    test = cached_dataset(d.name, "test", d.root, json.dumps(d.options, sort_keys=True))
    return IndexedDataset(AugmentedDataset(test, build_eval_transform(test.info), seed=seed))


def check_exists(path: str, what: str) -> None:
    """A checkpoint a config reads must exist; if a built-in recipe makes it, say which."""
    if os.path.exists(path):
        return
    recipe = recipe_writing(path)
    fix = f"train it first: crossdistill train {recipe}" if recipe else "check the path (or train that run first)"
    raise CheckpointError(f"{what} checkpoint '{path}' does not exist; {fix}")


def task_classes(task_name: str, info) -> Optional[int]:
    return info.num_seg_classes if task_name == "segmentation" else info.num_classes


def build_task(name: str, info, options: Optional[Dict[str, Any]] = None) -> Task:
    from .tasks import TASKS

    key = getattr(TASKS.get(name), "target_key", "")
    if key and info.fields and key not in info.fields:
        raise ConfigError(f"task '{name}' needs the dataset field '{key}', but the dataset gives only "
                          f"{', '.join(info.fields)}; pick a dataset that provides '{key}' or another task")
    return create_task(name, num_classes=task_classes(name, info), **dict(options or {}))


def given_options(options: Dict[str, Any], where: str, given: Dict[str, Any], source: Dict[str, str]) -> Dict[str, Any]:
    """A model's ``options`` without the keys the run already gives it (``in_channels`` from the data,
    ``num_classes`` from the task): the same value twice is fine, a different one is a clash named in
    one line (``create_model`` would otherwise fail with "got multiple values for keyword argument")."""
    options = dict(options)
    for key, value in given.items():
        if key in options:
            if options[key] != value:
                raise ConfigError(f"{where}.options.{key}={options[key]} clashes with {key}={value} that {source[key]}; "
                                  f"remove {where}.options.{key}")
            del options[key]
    return options


_GIVEN_BY = {"in_channels": "the data gives (its images' channels, or the network's input view)",
             "num_classes": "the task gives (set data.options.num_classes to change the data's classes)"}


def model_spec(name: str, options: Dict[str, Any], task: Task, in_channels: int, where: str = "student") -> Dict[str, Any]:
    options = given_options(options, where, {"in_channels": in_channels, "num_classes": task.output_channels()}, _GIVEN_BY)
    return {"name": name, "options": options, "num_classes": task.output_channels(),
            "in_channels": in_channels, "task": task.name, "task_classes": task.num_classes}


def model_from_spec(spec: Dict[str, Any]) -> nn.Module:
    return create_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"], **spec["options"])


def build_teacher(name: str, t: TeacherConfig, in_channels: int, allow_imports: bool = False) -> nn.Module:
    where = f"teachers.{name}"
    if t.input != "identity":
        in_channels = VIEW_CHANNELS[t.input]
    if t.checkpoint:
        check_exists(t.checkpoint, f"{where}")
        ckpt = load_checkpoint(t.checkpoint)
        has = ckpt["model_spec"]["num_classes"]
        if t.num_classes is not None and t.num_classes != has:
            raise ConfigError(f"{where}.num_classes is {t.num_classes} but the teacher in '{t.checkpoint}' has {has} "
                              f"outputs; remove {where}.num_classes (the checkpoint gives it)")
        model = model_from_spec(ckpt["model_spec"])
        load_into(model, student_state(ckpt), f"teacher '{name}'", t.checkpoint)
        return model
    if t.import_path:
        if not allow_imports:
            raise ConfigError(f"{where}.import_path would import Python code ('{t.import_path}'); configs never run code "
                              "unless you pass --allow-imports to trust this one")
        model = _import_module_class(t.import_path, where)(**t.options)
    elif t.model:
        if t.num_classes is None:
            raise ConfigError(f"{where}.num_classes is required with {where}.model (the size of the teacher's own head)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)  # a random teacher is reproducible from its seed
            options = given_options(t.options, where, {"in_channels": in_channels, "num_classes": t.num_classes},
                                    {**_GIVEN_BY, "num_classes": f"{where}.num_classes gives"})
            model = create_model(t.model, num_classes=t.num_classes, in_channels=in_channels, **options)
    else:
        raise ConfigError(f"{where} needs one of: checkpoint, model (+ weights or random_init: true), import_path")
    if t.weights:
        check_exists(t.weights, f"{where}.weights")
        load_into(model, load_state_dict_file(t.weights), f"teacher '{name}'", t.weights)
    elif not t.random_init and not t.checkpoint:
        raise ConfigError(f"{where} has no weights: give weights: FILE, a checkpoint, or random_init: true for a random teacher")
    return model


def _import_module_class(path: str, where: str):
    mod, _, attr = path.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{where}.import_path '{path}' cannot be imported ({e}); use 'package.module:Class'") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ConfigError(f"{where}.import_path '{path}' is not an nn.Module class")
    return obj


def build_student(cfg: Config, task: Task, in_channels: int) -> tuple[nn.Module, Dict[str, Any]]:
    if cfg.distill.student_input != "identity":
        in_channels = VIEW_CHANNELS[cfg.distill.student_input]
    spec = model_spec(cfg.student.name, cfg.student.options, task, in_channels)
    spec["data"] = cfg.data.model_dump(mode="json")  # so `crossdistill eval student.pt` finds its test set
    spec["student_input"] = cfg.distill.student_input
    model = model_from_spec(spec)
    if cfg.student.checkpoint:
        check_exists(cfg.student.checkpoint, "student")
        load_into(model, load_state_dict_file(cfg.student.checkpoint), "student", cfg.student.checkpoint)
    return model, spec


def check_copies(cfg: Config, distiller: Distiller) -> None:
    """Every batch field a network reads must be one the data makes (``data.copies``)."""
    made = {copy_field(c) for c in range(cfg.data.copies)}
    for field, who in distiller.fields_read().items():
        if field not in made:
            raise ConfigError(f"{who} reads the batch field '{field}', but data.copies={cfg.data.copies} makes only "
                              f"{', '.join(sorted(made))}; set data.copies: {int(field.rsplit('_', 1)[1]) + 1}")


def build_distiller(cfg: Config, info, task: Task, example: torch.Tensor, num_samples: int,
                    labels: Optional[torch.Tensor] = None, allow_imports: bool = False,
                    check_batch: Optional[Dict[str, Any]] = None) -> tuple[Distiller, Dict[str, Any]]:
    """Student, teachers and terms of ``cfg`` joined in a :class:`Distiller`, set up for a training set
    of ``num_samples`` samples (``labels``: their classes) — everything of a run but the data.
    ``example`` is one input batch for the dry run; ``check_batch`` (a collated batch of two samples),
    if given, checks that the student's output fits the task. Returns the distiller and the student's spec."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        student, spec = build_student(cfg, task, info.in_channels)
        teachers = {n: build_teacher(n, t, info.in_channels, allow_imports) for n, t in cfg.teachers.items()}
        terms = [build_method(term.method, **dict(term.model_extra or {})) for term in cfg.distill.terms]
        views = {n: VIEWS[t.input] for n, t in cfg.teachers.items() if t.input != "identity"}
        if cfg.distill.student_input != "identity":
            views["student"] = VIEWS[cfg.distill.student_input]
        fields = {n: t.input_field for n, t in cfg.teachers.items()}
        fields["student"] = cfg.distill.student_input_field
        distiller = Distiller(student, teachers, terms, task=task, task_weight=cfg.distill.task_weight,
                              example_input=example, input_transforms=views, input_fields=fields)
        if check_batch is not None:
            view = views.get("student")
            check_student_output(student, task, {**check_batch, "input": view(check_batch["input"]) if view
                                                 else check_batch["input"]}, cfg.student.name)
    check_copies(cfg, distiller)
    # a task that learns without labels gives the methods none either (CRD then draws its negatives
    # from all other samples instead of the other classes)
    uses_labels = getattr(task, "uses_labels", True)
    distiller.setup(DataSetup(num_samples=num_samples, num_classes=info.num_classes if uses_labels else None,
                              labels=labels if uses_labels else None))
    return distiller, spec


def build_run(cfg: Config, allow_imports: bool = False) -> Run:
    train, held_out, info, eval_split = build_data(cfg)
    task = build_task(cfg.task, info, cfg.task_options)
    with torch.random.fork_rng(devices=[]):  # reading samples leaves the global random stream as it was
        example = train[0]["input"].unsqueeze(0).repeat(2, 1, 1, 1)
        batch = default_collate([train[0], train[min(1, len(train) - 1)]])
    distiller, spec = build_distiller(cfg, info, task, example, len(train), getattr(train, "labels", None),
                                      allow_imports, check_batch=batch)
    train = with_sample_fields(train, distiller, cfg.seed)
    return Run(cfg, train, held_out, task, distiller, spec, eval_split)


def with_sample_fields(train: Dataset, distiller: Distiller, seed: int) -> Dataset:
    """The training set with the per-sample fields the methods declare (computed in loader workers)."""
    fields = distiller.sample_fields()
    return SampleFieldsDataset(train, fields, seed=seed) if fields else train
