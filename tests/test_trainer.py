"""Trainer pieces that are pure functions of their inputs: schedules, phase learning rates, sampler."""
import math

from crossdistill.config import ScheduleConfig
from crossdistill.engine.schedule import lr_factor
from crossdistill.engine.sampler import EpochSampler


def test_multistep_and_cosine_factors():
    ms = ScheduleConfig(name="multistep", milestones=[150, 180, 210], gamma=0.1)
    assert lr_factor(ms, 149.9, 240) == 1.0
    assert math.isclose(lr_factor(ms, 150.0, 240), 0.1)
    assert math.isclose(lr_factor(ms, 239.0, 240), 1e-3)
    cos = ScheduleConfig(name="cosine")
    assert lr_factor(cos, 0, 10) == 1.0 and math.isclose(lr_factor(cos, 5, 10), 0.5) and lr_factor(cos, 10, 10) < 1e-12
    warm = ScheduleConfig(name="constant", warmup_epochs=2)
    assert math.isclose(lr_factor(warm, 1.0, 10), 0.5, rel_tol=1e-6) and lr_factor(warm, 3, 10) == 1.0


def test_epoch_sampler_is_a_function_of_seed_epoch_and_rank():
    a = EpochSampler(10, seed=3)
    a.set_epoch(2)
    b = EpochSampler(10, seed=3)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(3)
    assert list(a) != list(b)
    a.set_epoch(2, start=4)  # resume mid-epoch: the same order, minus what was done
    full = EpochSampler(10, seed=3)
    full.set_epoch(2)
    assert list(a) == list(full)[4:]
    r0, r1 = EpochSampler(9, 0, rank=0, world=2), EpochSampler(9, 0, rank=1, world=2)
    assert len(list(r0)) == len(list(r1)) == 5 and set(r0) | set(r1) == set(range(9))


def test_extra_phases_use_their_own_learning_rate(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    cfg = load_config(data={
        "output_dir": str(tmp_path / "run"),
        "data": {"name": "shapes", "batch_size": 8, "options": {"num_classes": 4, "image_size": 16, "train_size": 16, "test_size": 8}},
        "student": {"name": "resnet8"},
        "teachers": {"default": {"model": "resnet8", "num_classes": 4, "random_init": True}},
        "distill": {"terms": [{"method": "ft", "init_epochs": 1}]},
        "train": {"epochs": 1, "precision": "fp32", "progress": False, "optimizer": {"lr": 0.05},
                  "phase_lr": {"init": 0.01}}})
    trainer = Trainer(build_run(cfg))
    assert trainer.phases[0] == ("init", 1)
    trainer.optimizer = trainer._optimizer("init")
    assert trainer._set_lr("init", 1, 0.5) == 0.01
    trainer.optimizer = trainer._optimizer("main")
    assert math.isclose(trainer._set_lr("main", 1, 0.0), 0.05)
