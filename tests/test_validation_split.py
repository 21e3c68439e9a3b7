"""data.validation: a held-out part of the training split; the test split is then never read."""
import json

import pytest
import torch

from crossdistill.build import build_run
from crossdistill.config import parse_config
from crossdistill.data.wrappers import VALIDATION_SEED, validation_split
from crossdistill.errors import ConfigError

RAW = {"data": {"name": "shapes", "batch_size": 8, "augment": "none",
                "options": {"num_classes": 3, "image_size": 16, "train_size": 40, "test_size": 8}},
       "student": {"name": "resnet8"}, "train": {"epochs": 1, "precision": "fp32", "progress": False}}


@pytest.mark.parametrize("validation, n_val", [(10, 10), (0.25, 10), (0.01, 1), (39, 39)])
def test_split_is_disjoint_covers_everything_and_has_the_asked_size(validation, n_val):
    train, val = validation_split(40, validation)
    assert len(val) == n_val and len(train) == 40 - n_val
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(40))


def test_split_is_fixed_by_its_own_seed_not_the_run_seed():
    a = validation_split(100, 0.2)
    torch.manual_seed(123)  # the global RNG has no say
    b = validation_split(100, 0.2)
    assert torch.equal(a[1], b[1])
    assert not torch.equal(validation_split(100, 0.2, seed=VALIDATION_SEED + 1)[1], a[1])


@pytest.mark.parametrize("bad", [0, -3, 0.0, 1.0, 1.5, True, "10%"])
def test_bad_validation_values_are_config_errors(bad):
    with pytest.raises(ConfigError, match="data.validation"):
        parse_config({**RAW, "data": {**RAW["data"], "validation": bad}})


def test_validation_that_leaves_nothing_to_train_on_is_refused():
    cfg = parse_config({**RAW, "data": {**RAW["data"], "validation": 40}})
    with pytest.raises(ConfigError, match="at least one to train on"):
        build_run(cfg)


def test_run_with_validation_trains_on_the_rest_and_never_builds_the_test_split(monkeypatch):
    import crossdistill.build as build

    asked = []
    real = build.cached_dataset.__wrapped__

    def spy(name, split, root, options_json):
        asked.append(split)
        return real(name, split, root, options_json)

    monkeypatch.setattr(build, "cached_dataset", spy)
    run = build_run(parse_config({**RAW, "data": {**RAW["data"], "validation": 0.25}}))
    assert asked == ["train"] and run.eval_split == "validation"
    assert len(run.train_set) == 30 and len(run.eval_set) == 10
    # the training samples are exactly the complement of the validation samples, by content
    full = real("shapes", "train", None, json.dumps(RAW["data"]["options"], sort_keys=True))
    tr = {full.data["input"][i].numpy().tobytes() for i in run.train_set.dataset.dataset.indices.tolist()}
    va = {full.data["input"][i].numpy().tobytes() for i in run.eval_set.dataset.dataset.indices.tolist()}
    assert tr.isdisjoint(va)
    # CRD-style consumers see the subset's labels and indices 0..len-1
    assert torch.equal(run.train_set.labels, full.labels[run.train_set.dataset.dataset.indices])
    assert int(run.train_set[29]["index"]) == 29


def test_summary_records_the_split_its_metric_came_from(tmp_path):
    from crossdistill.engine.trainer import Trainer

    s = Trainer(build_run(parse_config({**RAW, "output_dir": str(tmp_path / "v"),
                                        "data": {**RAW["data"], "validation": 8}}))).fit()
    assert s["eval_split"] == "validation"
    assert json.loads((tmp_path / "v" / "summary.json").read_text())["eval_split"] == "validation"
    s = Trainer(build_run(parse_config({**RAW, "output_dir": str(tmp_path / "t")}))).fit()
    assert s["eval_split"] == "test"


def test_label_smoothing_is_a_checked_task_option():
    from crossdistill.tasks import create_task

    cfg = parse_config({**RAW, "task_options": {"label_smoothing": 0.1}})
    assert build_run(cfg).task.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="task_options"):
        parse_config({**RAW, "task_options": {"label_smoothin": 0.1}})
    with pytest.raises(ConfigError, match="label_smoothing"):
        parse_config({**RAW, "task_options": {"label_smoothing": 1.5}})
    # the loss against its formula: CE with target (1 − ε)·onehot + ε/K
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    label = torch.tensor([0, 1])
    eps, k = 0.2, 3
    target = torch.nn.functional.one_hot(label, k).float() * (1 - eps) + eps / k
    expected = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    got = create_task("classification", k, label_smoothing=eps).loss(logits, {"label": label})
    assert torch.allclose(got, expected)
