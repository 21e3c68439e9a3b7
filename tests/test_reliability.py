"""Issue-15 and one-run-per-folder cases, each through the real executable (``python -m
crossdistill.cli`` in a subprocess): one ``error:`` line, a non-zero exit, nothing half-written,
nothing of a previous run lost. docs/reliability.md lists every case with its message.

The subprocess cases are independent, so a module fixture starts them a few at a time and each test
reads its own result (a subprocess costs seconds, mostly importing torch).
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from slow_save import SLOW_SAVE_ENV
import torch

from crossdistill import cli
from crossdistill.engine import checkpoint as ckpt_mod
from crossdistill.engine.checkpoint import load_checkpoint
from crossdistill.errors import FolderInUseError
from helpers import tiny_run_yaml

def base(out, **changes) -> str:
    return tiny_run_yaml(out, name="reliability", **{"data": {"options": {"test_size": 40}}, **changes})
PY = sys.executable


def run_cli(*argv, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop(SLOW_SAVE_ENV, None)
    e.update(env or {})
    return subprocess.run([PY, "-m", "crossdistill.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=e, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess, expected: str, rc: int | None = None) -> str:
    assert res.returncode != 0, f"a bad input must exit non-zero: {res.stdout[-500:]}"
    if rc is not None:
        assert res.returncode == rc, (res.returncode, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {res.stderr[-2000:]!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    return lines[0]


def write_images(root: Path, per_class: int = 6, corrupt: str | None = None) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"not a png at all")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained 3-channel teacher, a NaN student, image folders, a home folder, and every subprocess case
    of CASES run once (a few at a time)."""
    d = tmp_path_factory.mktemp("rel")
    (d / "base.yaml").write_text(base(d / "good"))
    assert cli.main(["train", str(d / "base.yaml")]) == 0
    student = torch.load(d / "good" / "student.pt", weights_only=True)
    first = next(k for k, v in student["student"].items() if v.is_floating_point())
    student["student"][first] = student["student"][first].clone().fill_(float("nan"))
    torch.save(student, d / "nan-student.pt")
    write_images(d / "corrupt-images", corrupt="train/a/2.png")  # not sample 0, 1, n/2 or n-1: read in a worker
    (d / "home").mkdir()
    (d / "cwd").mkdir()
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case[0]: pool.submit(run_cli, *[a.format(d=d, b=d / "base.yaml") for a in case[1].split()],
                                        cwd=d / "cwd")
                   for case in CASES}
        results = {name: f.result() for name, f in futures.items()}
    return d, results


