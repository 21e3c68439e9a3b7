"""Property-based tests of the config layer: overrides, schema, YAML round-trips.

Whatever a user types, the answer is a valid config or one :class:`ConfigError` — never another
exception.
"""
from __future__ import annotations

import copy
import os
import tempfile

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crossdistill.config import (  # noqa: E402
    Config,
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimizerConfig,
    ScheduleConfig,
    TeacherConfig,
    TrainConfig,
    apply_override,
    dump_config,
    load_config,
    options_model,
    parse_config,
    read_yaml,
)
from crossdistill.methods import METHODS  # noqa: E402

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE = {
    "name": "props",
    "student": {"name": "resnet8"},
    "teachers": {"default": {"model": "resnet8", "num_classes": 4, "random_init": True}},
    "distill": {"terms": [{"method": "kd", "T": 4.0}, {"method": "fitnet", "student": "@stage:1"}]},
    "train": {"epochs": 2},
}

segment = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12),
)


def expected_value(raw: str):
    """What an override value means: YAML's reading of it, the raw text if YAML rejects it."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


@SETTINGS
@given(keys=st.lists(segment, min_size=1, max_size=5), value=scalars)
def test_override_lands_in_the_right_place(keys, value):
    raw = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    data: dict = {}
    apply_override(data, ".".join(keys) + "=" + raw)
    cur = data
    for k in keys[:-1]:
        assert list(cur) == [k]
        cur = cur[k]
    assert cur == {keys[-1]: expected_value(raw)}
    assert cur[keys[-1]] == value or (value == "" and cur[keys[-1]] in ("", None))


@SETTINGS
@given(item=st.text(max_size=40))
def test_any_override_text_is_applied_or_refused_cleanly(item):
    data = copy.deepcopy(BASE)
    try:
        apply_override(data, item)
    except ConfigError:
        return
    key = item.split("=", 1)[0]
    assert "=" in item and all(p.strip() for p in key.strip().split("."))


@SETTINGS
@given(raw=st.text(max_size=30))
def test_override_value_parses_as_yaml_would(raw):
    data: dict = {}
    try:
        apply_override(data, "train.name=" + raw)
    except ConfigError as e:
        assert "tag" in str(e)  # only YAML tags are refused outright
        return
    assert data["train"]["name"] == expected_value(raw)


known = {"train.epochs": st.integers(-3, 500), "train.optimizer.lr": st.floats(-1, 10),
         "data.batch_size": st.integers(-2, 512), "seed": st.integers(), "name": st.text(max_size=10),
         "train.schedule.name": st.sampled_from(["multistep", "cosine", "constant", "linear"]),
         "train.precision": st.sampled_from(["auto", "fp32", "bf16", "fp16", "fp8"]),
         "distill.terms.0.T": st.one_of(st.floats(0.1, 10), st.text(max_size=4)),
         "distill.terms.1.projector": st.sampled_from(["standard", "inverted", "identity", "sideways"]),
         "teachers.default.num_classes": st.integers(-1, 10)}


@SETTINGS
@given(pairs=st.lists(st.sampled_from(sorted(known)).flatmap(lambda k: known[k].map(lambda v: (k, v))),
                      max_size=4))
def test_overrides_give_a_valid_config_or_one_config_error(pairs):
    items = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in pairs]
    try:
        cfg = load_config(data=BASE, overrides=items)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(cfg, Config)
    for k, v in pairs[-1:]:  # the last override of a key wins and is what the config holds
        node = cfg.model_dump(mode="python")
        for part in k.split("."):
            node = node[int(part)] if isinstance(node, list) else (node.get(part) if isinstance(node, dict) else
                                                                  getattr(node, part))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            assert float(node) == float(v)


valid_configs = st.fixed_dictionaries({
    "name": st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12),
    "seed": st.integers(0, 2**31),
    "data": st.fixed_dictionaries({"batch_size": st.integers(1, 256),
                                   "augment": st.sampled_from(["crop_flip", "none"]),
                                   "options": st.dictionaries(segment, scalars, max_size=3)}),
    "student": st.fixed_dictionaries({"name": st.sampled_from(["resnet8", "resnet20", "wrn_16_2"])}),
    "train": st.fixed_dictionaries({
        "epochs": st.integers(1, 300),
        "optimizer": st.fixed_dictionaries({"lr": st.floats(1e-6, 10), "name": st.sampled_from(["sgd", "adamw"])}),
        "schedule": st.fixed_dictionaries({"milestones": st.lists(st.integers(0, 300), max_size=3)}),
        "checkpoint_every_steps": st.one_of(st.none(), st.integers(1, 1000)),
        "nonfinite": st.sampled_from(["stop", "skip"]),
    }),
    "distill": st.fixed_dictionaries({
        "task_weight": st.floats(0, 10),
        "terms": st.lists(st.one_of(
            st.fixed_dictionaries({"method": st.just("kd"), "T": st.floats(0.5, 20)}),
            st.fixed_dictionaries({"method": st.just("fitnet"),
                                   "projector": st.sampled_from(["standard", "inverted"])})), max_size=3),
    }),
})


@SETTINGS
@given(raw=valid_configs)
def test_dump_then_load_round_trips(raw):
    cfg = parse_config(raw)
    text = dump_config(cfg)
    again = parse_config(yaml.safe_load(text))
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")
    with tempfile.TemporaryDirectory() as d:  # and through a file, as the CLI reads it
        path = os.path.join(d, "cfg.yaml")
        with open(path, "w") as f:
            f.write(text)
        assert load_config(path).model_dump(mode="json") == cfg.model_dump(mode="json")


sections = st.sampled_from(["", "data.", "train.", "train.optimizer.", "train.schedule.", "student.",
                            "teachers.default.", "distill."])


@SETTINGS
@given(section=sections, key=segment, value=scalars)
def test_unknown_keys_are_always_rejected(section, key, value):
    model = {"": Config, "data.": DataConfig, "train.": TrainConfig, "train.optimizer.": OptimizerConfig,
             "train.schedule.": ScheduleConfig, "student.": ModelConfig, "teachers.default.": TeacherConfig,
             "distill.": DistillConfig}[section]
    if key in model.model_fields or (section == "" and key == "base"):
        return
    raw = copy.deepcopy(BASE)
    with pytest.raises(ConfigError, match="unknown config key"):
        apply_override(raw, f"{section}{key}=1")
        parse_config(raw)


@SETTINGS
@given(option=segment)
def test_unknown_method_options_are_rejected(option):
    if option in options_model(METHODS.get("kd")).model_fields or option == "method":
        return
    raw = copy.deepcopy(BASE)
    raw["distill"]["terms"][0][option] = 1
    with pytest.raises(ConfigError, match=f"unknown option '{option}'"):
        parse_config(raw)


@SETTINGS
@given(text=st.text(max_size=80))
def test_any_yaml_file_is_read_or_refused_cleanly(text):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "cfg.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        try:
            data = read_yaml(path)
        except ConfigError:
            return
        assert isinstance(data, dict)
        try:
            parse_config(data)
        except ConfigError:
            pass


def test_yaml_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "PWNED"
    path.write_text(f"name: !!python/object/apply:os.mkdir ['{marker}']\nstudent: {{name: resnet8}}\n")
    with pytest.raises(ConfigError, match="YAML tag"):
        load_config(path)
    assert not marker.exists()
