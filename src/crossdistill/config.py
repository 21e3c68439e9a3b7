"""Typed, validated configs: YAML recipes + ``key=value`` overrides.

YAML is read with ``yaml.safe_load`` (no tags, no code). A recipe may start from another with
``base: other.yaml`` (path relative to the recipe; deep-merged, the recipe wins). Every key is
checked against the schema below before any work starts; an unknown key or a bad value is one
:class:`ConfigError` line naming the key and the valid choices. Method options are checked against
the method's own signature (names and types) at load time too.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Sequence, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, model_validator

from .errors import ConfigError, did_you_mean
from .methods import METHODS
from .options import options_model, validate_options  # noqa: F401 (re-exported)
from .tasks import TASKS


#: a batch field holding an augmented copy of the image: input, input_1, input_2, ...
INPUT_FIELD = r"^input(_[1-9][0-9]*)?$"


class Strict(BaseModel):
    # allow_inf_nan=False: `lr=.inf` or `.nan` (valid YAML floats) are bad values, not a run that NaNs
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _expand_user(path: str) -> str:
    return os.path.expanduser(path)


def _output_dir(path: str) -> str:
    if not path.strip():
        raise ValueError("an empty output_dir would write into the current folder; give a folder name, "
                         "e.g. output_dir=runs/my-run")
    return _expand_user(path)


#: A path read from a config: ``~`` is expanded (once, here, for every reader).
UserPath = Annotated[str, AfterValidator(_expand_user)]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
WeightsLayout = Literal["auto", "crossdistill", "torchvision", "timm", "hf", "ssl"]


class DataConfig(Strict):
    name: str = "shapes"
    root: Optional[UserPath] = None
    options: Dict[str, Any] = Field(default_factory=dict)  # dataset-specific, checked by the dataset
    augment: Literal["crop_flip", "resized_crop_flip", "ssl", "imagenet", "randaugment", "none"] = "crop_flip"
    # independently augmented copies of each training image: input, input_1, ... (two views for a
    # self-supervised objective; a different view for one network). Evaluation always sees one.
    copies: int = Field(1, ge=1, le=8)
    # the augmentation of each copy (input, input_1, ...), e.g. [crop_flip, randaugment] for MLKD's weak
    # and strong views; unset: every copy uses `augment`
    copy_augment: Optional[List[Literal["crop_flip", "resized_crop_flip", "ssl", "randaugment", "none"]]] = None

    @model_validator(mode="after")
    def _one_augment_per_copy(self):
        if self.copy_augment is not None and len(self.copy_augment) != self.copies:
            raise ValueError(f"data.copy_augment names {len(self.copy_augment)} augmentation(s) for data.copies="
                             f"{self.copies}: give one per copy (input, input_1, ...)")
        return self
    batch_size: int = Field(64, gt=0)
    eval_batch_size: Optional[int] = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    # hold out part of the *training* split (a count, or a fraction in (0, 1)) and evaluate on it
    # instead of the test split, which is then never read; drawn with a fixed seed
    # (data.wrappers.VALIDATION_SEED), so every run seed sees the same validation samples
    validation: Optional[Union[Annotated[StrictInt, Field(gt=0)], Annotated[float, Field(gt=0, lt=1)]]] = None


class ModelConfig(Strict):
    name: str
    options: Dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[UserPath] = None  # a crossdistill checkpoint or a plain state-dict file
    # the checkpoint's key layout and a prefix to strip (models/weights.py, docs/teachers.md)
    checkpoint_layout: WeightsLayout = "auto"
    strip_prefix: Optional[str] = None


class TeacherConfig(Strict):
    """A teacher: a crossdistill checkpoint (model read from it), a registered model with weights
    from a state-dict file, a randomly initialised network fixed by ``seed``, or — only with the
    CLI's ``--allow-imports`` — a class given by import path ``package.module:Class``."""

    checkpoint: Optional[UserPath] = None
    model: Optional[str] = None
    options: Dict[str, Any] = Field(default_factory=dict)
    num_classes: Optional[int] = Field(None, gt=0)  # output size of the teacher's own head
    weights: Optional[UserPath] = None  # a state-dict file (.pt/.pth/.safetensors) or a Hugging Face folder
    weights_layout: WeightsLayout = "auto"  # auto | crossdistill | torchvision | timm | hf | ssl (docs/teachers.md)
    strip_prefix: Optional[str] = None  # e.g. module.encoder_q. (found by itself with auto / ssl)
    random_init: bool = False
    seed: int = 0
    import_path: Optional[str] = None
    input: Literal["identity", "luminance", "chroma", "grayscale3"] = "identity"
    # the batch field this teacher reads: input (the student's tensor), or input_1, ... (data.copies)
    input_field: str = Field("input", pattern=INPUT_FIELD)


class TermConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest are the method's own options
    method: str
    # (given options, their checked values): the options are checked once, when the config is parsed
    _checked: Optional[tuple] = PrivateAttr(default=None)

    def checked_options(self) -> Optional[Dict[str, Any]]:
        """The method's options as :func:`parse_config` checked them, or None if they changed since."""
        if self._checked is None or self._checked[0] != dict(self.model_extra or {}):
            return None
        return dict(self._checked[1])


class DistillConfig(Strict):
    task_weight: float = Field(1.0, ge=0)
    terms: List[TermConfig] = Field(default_factory=list)
    student_input: Literal["identity", "luminance", "chroma", "grayscale3"] = "identity"
    student_input_field: str = Field("input", pattern=INPUT_FIELD)  # as teachers.X.input_field
    # fold the teachers' unread BatchNorms into their convolutions (same outputs within float rounding)
    fast_teacher: bool = True


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = False


class ScheduleConfig(Strict):
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: List[int] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(240, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    # learning rate of a method-declared extra phase, by phase name (e.g. {init: 0.01}); default optimizer.lr
    phase_lr: Dict[str, float] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "auto"
    # evaluation precision: fp32 unless asked, so `crossdistill eval student.pt` measures what training reported
    eval_precision: Precision = "fp32"
    channels_last: Optional[bool] = None  # None = the measured default for the device
    compile: bool = False
    grad_clip: Optional[float] = Field(None, gt=0)
    nonfinite: Literal["stop", "skip"] = "stop"
    max_steps_per_epoch: Optional[int] = Field(None, gt=0)
    eval_every: int = Field(1, gt=0)
    log_every: int = Field(20, gt=0)
    checkpoint_every: int = Field(1, gt=0)  # epochs
    checkpoint_every_steps: Optional[int] = Field(None, gt=0)
    deterministic: bool = False
    threads: Optional[int] = Field(None, gt=0)  # torch intra-op threads; bit-exact resume needs the same count
    progress: bool = True


class TeacherCacheConfig(Strict):
    """The teacher's outputs stored once for ``views`` augmented views per sample (``teacher_cache.py``)."""

    views: int = Field(8, ge=1)
    dir: Optional[str] = None  # default <output_dir>/teacher_cache; give a shared folder to reuse it across runs
    dtype: Literal["float16", "float32"] = "float16"
    topk: Optional[int] = Field(None, gt=0)  # keep only the k largest logits of a [classes] output
    seed: int = 0  # seeds the views' augmentation parameters (not the run's seed: runs can share a cache)
    rebuild: bool = False  # a cache built for another teacher/data/augmentation: rebuild instead of refusing
    fill_batch_size: Optional[int] = Field(None, gt=0)  # default: data.eval_batch_size or data.batch_size


class Config(Strict):
    name: str = "run"
    seed: int = 0
    output_dir: Annotated[str, AfterValidator(_output_dir)] = "runs/run"
    task: str = "classification"
    task_options: Dict[str, Any] = Field(default_factory=dict)  # checked against the task's signature
    data: DataConfig = Field(default_factory=DataConfig)
    student: ModelConfig
    teachers: Dict[str, TeacherConfig] = Field(default_factory=dict)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher_cache: Optional[TeacherCacheConfig] = None


# ---------------------------------------------------------------------------------------------
def format_validation_error(err: ValidationError, model: Optional[type[BaseModel]] = None, prefix: str = "") -> str:
    """One line for the first problem pydantic found: the dotted key, the value, what is wrong."""
    return _format_error(err, model or Config, prefix)


def _format_error(err: ValidationError, model: Optional[type[BaseModel]] = None, prefix: str = "") -> str:
    model = model or Config
    e = err.errors()[0]
    loc = prefix + ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        parent = _schema_at(model, e["loc"][:-1])
        valid = list(parent.model_fields) if parent else []
        return f"unknown config key '{loc}': {did_you_mean(str(e['loc'][-1]), valid)}"
    if e["type"] == "missing":
        return f"config key '{loc}' is required"
    shown = repr(e.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    msg = str(e["ctx"]["error"]) if e["type"] == "value_error" and "error" in e.get("ctx", {}) else e["msg"]
    return f"bad value for config key '{loc}' ({shown}): {msg}"


def _schema_at(model: type[BaseModel], loc: Sequence[Any]) -> Optional[type[BaseModel]]:
    cur: Any = model
    for part in loc:
        if isinstance(part, int) or cur is None:
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cands = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        cur = cands[0] if cands else (args[-1] if args and isinstance(args[-1], type) and issubclass(args[-1], BaseModel) else None)
    return cur


def read_yaml(path: str | os.PathLike, _seen: tuple = ()) -> Dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist; `crossdistill list configs` shows the built-in recipes")
    if not p.is_file():
        raise ConfigError(f"config '{p}' is not a file; give the path of a YAML file")
    if p.resolve() in _seen:
        raise ConfigError(f"config '{p}' includes itself through 'base:'; remove the loop")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config '{p}' is not a text file (not UTF-8); give a YAML file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config '{p}' ({e.strerror or e}); check its permissions") from None
    data = parse_yaml_text(text, f"config '{p}'")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{p}' must be a mapping of keys to values (key: value lines), "
                          f"not a {type(data).__name__}")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"config '{p}': key {bad_keys[0]!r} is not a name; config keys are words such as 'train'")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"'base' in '{p}' must be a path to another YAML file")
        parent = read_yaml(p.parent / base, _seen + (p.resolve(),))
        data = deep_merge(parent, data)
    return data


