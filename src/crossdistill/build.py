"""Build everything a run needs from a validated :class:`~crossdistill.config.Config`.

Two steps: :func:`build_run` makes the parts (data, task, networks, terms: a :class:`Run`, with no
effect on disk), :func:`start_run` finishes them for training in a folder (device and precision,
the folder's lock, the resume decision, the teacher cache, loaders, the optimiser factory: a
:class:`~crossdistill.engine.run.TrainingRun`). The trainer only loops over what it is given.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .checks import check_student_output
from .config import Config, DataConfig, TeacherConfig, TermConfig, recipe_writing
from .data import IndexedDataset, create_dataset
from .data.imagenet import check_batchable
from .data.transforms import build_eval_transform, build_train_transform
from .data.seeded import AugmentedDataset, SampleFieldsDataset, copy_field
from .data.wrappers import SubsetDataset, validation_split
from .distiller import Distiller
from .engine.checkpoint import load_checkpoint, load_into, student_state
from .engine.device import Precision, channels_last_trips_cpu_bug, pick_channels_last, pick_precision
from .engine.evaluate import eval_loader
from .engine.resume import check_same_config, check_same_data, check_same_world, data_identity
from .engine.run import TrainingRun
from .engine.run_folder import CHECKPOINT, FolderLock, check_new_run, load_resume_checkpoint, prepare
from .engine.sampler import EpochSampler
from .teacher_cache import cached_training_set
from .errors import CheckpointError, ConfigError
from .methods import DataSetup, Method, build_checked_method, build_method
from .models import create_model
from .models.weights import load_model_weights
from .tasks import TASKS, Task, create_task
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

    def start(self, output_dir: Optional[str] = None, resume: bool = False) -> TrainingRun:
        """This run finished for training in ``output_dir`` (default ``cfg.output_dir``): :func:`start_run`."""
        return start_run(self, output_dir, resume)


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
    check_batchable(train, d.augment)
    held_out = None
    if d.validation is not None:
        train_idx, val_idx = validation_split(len(train), d.validation)
        train, held_out = SubsetDataset(train, train_idx), SubsetDataset(train, val_idx)
    # one transform, or one per copy (data.copy_augment: MLKD's weak and strong views)
    transform = [build_train_transform(info, k) for k in d.copy_augment] if d.copy_augment else \
        build_train_transform(info, d.augment)
    train = IndexedDataset(AugmentedDataset(train, transform, seed=cfg.seed,
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
    elif t.weights:
        model = None  # a Hugging Face folder brings its network (load_model_weights says so otherwise)
    else:
        raise ConfigError(f"{where} needs one of: checkpoint, model (+ weights or random_init: true), import_path")
    if t.weights:
        check_exists(t.weights, f"{where}.weights")
        model = load_model_weights(model, t.weights, f"teacher '{name}'", t.weights_layout, t.strip_prefix,
                                   in_channels, t.num_classes)
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
        load_model_weights(model, cfg.student.checkpoint, "student", cfg.student.checkpoint_layout,
                           cfg.student.strip_prefix)
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
        terms = [build_term(term) for term in cfg.distill.terms]
        views = {n: VIEWS[t.input] for n, t in cfg.teachers.items() if t.input != "identity"}
        if cfg.distill.student_input != "identity":
            views["student"] = VIEWS[cfg.distill.student_input]
        fields = {n: t.input_field for n, t in cfg.teachers.items()}
        fields["student"] = cfg.distill.student_input_field
        distiller = Distiller(student, teachers, terms, task=task, task_weight=cfg.distill.task_weight,
                              example_input=example, input_transforms=views, input_fields=fields,
                              fast_teacher=cfg.distill.fast_teacher)
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


def build_term(term: TermConfig) -> Method:
    """A term of the config as a method; options that parsing checked are not checked again."""
    checked = term.checked_options()
    if checked is not None:
        return build_checked_method(term.method, checked)
    return build_method(term.method, **dict(term.model_extra or {}))


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


def start_run(run: Run, output_dir: Optional[str] = None, resume: bool = False) -> TrainingRun:
    """Finish ``run`` for training in ``output_dir`` (default ``cfg.output_dir``): the networks on
    their device, the folder locked (rank 0) and checked (a new run must not overwrite an old one;
    ``resume``: the checkpoint loaded and checked against this run), the teacher cache opened or
    filled, the loaders and the optimiser factory. Every check that can fail does so before anything
    is written to the folder; on failure the lock is released. ``run`` itself is not changed."""
    cfg, tc = run.cfg, run.cfg.train
    out = Path(output_dir or cfg.output_dir)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    precision = Precision.pick(tc.device, tc.precision, tc.channels_last, training=True)
    if tc.channels_last is None and precision.channels_last and precision.device.type == "cpu" and \
            channels_last_trips_cpu_bug(nn.ModuleList([run.distiller.student, run.distiller.terms])):
        precision = replace(precision, channels_last=False)  # the measured default, unless unsafe here
    device = precision.device
    eval_dtype = pick_precision(tc.eval_precision, device)
    eval_precision = Precision(device, eval_dtype, pick_channels_last(None, device, eval_dtype))
    distiller = run.distiller.to(device)
    if precision.channels_last:
        distiller.student.to(memory_format=torch.channels_last)
        distiller.teachers.to(memory_format=torch.channels_last)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    if tc.compile:
        distiller.student.compile()
    identity = data_identity(run.train_set, run.eval_set)
    # one run per folder, and every check that can fail before anything is written to it
    lock = FolderLock(out)
    if rank == 0:
        lock.acquire()
    try:
        if rank == 0 and not resume:
            check_new_run(out)
        resume_state = resume_checkpoint(out, cfg, world, identity) if resume else None
        if rank == 0:
            prepare(out)
        # the teacher cache (if configured) is opened or filled now, and then feeds the loader
        log = (lambda m: print(m, file=sys.stderr, flush=True)) if rank == 0 and tc.progress else None
        train_set, cache_info = cached_training_set(run, device, precision.dtype, precision.channels_last, rank, world,
                                                    out, log=log)
    except BaseException:
        lock.release()
        raise
    sampler = EpochSampler(len(train_set), cfg.seed, True, rank, world)
    # the loaders draw their worker base seed from their own generator, never from the global RNG
    # (a fresh iterator per epoch, or after a resume, must not shift the global random stream)
    generator = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler,
                              num_workers=cfg.data.num_workers, drop_last=False, persistent_workers=False,
                              pin_memory=device.type == "cuda", generator=generator)
    evaluation = eval_loader(run.eval_set, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.num_workers,
                             rank, world)
    return TrainingRun(run, out, rank, world, precision, eval_precision, lock, resume_state, train_set, cache_info,
                       identity, sampler, generator, train_loader, evaluation, optimizer_factory(distiller, cfg))


def resume_checkpoint(out: Path, cfg: Config, world: int, identity: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The checkpoint in ``out`` to resume from, checked against this run (None: nothing to resume)."""
    ckpt = load_resume_checkpoint(out)
    if ckpt is not None:
        path = out / CHECKPOINT
        check_same_config(ckpt, cfg, path)
        check_same_world(ckpt, world, path)
        check_same_data(ckpt, identity, path)
    return ckpt


def optimizer_factory(distiller: Distiller, cfg: Config) -> Callable[[str], torch.optim.Optimizer]:
    """Phase name → a fresh optimiser over that phase's trainable parameters (``train.optimizer``)."""
    o = cfg.train.optimizer

    def make(phase: str) -> torch.optim.Optimizer:
        # parameter groups: a parameter with its own weight-decay hint (a projector option) gets its own
        params = distiller.parameter_groups(phase, o.weight_decay)
        if not params:
            raise ConfigError(f"phase '{phase}' has no trainable parameters")
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                   nesterov=o.nesterov)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    return make
