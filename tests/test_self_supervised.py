"""Self-supervised teachers: NT-Xent, SimCLR / SimSiam on two views, the label-free task, the SSL augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from crossdistill.distiller import Distiller
from crossdistill.losses import nt_xent_loss
from crossdistill.methods import build_method
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch

D64 = torch.float64


# ------------------------------------------------------------------------------------------ NT-Xent
def test_nt_xent_hand_case():
    # z¹ = z² = (e1, e2), τ = 1: row i's similarities to the other rows are 1 (its positive), 0, 0
    # → ℓ_i = −log(e / (e + 2)) for all four rows
    z = torch.eye(2, dtype=D64)
    assert_close(nt_xent_loss(z, z.clone(), temperature=1.0), torch.tensor(math.log((math.e + 2) / math.e), dtype=D64))


def test_nt_xent_matches_an_explicit_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    tau = 0.3
    z = np.concatenate([a, b])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(8):
        pos = (i + 4) % 8
        denom = sum(math.exp(z[i] @ z[j] / tau) for j in range(8) if j != i)
        total += -math.log(math.exp(z[i] @ z[pos] / tau) / denom)
    assert_close(nt_xent_loss(torch.tensor(a), torch.tensor(b), tau), torch.tensor(total / 8, dtype=D64))


# ------------------------------------------------------------------------------------------ methods on two views
def _two_views(n=32, seed=0):
    batch = toy_batch(n=n, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = batch["input"]
    # a second "augmentation": flip and noise
    return {"input": x + 0.1 * torch.randn(x.shape, generator=g),
            "input_1": x.flip(-1) + 0.1 * torch.randn(x.shape, generator=g)}     # no label field at all


@pytest.mark.parametrize("method", ["simclr", "simsiam"])
def test_self_supervised_methods_lower_their_loss_without_labels(method):
    torch.manual_seed(0)
    student = TinyNet(width=4)
    d = Distiller(student, None, [build_method(method)], task=create_task("self_supervised", 5),
                  example_input=toy_batch()["input"])
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    d.train()
    batch = _two_views()
    losses = []
    for _ in range(25):
        loss, parts = d(batch)
        assert set(parts) == {method}                  # no task term: the task has no labelled loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05, losses


def test_simclr_runs_the_student_on_both_views():
    student = TinyNet(width=4)
    d = Distiller(student, None, [build_method("simclr")], task=create_task("self_supervised", 5),
                  example_input=toy_batch()["input"])
    seen = []
    student.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    batch = _two_views()
    d(batch)
    assert len(seen) == 2 and seen[0] is batch["input"] and seen[1] is batch["input_1"]
    # predict() gives the task's output side, the pooled feature, not the (unused) classifier's logits
    assert d.predict(batch["input"]).shape == (32, 16)


# ------------------------------------------------------------------------------------------ through the trainer
def _ssl_raw(tmp_path, name="ssl", **extra):
    raw = {"name": name, "output_dir": str(tmp_path / name), "task": "self_supervised", "seed": 3,
           "data": {"name": "shapes", "batch_size": 16, "augment": "ssl", "copies": 2,
                    "options": {"num_classes": 3, "image_size": 16, "train_size": 48, "test_size": 24}},
           "student": {"name": "resnet8"}, "distill": {"terms": [{"method": "simclr"}]},
           "train": {"epochs": 2, "progress": False, "precision": "fp32", "log_every": 1,
                     "optimizer": {"lr": 0.05}}}
    return {**raw, **extra}


def test_self_supervised_training_needs_no_labels(tmp_path):
    """Shuffling every training label changes nothing: the final weights are bit-identical."""
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    states = []
    for shuffle in (False, True):
        run = build_run(load_config(data=_ssl_raw(tmp_path, f"ssl_{shuffle}")))
        base = run.train_set.dataset.dataset                       # Indexed → Augmented → InMemory
        if shuffle:
            labels = base.data["label"]
            base.data["label"] = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
            base.labels = base.data["label"]
            assert not torch.equal(base.data["label"], labels)
        Trainer(run).fit()
        states.append({k: v.clone() for k, v in run.distiller.student.state_dict().items()})
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_self_supervised_run_logs_a_falling_loss_and_a_knn_monitor(tmp_path):
    import json

    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    run = build_run(load_config(data=_ssl_raw(tmp_path, train={"epochs": 4, "progress": False, "precision": "fp32",
                                                                "log_every": 1, "optimizer": {"lr": 0.05}})))
    summary = Trainer(run).fit()
    assert summary["primary_metric"] == "knn_acc" and 0 <= summary["last"]["knn_acc"] <= 1
    records = [json.loads(line) for line in open(tmp_path / "ssl" / "metrics.jsonl")]
    losses = [r["simclr"] for r in records if "simclr" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])


def test_label_free_task_gives_methods_no_labels(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import load_config

    raw = _ssl_raw(tmp_path, teachers={"default": {"model": "resnet8", "num_classes": 3, "random_init": True}},
                   distill={"terms": [{"method": "crd", "nce_k": 8}]})
    raw["data"]["copies"] = 1
    crd = build_run(load_config(data=raw)).distiller.terms[0]
    assert crd.sampler.has_labels is False                     # negatives from all other samples, not other classes
    raw["task"] = "classification"
    assert build_run(load_config(data=raw)).distiller.terms[0].sampler.has_labels is True


def test_a_self_supervised_checkpoint_is_a_teacher_like_any_other(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.checkpoint import load_checkpoint
    from crossdistill.engine.trainer import Trainer
    from crossdistill.teacher_runtime import unfolded_state_dict

    Trainer(build_run(load_config(data=_ssl_raw(tmp_path)))).fit()
    teacher_file = tmp_path / "ssl" / "student.pt"
    ckpt = load_checkpoint(teacher_file)
    assert not any("head" in k for k in ckpt["student"])      # the projection head stayed behind
    raw = _ssl_raw(tmp_path, "student", teachers={"ssl": {"checkpoint": str(teacher_file)}},
                   distill={"terms": [{"method": "simreg", "from_teacher": "ssl", "head_layers": 2}]})
    raw["data"].update(copies=1, augment="resized_crop_flip")
    run = build_run(load_config(data=raw))
    teacher = run.distiller.teachers["ssl"]
    loaded = unfolded_state_dict(teacher)  # the weights as loaded, before fast_teacher folded its BatchNorms
    for k, v in ckpt["student"].items():
        assert torch.equal(loaded[k], v)
    summary = Trainer(run).fit()
    assert summary["last"]["knn_acc"] >= 0


def test_task_protocol_refuses_a_backbone(tmp_path):
    import subprocess
    import sys

    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    Trainer(build_run(load_config(data=_ssl_raw(tmp_path, train={"epochs": 1, "progress": False})))).fit()
    r = subprocess.run([sys.executable, "-m", "crossdistill.cli", "eval", str(tmp_path / "ssl" / "student.pt")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--protocol knn" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ augmentation
def test_ssl_augmentation_is_strong_deterministic_and_stays_in_pixel_range():
    from crossdistill.data import create_dataset
    from crossdistill.data.seeded import AugmentedDataset
    from crossdistill.data.transforms import build_train_transform

    for channels in (1, 3):
        ds = create_dataset("shapes", "train", num_classes=3, image_size=16, train_size=8, in_channels=channels)
        info = ds.info
        aug = AugmentedDataset(ds, build_train_transform(info, "ssl"), seed=0, copies=2)
        s = aug[0]
        assert not torch.equal(s["input"], s["input_1"])
        assert torch.equal(aug[0]["input_1"], s["input_1"])
        mean = torch.tensor(info.mean or [0.0] * s["input"].shape[0]).view(-1, 1, 1)
        std = torch.tensor(info.std or [1.0] * s["input"].shape[0]).view(-1, 1, 1)
        for key in ("input", "input_1"):
            pixels = s[key] * std + mean
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
        # over many samples the photometric jitter changes the mean intensity of the crop
        means = [float((aug[i]["input_1"] * std + mean).mean()) for i in range(8)]
        assert np.std(means) > 0.01


def test_intensity_jitter_hand_case():
    from crossdistill.data.transforms import RandomIntensityJitter

    x = torch.tensor([[[0.2, 0.6]]])          # one grey channel, mean 0.4; mean/std 0/1: pixel space
    jitter = RandomIntensityJitter([0.0], [1.0], brightness=0.5, contrast=0.5, p=1.0)
    torch.manual_seed(0)
    out = jitter({"input": x})["input"]
    # reproduce the draws: p-test, then b, c (no saturation / grey draws for one channel... except the grey test)
    torch.manual_seed(0)
    torch.rand(())                            # the jitter coin
    b = 0.5 + 1.0 * float(torch.rand(()))
    y = (x * b).clamp(0, 1)
    m = y.mean()
    c = 0.5 + 1.0 * float(torch.rand(()))
    expected = ((y - m) * c + m).clamp(0, 1)
    assert_close(out, expected)