def parse_yaml_text(text: str, what: str) -> Any:
    """``yaml.safe_load`` (plain data only) with one-line errors; tags such as ``!!python/...`` are refused."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        if "tag" not in str(e.problem):
            raise ConfigError(f"{what} is not a valid config{where}: {_one_line(e.problem or e)}") from None
        raise ConfigError(f"{what} uses a YAML tag{where} ({_one_line(e.problem or e)}); configs are plain data "
                          "and never construct objects or run code: remove the tag") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} is not valid YAML{where}: {_one_line(getattr(e, 'problem', None) or e)}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to be a config") from None


def _one_line(x: Any) -> str:
    text = " ".join(str(x).split())
    return text if len(text) <= 120 else text[:117] + "..."


def deep_merge(a: Dict[str, Any], b: Mapping[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_override(data: Dict[str, Any], item: str) -> None:
    """``a.b.c=value`` into the nested dict. The value is parsed as a YAML scalar/flow value (numbers,
    bools, null, ``[lists]``, ``{maps}``) exactly as ``yaml.safe_load`` would; text that is not valid
    YAML (e.g. ``name=a: b``) is kept as the plain string. An empty value is ``null``. A list
    element is addressed by its index (``distill.terms.0.weight=2``)."""
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=10")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.constructor.ConstructorError as e:
        if "tag" in str(e.problem):
            raise ConfigError(f"override '{key}' uses a YAML tag ({_one_line(raw)}); values are plain data "
                              "(numbers, text, lists), never objects") from None
        value = raw
    except (yaml.YAMLError, RecursionError):
        value = raw
    parts = key.strip().split(".")
    if not all(p.strip() for p in parts):
        raise ConfigError(f"override key '{key}' is malformed; use dotted names such as train.optimizer.lr=0.1")
    cur: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(cur, list):
            cur = cur[_list_index(cur, part, ".".join(parts[: i + 1]))]
        elif part not in cur or cur[part] is None:
            cur[part] = {}
            cur = cur[part]
        else:
            cur = cur[part]
        if not isinstance(cur, (dict, list)):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
    last = parts[-1]
    if isinstance(cur, list):
        cur[_list_index(cur, last, key)] = value
    else:
        cur[last] = value


def _list_index(seq: list, part: str, where: str) -> int:
    try:
        idx = int(part)
    except ValueError:
        idx = -1
    if not part.strip().isdigit() or not 0 <= idx < len(seq):
        valid = f"0..{len(seq) - 1}" if seq else "none (the list is empty)"
        raise ConfigError(f"override '{where}': '{part}' is not an index of this list; valid indices: {valid}")
    return idx


def load_config(path: Optional[str | os.PathLike] = None, overrides: Sequence[str] = (),
                data: Optional[Mapping[str, Any]] = None) -> Config:
    raw = read_yaml(path) if path is not None else copy.deepcopy(dict(data or {}))
    for item in overrides:
        apply_override(raw, item)
    return parse_config(raw)


def parse_config(raw: Mapping[str, Any]) -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None
    check_teachers(cfg)
    check_terms(cfg)
    if cfg.teacher_cache is not None and not cfg.teachers:
        raise ConfigError("teacher_cache needs a teacher whose outputs it stores: add one under `teachers:` "
                          "or remove teacher_cache")
    check_task_options(cfg)
    return cfg


#: A teacher is given one way; a checkpoint records its own model, classes and weights.
_TEACHER_SOURCES = ("checkpoint", "model", "import_path")
_CHECKPOINT_IGNORES = ("model", "import_path", "weights", "options")  # num_classes is checked against it


def check_teachers(cfg: Config) -> None:
    """Keys that would be silently ignored are refused: the user meant something by them."""
    for name, t in cfg.teachers.items():
        given = [k for k in _TEACHER_SOURCES if getattr(t, k) is not None]
        where = f"teachers.{name}"
        if t.checkpoint is not None:
            ignored = [k for k in _CHECKPOINT_IGNORES if getattr(t, k) not in (None, {})]
            if ignored:
                raise ConfigError(f"{where} gives both checkpoint and {ignored[0]}; a checkpoint brings its own model, "
                                  f"classes and weights, so {ignored[0]} would be ignored: remove one of them")
        elif len(given) > 1:
            raise ConfigError(f"{where} gives both {given[0]} and {given[1]}; a teacher comes from one of "
                              "checkpoint, model or import_path: remove the other")


def check_task_options(cfg: Config) -> None:
    try:
        cls = TASKS.get(cfg.task)
    except ConfigError as e:
        raise ConfigError(f"task: {e}") from None
    options = dict(cfg.task_options)
    if "num_classes" in options:
        raise ConfigError("task_options.num_classes: the number of classes comes from the dataset; remove it")
    validate_options(cls, options, f"task_options ({cfg.task})")


def check_terms(cfg: Config) -> None:
    for i, term in enumerate(cfg.distill.terms):
        try:
            cls = METHODS.get(term.method)
        except ConfigError as e:
            raise ConfigError(f"distill.terms.{i}.method: {e}") from None
        given = dict(term.model_extra or {})
        term._checked = (copy.deepcopy(given), validate_options(cls, given, f"distill.terms.{i} ({term.method})"))


#: The built-in recipes (``crossdistill list configs``); files starting with "_" are shared bases.
RECIPES = Path(__file__).parent / "configs"


def list_configs() -> List[str]:
    return sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml") if not p.name.startswith("_"))


def recipe_writing(path: str | os.PathLike) -> Optional[str]:
    """The built-in recipe whose run exports ``path`` (its ``output_dir/student.pt``), if any: what to
    run when a config needs a teacher that was never trained."""
    target = Path(os.path.expanduser(path)).resolve()
    for name in list_configs():
        try:
            out = read_yaml(RECIPES / f"{name}.yaml").get("output_dir", Config.model_fields["output_dir"].default)
        except ConfigError:
            continue
        if isinstance(out, str) and (Path(os.path.expanduser(out)) / "student.pt").resolve() == target:
            return name
    return None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