T = "distill.terms.0"
# (id, argv; {d} = the fixture folder, {b} = base.yaml; expected words; exit code; a folder that must not exist)
CASES = [
    # 15.1 a NaN model is never exported or reported
    ("nan-weights-skip", "train {b} output_dir={d}/nan-skip train.optimizer.lr=1e6 train.nonfinite=skip train.epochs=2 "
     "train.max_steps_per_epoch=null", "weights became non-finite", 3, None),
    ("nan-weights-stop", "train {b} output_dir={d}/nan-stop train.optimizer.lr=1e6 train.epochs=2 "
     "train.max_steps_per_epoch=null", "became nan", 3, None),
    ("eval-nan-student", "eval {d}/nan-student.pt", "non-finite weights", 2, None),
    # 15.2 shape mismatches at build time, naming the network and what it expected
    ("student-for-another-task", "train {b} output_dir={d}/x-depth task=depth data.name=scenes "
     "data.options.image_size=16 data.options.train_size=8 data.options.test_size=4 teachers={{}} distill.terms=[]",
     "outputs (2, 1), which task 'depth' cannot use", 2, "x-depth"),
    ("dense-student-for-classification", "train {b} output_dir={d}/x-dense student.name=dense_resnet_xs",
     "it needs logits [B, 4]", 2, "x-dense"),
    ("data-channels-vs-teacher", "train {b} output_dir={d}/x-ch data.options.in_channels=1 teachers.default.model=null "
     "teachers.default.num_classes=null teachers.default.random_init=false "
     "teachers.default.checkpoint={d}/good/student.pt", "reads 3 input channel(s) but is given 1", 2, "x-ch"),
    ("teacher-view-channels", "train {b} output_dir={d}/x-view teachers.default.model=null "
     "teachers.default.num_classes=null teachers.default.random_init=false teachers.default.checkpoint={d}/good/student.pt "
     "teachers.default.input=luminance", "teacher 'default' (CifarResNet) reads 3 input channel(s) but is given 1", 2,
     "x-view"),
    ("corrupt-image-in-a-worker", "train {b} output_dir={d}/x-img data.name=imagefolder data.root={d}/corrupt-images "
     "data.options={{}} data.options.image_size=8 teachers={{}} distill.terms=[] data.num_workers=2 data.batch_size=4",
     "cannot decode", 2, None),
    # 15.4 values
    ("kd-T-zero", f"train {{b}} output_dir={{d}}/x-t0 {T}.T=0", "'T'", 2, "x-t0"),
    ("kd-T-negative", f"train {{b}} output_dir={{d}}/x-t4 {T}.T=-4", "'T'", 2, "x-t4"),
    ("negative-weight", f"train {{b}} output_dir={{d}}/x-w {T}.weight=-1", "'weight'", 2, "x-w"),
    ("negative-task-weight", "train {b} output_dir={d}/x-tw distill.task_weight=-1", "distill.task_weight", 2, "x-tw"),
    ("zero-epochs", "train {b} output_dir={d}/x-e0 train.epochs=0", "train.epochs", 2, "x-e0"),
    ("empty-output-dir", "train {b} output_dir=''", "empty output_dir", 2, None),
    ("teacher-checkpoint-and-model", "train {b} output_dir={d}/x-cm teachers.default.random_init=false "
     "teachers.default.num_classes=null teachers.default.checkpoint={d}/good/student.pt",
     "gives both checkpoint and model", 2, "x-cm"),
    ("teacher-num-classes-vs-checkpoint", "train {b} output_dir={d}/x-nc teachers.default.model=null "
     "teachers.default.num_classes=7 teachers.default.checkpoint={d}/good/student.pt", "has 4 outputs", 2, "x-nc"),
    # missing teacher: the command that makes it
    ("missing-teacher-names-its-recipe", "train quickstart/kd", "crossdistill train quickstart/teacher", 2, None),
    # eval lists valid choices once
    ("eval-unknown-data-option", "eval {d}/good/student.pt data.options.bogus=1", "valid options:", 2, None),
]
CASE_IDS = [c[0] for c in CASES]


#: checked by the methods' own option ranges (issue 14.3: ``T: Positive``, ``weight: NonNegative``)
NEEDS_OPTION_RANGES = {"kd-T-zero", "kd-T-negative", "negative-weight"}


