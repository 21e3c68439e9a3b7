"""The speed defaults (issue 23) keep what a run promises: the measured defaults table picks what it
says, explicit settings win, a run with the fast defaults (folded teacher, channels_last in fp32)
resumes bit-identically, and trains to the same metrics as with them off, within noise."""
from __future__ import annotations

import json

import pytest
import torch

from crossdistill import cli
from crossdistill.engine.defaults import CHANNELS_LAST, device_kind
from crossdistill.engine.device import Precision, pick_channels_last
from test_resume import log_steps, records, run_and_kill, train_cmd, write_config

CPU = torch.device("cpu")
FAST = ["train.channels_last=true", "distill.fast_teacher=true"]  # this CPU's defaults, on any CPU
SLOW = ["train.channels_last=false", "distill.fast_teacher=false"]


def test_the_table_decides_training_layouts_and_explicit_settings_win(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert device_kind(CPU) == "cpu:avx2"
    assert Precision.pick("cpu", "auto", training=True) == Precision(CPU, None, True)  # fp32 + channels_last
    assert Precision.pick("cpu", "auto") == Precision(CPU, None, False)  # evaluation: the canonical layout
    assert Precision.pick("cpu", "auto", False, training=True).channels_last is False  # the user's word wins
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert Precision.pick("cpu", "auto", training=True) == Precision(CPU, torch.bfloat16, True)
    assert pick_channels_last(None, CPU, torch.bfloat16) is True  # evaluation in bf16, as before
    assert pick_channels_last(True, torch.device("cuda"), None, training=True) is True
    assert pick_channels_last(None, torch.device("cuda"), None, training=True) is False
    assert all(row.evidence for row in CHANNELS_LAST.values())  # every default says where it comes from


def test_a_run_with_the_fast_defaults_resumes_bit_identically(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref_cfg = write_config(tmp_path, ref_out)
    (tmp_path / "k").mkdir()
    cfg = write_config(tmp_path / "k", out)
    assert cli.main(["train", str(ref_cfg), *FAST]) == 0
    run_and_kill(train_cmd(cfg, *FAST), out, lambda o: max(log_steps(o), default=0) >= 10, slow_save=False)
    assert cli.main(["train", str(cfg), *FAST, "--resume"]) == 0
    ref = torch.load(ref_out / "student.pt", weights_only=True)["student"]
    got = torch.load(out / "student.pt", weights_only=True)["student"]
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert records(out) == records(ref_out)


def test_the_fast_defaults_train_to_the_same_metrics(tmp_path):
    """Same seed, fast defaults on and off: the float rounding differs (folded BatchNorms, another
    convolution kernel), so the trajectories part, but the final loss and accuracy stay close."""
    summaries = {}
    for name, opts in (("fast", FAST), ("slow", SLOW)):
        (tmp_path / name).mkdir()
        out = tmp_path / name / "run"
        assert cli.main(["train", str(write_config(tmp_path / name, out)), *opts]) == 0
        summaries[name] = (json.loads((out / "summary.json").read_text()), records(out))
    (fast, fast_log), (slow, slow_log) = summaries["fast"], summaries["slow"]
    # the first step sees the same weights and batch: its loss agrees to float rounding
    first = [r for r in fast_log if "loss" in r][0]["loss"], [r for r in slow_log if "loss" in r][0]["loss"]
    assert first[0] == pytest.approx(first[1], rel=1e-4)
    acc_fast, acc_slow = _acc(fast), _acc(slow)
    assert abs(acc_fast - acc_slow) <= 0.15, (acc_fast, acc_slow)
    last = [r["loss"] for r in fast_log if "loss" in r][-1], [r["loss"] for r in slow_log if "loss" in r][-1]
    assert last[0] == pytest.approx(last[1], rel=0.25)


def _acc(summary) -> float:
    return float(summary["last"]["acc"])


def test_channels_last_stays_off_where_the_cpu_backward_would_corrupt_memory():
    """torch 2.13's CPU channels_last backward of a strided conv with 2–7 input channels corrupts the
    heap (measured: a CIFAR ResNet of width 4 aborts); the measured default must not switch it on there."""
    from crossdistill.engine.device import channels_last_trips_cpu_bug
    from crossdistill.models import create_model

    assert channels_last_trips_cpu_bug(create_model("resnet_width", num_classes=10, depth=8, width=4)) == "layer2.0.conv1"
    assert channels_last_trips_cpu_bug(create_model("resnet_width", num_classes=10, depth=8, width=8)) is None
    assert channels_last_trips_cpu_bug(create_model("resnet8x4", num_classes=10)) is None
