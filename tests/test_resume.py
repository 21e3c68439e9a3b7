"""Crash safety: a real ``crossdistill train`` killed with SIGKILL at several points resumes to
bit-identical weights, metrics and log; a NaN/Inf stops cleanly (or is skipped on request).

The tiny run: shapes (256 train / 64 test, 16×16), resnet8 student, a random resnet8 teacher,
KD + FitNet (so projector state is checkpointed), 3 epochs × 8 steps, a checkpoint every 3 steps.
Kill points (each process is resumed from what the previous one left):

1. during the *first* checkpoint save (temp file written, not yet renamed): no checkpoint exists
   yet, so the resume starts from scratch;
2. mid-epoch 2, some steps after a mid-epoch checkpoint (between saves);
3. during a later save (epoch-2 end): the previous checkpoint must load fine, the temp file is stale;
4. during the export of ``student.pt`` after the last epoch (while finishing).

``CROSSDISTILL_TEST_SLOW_SAVE`` (see ``tests/slow_save.py``, which runs the CLI here) makes every save
pause between the fsync of its temporary file and the rename, so kills 1, 3 and 4 land inside a save
for certain.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crossdistill import cli
from crossdistill.engine.checkpoint import load_checkpoint
from crossdistill.methods import METHODS, Method, register_method
from slow_save import SLOW_SAVE_ENV
from helpers import tiny_run_yaml

def tiny(out) -> str:
    return tiny_run_yaml(
        out, name="resume-test", seed=5, data={"options": {"train_size": 256, "test_size": 64}, "batch_size": 32},
        teachers={"default": {"seed": 1}},
        distill={"task_weight": 0.5, "terms": [
            {"method": "kd", "weight": 0.9, "T": 4},
            {"method": "fitnet", "weight": 10, "student": "@stage:1", "teacher": "@stage:1", "projector": "standard"}]},
        train={"epochs": 3, "max_steps_per_epoch": None, "threads": 1, "schedule": {"name": "cosine"},
               "optimizer": {"name": "sgd", "lr": 0.05}, "log_every": 1, "checkpoint_every_steps": 3})
PAUSE = "0.6"


def write_config(folder: Path, out: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(tiny(out))
    return path


def train_cmd(cfg: Path, *extra: str) -> list:
    return [sys.executable, str(Path(__file__).parent / "slow_save.py"), "train", str(cfg), *extra]


def env(slow_save: bool = False) -> dict:
    e = dict(os.environ)
    e.pop(SLOW_SAVE_ENV, None)
    if slow_save:
        e[SLOW_SAVE_ENV] = PAUSE
    return e


def log_steps(out: Path) -> list:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written right now
    return steps


def temps(out: Path, name: str = "") -> list:
    return sorted(out.glob(f".{name}*.tmp"))


def run_and_kill(cmd, out: Path, when, slow_save: bool, timeout: float = 240.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``when(out)`` holds; fail if it ends first."""
    proc = subprocess.Popen(cmd, env=env(slow_save), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if when(out):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                assert proc.returncode == -signal.SIGKILL
                return
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point: {err.decode()[-2000:]}")
            time.sleep(0.003)
        pytest.fail("kill point not reached in time")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def records(out: Path) -> list:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_anywhere_resumes_bit_identical(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref_cfg = write_config(tmp_path, ref_out)
    (tmp_path / "k").mkdir()
    cfg = write_config(tmp_path / "k", out)
    assert cli.main(["train", str(ref_cfg)]) == 0  # the uninterrupted reference (in-process: faster)

    # 1. inside the first checkpoint save: the temp file exists, checkpoint.pt not yet
    run_and_kill(train_cmd(cfg), out, lambda o: bool(temps(o, "checkpoint.pt")), slow_save=True)
    assert not (out / "checkpoint.pt").exists() and temps(out, "checkpoint.pt")

    # 2. mid-epoch 2, between two saves (the last checkpoint is from step 9 or so)
    run_and_kill(train_cmd(cfg, "--resume"), out, lambda o: max(log_steps(o), default=0) >= 10, slow_save=False)
    assert not temps(out), "the resumed run removes the stale temp file of kill 1"
    mid = load_checkpoint(out / "checkpoint.pt")["position"]
    assert 0 < mid["global_step"] < 24 and mid["step"] > 0  # a mid-epoch checkpoint

    # 3. inside the save at the end of epoch 2 (global step 16)
    def in_epoch2_end_save(o):
        return max(log_steps(o), default=0) >= 16 and bool(temps(o, "checkpoint.pt"))

    run_and_kill(train_cmd(cfg, "--resume"), out, in_epoch2_end_save, slow_save=True)
    assert temps(out, "checkpoint.pt"), "killed inside a save: its temp file is left behind"
    last_good = load_checkpoint(out / "checkpoint.pt")  # the previous checkpoint is whole
    assert last_good["kind"] == "train" and 9 <= last_good["position"]["global_step"] < 24

    # 4. inside the export of student.pt, after the final checkpoint
    run_and_kill(train_cmd(cfg, "--resume"), out, lambda o: bool(temps(o, "student.pt")), slow_save=True)
    assert load_checkpoint(out / "checkpoint.pt")["position"]["global_step"] == 24
    assert not (out / "summary.json").exists()

    assert cli.main(["train", str(cfg), "--resume"]) == 0
    assert not temps(out), "no temp file survives a finished run"

    ref = torch.load(ref_out / "student.pt", weights_only=True)["student"]
    got = torch.load(out / "student.pt", weights_only=True)["student"]
    assert ref.keys() == got.keys()
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"weights differ after resume: {differ[:5]}"

    s_ref = json.loads((ref_out / "summary.json").read_text())
    s_got = json.loads((out / "summary.json").read_text())
    s_ref.pop("student"), s_got.pop("student")
    assert s_ref == s_got
    # the JSONL log reads as one run: exactly the records of the uninterrupted run, once each
    assert records(out) == records(ref_out)

    # the full training checkpoint matches too (projector state, optimiser momentum, RNG)
    c_ref = load_checkpoint(ref_out / "checkpoint.pt")
    c_got = load_checkpoint(out / "checkpoint.pt")
    assert any(k.startswith("terms.1.projector") for k in c_got["distiller"])
    for k, v in c_ref["distiller"].items():
        assert torch.equal(v, c_got["distiller"][k]), k
    for a, b in zip(c_ref["optimizer"]["state"].values(), c_got["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


# -- non-finite losses ---------------------------------------------------------------------------
if "nan_on_index" not in METHODS:
    @register_method("nan_on_index")
    class NanOnIndex(Method):
        """Test-only: a zero loss, NaN for any batch that holds sample ``index``."""

        needs_teacher = False

        def __init__(self, index: int = 0, **sides):
            super().__init__(**sides)
            self.index = index

        def forward(self, s, t, batch):
            zero = s[0].sum() * 0
            return zero + float("nan") if bool((batch["index"] == self.index).any()) else zero


NAN_CFG = """
seed: 0
output_dir: {out}
data:
  name: shapes
  options: {{num_classes: 4, image_size: 16, train_size: 64, test_size: 32}}
  batch_size: 16
student: {{name: resnet8}}
distill:
  terms:
    - {{method: nan_on_index, index: {index}}}
train: {{epochs: 2, device: cpu, precision: fp32, checkpoint_every_steps: 1, log_every: 1, progress: false}}
"""


def _nan_step(index: int, seed: int = 0, n: int = 64, bs: int = 16) -> int:
    """The 1-based global step whose batch holds sample ``index`` in epoch 0."""
    from crossdistill.engine.sampler import EpochSampler

    order = list(EpochSampler(n, seed))
    return order.index(index) // bs + 1


def test_nonfinite_loss_stops_with_one_message_and_keeps_the_checkpoint(tmp_path, capsys):
    index = next(i for i in range(64) if _nan_step(i) == 3)  # NaN at step 3, after two good checkpoints
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(NAN_CFG.format(out=tmp_path / "run", index=index))
    rc = cli.main(["train", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert err[0].startswith("error: loss part 'nan_on_index' became nan at step 3")
    assert "train.nonfinite=skip" in err[0]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["position"]["global_step"] == 2
    assert not (tmp_path / "run" / "summary.json").exists() and not temps(tmp_path / "run")

    # the advertised fix: resume the same run, skipping non-finite steps
    assert cli.main(["train", str(cfg), "train.nonfinite=skip", "--resume"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 2  # one batch per epoch holds the sample
    skipped = [r for r in records(tmp_path / "run") if r.get("skipped")]
    assert len(skipped) == 2 and all(r["loss"] is None for r in skipped)  # NaN is logged as null


def test_nonfinite_skip_from_the_start(tmp_path):
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(NAN_CFG.format(out=tmp_path / "run", index=7))
    assert cli.main(["train", str(cfg), "train.nonfinite=skip", "train.epochs=1"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["last"]["acc"] >= 0
    student = torch.load(tmp_path / "run" / "student.pt", weights_only=True)["student"]
    assert all(torch.isfinite(v).all() for v in student.values() if v.is_floating_point())