def _option_ranges_checked() -> bool:
    from crossdistill.config import validate_options
    from crossdistill.errors import ConfigError
    from crossdistill.methods import METHODS

    try:
        validate_options(METHODS.get("kd"), {"T": 0}, "kd")
    except ConfigError:
        return True
    return False


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cli_case(world, case):
    d, results = world
    name, _, expected, rc, absent = case
    if name in NEEDS_OPTION_RANGES and not _option_ranges_checked():
        pytest.skip("method option ranges arrive with the methods' branch (Method options checked by pydantic)")
    line = one_error_line(results[name], expected, rc)
    assert "Traceback" not in results[name].stderr
    if absent:
        assert not (d / absent).exists(), "nothing is written for a config that fails its checks"
    if name == "eval-unknown-data-option":
        assert line.count("valid") == 1, line
    if name.startswith("nan-weights"):
        out = d / name.replace("nan-weights", "nan")
        assert not (out / "student.pt").exists() and not (out / "summary.json").exists()
        for kept in out.glob("checkpoint*.pt"):  # whatever was kept is finite
            state = load_checkpoint(kept)["distiller"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_case_ids_are_unique():
    assert len(set(CASE_IDS)) == len(CASE_IDS)


# -- 15.3: what training reports is what eval measures ------------------------------------------------
def test_eval_reproduces_the_summary_metric_exactly(tmp_path):
    """precision auto trains in bf16 + channels_last on a CPU with AMX; evaluation is fp32 in both places."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(base(tmp_path / "run", data={"options": {"num_classes": 10, "test_size": 40}},
                        teachers={"default": {"num_classes": 10}},
                        train={"precision": "auto", "log_every": 1, "max_steps_per_epoch": 3}))
    assert run_cli("train", cfg).returncode == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evaluation"]["precision"] == "fp32" and summary["evaluation"]["samples"] == 40
    res = run_cli("eval", tmp_path / "run" / "student.pt", "--json")
    assert res.returncode == 0, res.stderr
    last = {k: v for k, v in summary["last"].items() if k not in ("step", "epoch")}
    assert json.loads(res.stdout) == last and set(last) == {"acc", "acc5"}
    # the run folder holds a readable copy of its config, and the log's epoch field is where the step ends
    from crossdistill.config import load_config

    assert load_config(tmp_path / "run" / "config.yaml") == load_config(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [round(r["epoch"], 6) for r in records if "phase" in r] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]


# -- 15.5: ~ in every path ------------------------------------------------------------------------
def test_tilde_is_expanded_in_every_path(world):
    d, _ = world
    home = d / "home"
    shutil.copy(d / "good" / "student.pt", home / "teacher.pt")
    env = {"HOME": str(home)}
    res = run_cli("train", d / "base.yaml", "output_dir=~/run", "teachers.default.model=null",
                  "teachers.default.num_classes=null", "teachers.default.random_init=false",
                  "teachers.default.checkpoint=~/teacher.pt", "student.checkpoint=~/teacher.pt", cwd=d / "cwd", env=env)
    assert res.returncode == 0, res.stderr
    assert (home / "run" / "student.pt").exists() and not (d / "cwd" / "~").exists()
    ev = run_cli("eval", "~/run/student.pt", cwd=d / "cwd", env=env)
    assert ev.returncode == 0 and ev.stdout.startswith("acc="), ev.stderr


# -- 15.2: a full disk ----------------------------------------------------------------------------
class _FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(world, tmp_path, monkeypatch, capsys):
    """torch.save turns a failed write into `RuntimeError: ... unexpected pos ...` while closing its archive;
    the OSError behind it is what the user is told."""
    d, _ = world
    real_fdopen = os.fdopen
    saves = []

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        if "w" in mode:
            saves.append(1)
            if len(saves) == 3:
                return _FullDisk(f, room=1000)
        return f

    monkeypatch.setattr(ckpt_mod.os, "fdopen", fdopen)
    out = tmp_path / "run"
    argv = ["train", str(d / "base.yaml"), f"output_dir={out}", "train.max_steps_per_epoch=4",
            "train.checkpoint_every_steps=1"]
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1, err
    assert "No space left on device" in err[0] and "previous checkpoint.pt is intact" in err[0]
    monkeypatch.undo()
    # config.yaml was the first write, checkpoints of steps 1 and 2 the next: checkpoint.pt is step 1's
    assert load_checkpoint(out / "checkpoint.pt")["position"]["global_step"] == 1
    assert not list(out.glob(".*.tmp"))
    assert cli.main(argv + ["--resume"]) == 0


def test_full_disk_for_real(world, tmp_path):
    """A 700 KB tmpfs: the first checkpoint fits, the second does not (needs root and mount)."""
    d, _ = world
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        res = run_cli("train", d / "base.yaml", f"output_dir={disk}/run", "train.max_steps_per_epoch=null",
                      "train.epochs=4")
        one_error_line(res, "No space left on device")
        assert "previous checkpoint.pt is intact" in res.stderr
        assert load_checkpoint(disk / "run" / "checkpoint.pt")["kind"] == "train"
        assert not list((disk / "run").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- 15.7 -------------------------------------------------------------------------------------------
def _start(argv, **env):
    e = dict(os.environ)
    e.pop(SLOW_SAVE_ENV, None)
    e.update(env)
    # Ctrl-C as a terminal sends it: a shell that started this suite in the background leaves SIGINT
    # ignored, the child would inherit that, and Python then never raises KeyboardInterrupt
    return subprocess.Popen([PY, "-m", "crossdistill.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc, condition, timeout=240):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) too early: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _logged_steps(out: Path) -> list:
    try:
        return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"phase"' in line]
    except (OSError, ValueError, KeyError):
        return []


LONG = ["train.max_steps_per_epoch=null", "train.epochs=50", "train.log_every=1"]


@pytest.mark.parametrize("saved", [False, True], ids=["before-any-checkpoint", "after-a-checkpoint"])
def test_ctrl_c_says_what_was_kept(world, tmp_path, saved):
    d, _ = world
    out = tmp_path / "run"
    every = "train.checkpoint_every_steps=2" if saved else "train.checkpoint_every=1000"
    proc = _start(["train", d / "base.yaml", f"output_dir={out}", *LONG, every])
    try:
        _wait_for(proc, (lambda: (out / "checkpoint.pt").exists()) if saved else (lambda: len(_logged_steps(out)) >= 2))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped at step"), err
    if saved:
        assert "checkpoint.pt' is intact: resume with --resume" in lines[0]
    else:
        assert "no checkpoint had been written yet" in lines[0] and "intact" not in lines[0]


def test_two_runs_on_one_folder_the_second_refuses_and_touches_nothing(world, tmp_path):
    d, _ = world
    out = tmp_path / "run"
    first = _start(["train", d / "base.yaml", f"output_dir={out}", *LONG, "train.checkpoint_every_steps=2"])
    try:
        _wait_for(first, lambda: (out / "checkpoint.pt").exists())
        second = run_cli("train", d / "base.yaml", f"output_dir={out}", "--resume")
        line = one_error_line(second, f"output_dir '{out}' is in use by another crossdistill run")
        assert f"pid {first.pid}" in line and "choose another output_dir" in line and not second.stdout
        # the same from within a process (the lock is per open file, not per process)
        with pytest.raises(FolderInUseError):
            from crossdistill.build import build_run
            from crossdistill.config import load_config
            from crossdistill.engine.trainer import Trainer

            Trainer(build_run(load_config(d / "base.yaml", [f"output_dir={out}"])))
        assert first.poll() is None, "the first run is still going"
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130 and "is intact" in err, err
    steps = _logged_steps(out)
    assert steps == list(range(1, len(steps) + 1)), "one run's records, once each, in order"
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["config"]["output_dir"] == str(out) and ckpt["position"]["global_step"] <= steps[-1]
    assert not (out / "summary.json").exists()


def test_resume_after_sigkill_is_not_blocked_by_the_lock(world, tmp_path):
    d, _ = world
    out = tmp_path / "run"
    argv = ["train", d / "base.yaml", f"output_dir={out}", "train.max_steps_per_epoch=null", "train.epochs=3",
            "train.checkpoint_every_steps=2"]
    proc = _start(argv)
    try:
        _wait_for(proc, lambda: (out / "checkpoint.pt").exists())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out / ".lock").exists()  # the lock file stays; the lock died with the process
    assert cli.main([str(a) for a in argv] + ["--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["last"]["step"] == 12


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(world, tmp_path):
    d, _ = world
    out = tmp_path / "run"
    argv = ["train", d / "base.yaml", f"output_dir={out}", "train.max_steps_per_epoch=4", "train.epochs=2",
            "train.checkpoint_every_steps=1", "train.threads=1"]
    assert cli.main([str(a) for a in argv]) == 0
    (out / "summary.json").unlink()
    (out / "student.pt").unlink()
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    res = run_cli(*argv, "--resume")
    assert res.returncode == 0, res.stderr
    note = res.stderr.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: ") and "checkpoint.previous.pt" in note[0], note
    assert (out / "checkpoint.damaged.pt").exists() and (out / "summary.json").exists()

    # no previous checkpoint beside it: say so, and that no earlier one is kept
    (out / "checkpoint.previous.pt").unlink()
    (out / "summary.json").unlink()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in out.iterdir())
    line = one_error_line(run_cli(*argv, "--resume"), "corrupt or truncated")
    assert "no earlier checkpoint is kept" in line and "use an earlier checkpoint" not in line
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_refuses_changed_training_data(tmp_path):
    images = tmp_path / "images"
    write_images(images)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(base(tmp_path / "run"))
    argv = ["train", str(cfg), f"data.root={images}", "data.name=imagefolder", "data.options={image_size: 8}",
            "teachers={}", "distill.terms=[]", "train.epochs=2", "train.max_steps_per_epoch=null"]
    assert cli.main(argv) == 0
    (tmp_path / "run" / "summary.json").unlink()
    shutil.copy(images / "train" / "a" / "0.png", images / "train" / "a" / "9.png")
    line = one_error_line(run_cli(*argv, "--resume"), "the train data changed")
    assert "12 samples then, 13 now" in line
    (images / "train" / "a" / "9.png").unlink()
    shutil.copy(images / "train" / "b" / "0.png", images / "train" / "a" / "0.png")  # same size, other content
    one_error_line(run_cli(*argv, "--resume"), "same size, other samples")


# -- 15.6: the Python API's own errors ---------------------------------------------------------------
def _api():
    from crossdistill import Distiller, build_method, create_task
    from helpers import TinyNet, toy_batch

    return Distiller, build_method, create_task, TinyNet, toy_batch


def test_optimiser_before_the_dry_run_is_refused():
    from crossdistill.errors import CrossDistillError, NotBuiltError

    Distiller, build_method, create_task, TinyNet, toy_batch = _api()
    d = Distiller(TinyNet(), TinyNet(width=16), [build_method("fitnet", student="layer2", teacher="layer2")])
    with pytest.raises(NotBuiltError, match="example_input") as e:
        torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    assert isinstance(e.value, CrossDistillError)
    d.build(toy_batch()["input"])
    assert any(p is q for p in d.trainable_parameters() for q in d.terms[0].parameters())  # projector included


@pytest.mark.parametrize("kwargs,error,words", [
    (dict(terms="kd"), "ConfigError", "terms must be a list"),
    (dict(terms=["kd"]), "ConfigError", "terms[0] is the name 'kd'"),
    (dict(terms=[42]), "ConfigError", "terms[0] must be a Method"),
    (dict(student="resnet8"), "ConfigError", "student must be a torch.nn.Module"),
    (dict(teachers={"t": "resnet8"}), "ConfigError", "teachers['t'] must be a torch.nn.Module"),
    (dict(task_weight="high"), "ConfigError", "task_weight must be a number"),
    (dict(task_weight=-1.0), "ConfigError", "task_weight must be a finite number >= 0"),
    (dict(example_input=torch.zeros(2, 1, 16, 16)), "ShapeError", "reads 3 input channel(s) but is given 1"),
], ids=["terms-a-string", "term-a-string", "term-not-a-method", "student-a-string", "teacher-a-string",
        "task-weight-a-string", "task-weight-negative", "wrong-channels"])
def test_python_api_arguments(kwargs, error, words):
    from crossdistill import errors

    Distiller, build_method, create_task, TinyNet, toy_batch = _api()
    args = dict(student=TinyNet(), teachers=TinyNet(width=16), terms=[build_method("kd")],
                task=create_task("classification", 5), example_input=toy_batch()["input"])
    args.update(kwargs)
    with pytest.raises(getattr(errors, error)) as e:
        Distiller(**args)
    assert words in str(e.value)


def test_python_api_batch_errors():
    from crossdistill.errors import DataError, ShapeError

    Distiller, build_method, create_task, TinyNet, toy_batch = _api()
    d = Distiller(TinyNet(), TinyNet(width=16), [build_method("kd")], task=create_task("classification", 5),
                  example_input=toy_batch()["input"])
    batch = toy_batch()
    batch["label"] = batch["label"].clone()
    batch["label"][3] = 7
    with pytest.raises(DataError, match=r"batch field 'label' holds class 7, outside 0..4"):
        d(batch)
    with pytest.raises(ShapeError, match=r"the student \(TinyNet\) reads 3 input channel\(s\) but is given 2"):
        d({"input": torch.zeros(4, 2, 16, 16), "label": torch.zeros(4, dtype=torch.long)})
