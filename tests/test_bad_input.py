"""Every bad input ends in exactly one ``error: ...`` line on stderr, a non-zero exit, no traceback,
and nothing half-written. Each case runs through the real CLI entry ``crossdistill.cli.main``
(in-process, fast); a few also run as a subprocess, where stray warnings would show on stderr too.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossdistill import cli
from crossdistill.engine import checkpoint as ckpt_mod
from crossdistill.engine.checkpoint import load_checkpoint
from helpers import tiny_run_yaml

def base(out) -> str:
    return tiny_run_yaml(out, name="bad-input", distill={"terms": [
        {"method": "kd", "T": 4}, {"method": "fitnet", "student": "@stage:1", "teacher": "@stage:1"}]})


class Custom:
    """A class the weights-only loader does not know: a checkpoint holding one must be refused."""


class Evil:
    """Unpickling this would create a folder: proof that no code runs when it is refused."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A finished tiny run plus every kind of bad file, written once for the module."""
    d = tmp_path_factory.mktemp("bad")
    (d / "base.yaml").write_text(base(d / "good"))
    assert cli.main(["train", str(d / "base.yaml")]) == 0
    good = (d / "good" / "checkpoint.pt").read_bytes()
    (d / "malformed.yaml").write_text("name: x\ntrain: {epochs: [1, 2}\n")
    (d / "list.yaml").write_text("- name: x\n- seed: 1\n")
    (d / "scalar.yaml").write_text("just a sentence\n")
    (d / "tag.yaml").write_text("name: x\nstudent: !!python/object/apply:os.system ['echo pwned']\n")
    (d / "loop.yaml").write_text("base: loop.yaml\nname: x\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01binary")
    (d / "intkey.yaml").write_text("1: 2\n")
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 64):
        flipped[i] ^= 0xFF
    (d / "bitflip.pt").write_bytes(bytes(flipped))
    (d / "empty.pt").write_bytes(b"")
    torch.save({"format": "crossdistill-checkpoint", "version": 1, "kind": "student", "obj": Custom()}, d / "custom.pt")
    torch.save({"student": Evil(str(d / "PWNED"))}, d / "evil.pt")
    torch.save({"weight": torch.ones(3)}, d / "plain.pt")
    torch.save({"format": "crossdistill-checkpoint", "version": 99, "kind": "student"}, d / "future.pt")
    (d / "notes.txt").write_text("hello, I am not a checkpoint\n")
    cifar = d / "cifar" / "cifar-100-python"
    cifar.mkdir(parents=True)
    (cifar / "train").write_bytes(b"not a pickle at all")
    (cifar / "test").write_bytes(b"not a pickle at all")
    (d / "a_file").write_text("a regular file, not a folder")
    return d


# (id, argv; {d} = the fixture folder, {b} = base.yaml, expected words in the message)
CASES = [
    # config files
    ("missing-config", "train {d}/nope.yaml", "neither a file nor a built-in recipe"),
    ("config-is-a-folder", "train {d}", "neither a file nor a built-in recipe"),
    ("malformed-yaml", "train {d}/malformed.yaml", "not valid YAML at line 2"),
    ("yaml-is-a-list", "train {d}/list.yaml", "must be a mapping"),
    ("yaml-is-a-scalar", "train {d}/scalar.yaml", "must be a mapping"),
    ("yaml-python-tag", "train {d}/tag.yaml", "YAML tag"),
    ("yaml-base-loop", "train {d}/loop.yaml", "includes itself"),
    ("yaml-binary", "train {d}/binary.yaml", "not a text file"),
    ("yaml-non-string-key", "train {d}/intkey.yaml", "is not a name"),
    # keys and values
    ("unknown-top-key", "train {b} epochz=3", "unknown config key 'epochz'"),
    ("unknown-nested-key", "train {b} train.optimizer.lrr=0.1", "did you mean: lr"),
    ("unknown-term-option", "train {b} distill.terms.0.temperature=4", "unknown option 'temperature'"),
    ("wrong-type-int", "train {b} train.epochs=many", "train.epochs"),
    ("wrong-type-term-option", "train {b} distill.terms.0.T=hot", "bad value for 'T'"),
    ("wrong-type-section", "train {b} teachers=[1,2]", "valid dictionary"),
    ("negative-epochs", "train {b} train.epochs=-1", "greater than 0"),
    ("zero-lr", "train {b} train.optimizer.lr=0", "train.optimizer.lr"),
    ("negative-lr", "train {b} train.optimizer.lr=-0.1", "greater than 0"),
    ("infinite-lr", "train {b} train.optimizer.lr=.inf", "finite number"),
    ("zero-batch-size", "train {b} data.batch_size=0", "data.batch_size"),
    ("bad-enum", "train {b} train.precision=fp8", "train.precision"),
    ("missing-required", "train {b} distill.terms.0={{T:4}}", "distill.terms.0.method' is required"),
    # overrides
    ("override-no-equals", "train {b} train.epochs", "must look like key=value"),
    ("override-empty-key-part", "train {b} train..epochs=1", "malformed"),
    ("override-index-out-of-range", "train {b} distill.terms.5.weight=1", "valid indices: 0..1"),
    ("override-negative-index", "train {b} distill.terms.-1.weight=1", "not an index"),
    ("override-into-a-value", "train {b} seed.x=1", "is a value, not a section"),
    ("override-yaml-tag", "train {b} name=!!python/object/apply:os.system", "YAML tag"),
    # names
    ("unknown-method", "train {b} distill.terms.0.method=kdd", "unknown method 'kdd'"),
    ("unknown-student-model", "train {b} student.name=resnet9000", "unknown model 'resnet9000'"),
    ("unknown-teacher-model", "train {b} teachers.default.model=resnet9000", "unknown model 'resnet9000'"),
    ("unknown-model-option", "train {b} student.options.widht=2", "widht"),
    ("unknown-teacher-option", "train {b} teachers.default.options.depht=2", "depht"),
    ("unknown-dataset", "train {b} data.name=imagenet22k", "unknown dataset 'imagenet22k'"),
    ("unknown-dataset-option", "train {b} data.options.bogus=1", "no option 'bogus'"),
    ("bad-dataset-option", "train {b} data.options.num_classes=0", "num_classes=0"),
    ("unknown-task", "train {b} task=detection", "unknown task 'detection'"),
    ("task-without-its-field", "train {b} task=segmentation", "needs the dataset field 'mask'"),
    ("unknown-student-layer", "train {b} distill.terms.1.student=layer9", "student has no layer 'layer9'"),
    ("unknown-teacher-layer", "train {b} distill.terms.1.teacher=layer9", "teacher 'default' has no layer 'layer9'"),
    ("bad-stage-alias", "train {b} distill.terms.1.student=@stage:99", "cannot resolve '@stage:99'"),
    ("unknown-alias", "train {b} distill.terms.1.teacher=@foo", "unknown side alias '@foo'"),
    ("vector-vs-map", "train {b} distill.terms.1.student=@pooled", "no projector joins"),
    ("map-vs-vector", "train {b} distill.terms.1.teacher=@pooled", "no projector joins"),
    ("unknown-teacher-name", "train {b} distill.terms.0.from_teacher=other", "reads teacher 'other'"),
    ("teacher-without-weights", "train {b} teachers.default.random_init=false", "has no weights"),
    ("teacher-without-num-classes", "train {b} teachers.default.num_classes=null", "num_classes is required"),
    ("import-path-without-flag", "train {b} teachers.default.model=null teachers.default.import_path=os:system",
     "--allow-imports"),
    ("cuda-without-gpu", "train {b} train.device=cuda", "no CUDA GPU"),
    # checkpoints and weights
    ("teacher-wrong-model", ("train {b} teachers.default.model=resnet20 teachers.default.random_init=false "
                             "teachers.default.weights={d}/good/student.pt"), "do not fit the teacher 'default'"),
    ("student-wrong-model", "train {b} student.name=resnet14 student.checkpoint={d}/good/student.pt",
     "do not fit the student"),
    ("teacher-corrupt", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/bitflip.pt",
     "fails its CRC check"),
    ("teacher-truncated", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/truncated.pt",
     "corrupt or truncated"),
    ("teacher-empty-file", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/empty.pt", "is empty"),
    ("teacher-pickled-object", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/custom.pt",
     "Custom' and is refused"),
    ("teacher-pickled-code", "train {b} teachers.default.random_init=false teachers.default.weights={d}/evil.pt",
     "refused"),
    ("teacher-not-a-checkpoint", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/notes.txt",
     "not a PyTorch checkpoint"),
    ("teacher-plain-state-dict", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/plain.pt",
     "not a crossdistill checkpoint"),
    ("teacher-checkpoint-missing", "train {b} teachers.default.model=null teachers.default.checkpoint={d}/nope.pt",
     "does not exist"),
    ("checkpoint-from-the-future", "eval {d}/future.pt", "newer than this crossdistill"),
    # a model option the run already gives (was: TypeError: create_model() got multiple values for keyword argument)
    ("student-in-channels-clash", "train {b} student.options.in_channels=1",
     "student.options.in_channels=1 clashes with in_channels=3 that the data gives"),
    ("student-num-classes-clash", "train {b} student.options.num_classes=5",
     "student.options.num_classes=5 clashes with num_classes=4 that the task gives"),
    ("teacher-num-classes-clash", "train {b} teachers.default.options.num_classes=5",
     "teachers.default.options.num_classes=5 clashes with num_classes=4 that teachers.default.num_classes gives"),
    # data
    ("cifar-root-missing", "train {b} data.name=cifar100 data.root={d}/no-such-dir data.options={{}}",
     "no cifar-100-python folder"),
    ("cifar-malformed-file", "train {b} data.name=cifar100 data.root={d}/cifar data.options={{}}",
     "cannot read CIFAR batch"),
    ("fashion-mnist-root-missing", "train {b} data.name=fashion_mnist data.root={d}/no-such-dir data.options={{}}",
     "not found"),
    # output folder and runs
    ("output-dir-under-a-file", "train {b} output_dir={d}/a_file/sub", "is not writable"),
    ("existing-run-without-resume", "train {b} output_dir={d}/good", "pass --resume"),
    ("resume-with-another-config", "train {b} output_dir={d}/good train.optimizer.lr=0.2 --resume",
     "train.optimizer.lr is 0.05 there but 0.2 now"),
    ("resume-with-another-method", "train {b} output_dir={d}/good distill.terms.0.T=2 --resume",
     "distill.terms.0.T"),
    # eval and list
    ("eval-missing-checkpoint", "eval {d}/good/nope.pt", "does not exist"),
    ("eval-not-a-checkpoint", "eval {d}/notes.txt", "not a PyTorch checkpoint"),
    ("eval-pickled-object", "eval {d}/custom.pt", "refused"),
    ("eval-truncated", "eval {d}/truncated.pt", "corrupt or truncated"),
    ("eval-plain-state-dict", "eval {d}/plain.pt", "not a crossdistill checkpoint"),
    ("eval-non-data-override", "eval {d}/good/student.pt train.epochs=3", "only data.* keys"),
    ("eval-bad-data-value", "eval {d}/good/student.pt data.batch_size=0", "data.batch_size"),
    ("eval-other-classes", "eval {d}/good/student.pt data.options.num_classes=6", "predicts 4 classes"),
    ("list-layers-unknown-model", "list layers resnet9000", "unknown model 'resnet9000'"),
    ("list-layers-no-model", "list layers", "needs a model name"),
]


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def assert_one_error_line(rc: int, err: str, expected: str) -> str:
    assert rc != 0, "a bad input must exit non-zero"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    assert len(lines[0]) > 40, "a message names the problem and how to fix it"
    return lines[0]


@pytest.mark.parametrize("argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(files, argv, expected, capsys):
    before = snapshot(files)
    args = argv.format(d=files, b=files / "base.yaml").split()
    rc = cli.main(args)
    cap = capsys.readouterr()
    assert_one_error_line(rc, cap.err, expected)
    assert snapshot(files) == before, "a failed command must not write or change any file"
    assert not (files / "PWNED").exists(), "unpickling code ran"


@pytest.mark.parametrize("argv,expected", [
    ("trian x.yaml", "invalid choice: 'trian'"), ("train", "required: config"),
    ("eval --bogus x.pt", "unrecognized arguments: --bogus"), ("list foo", "invalid choice: 'foo'"),
], ids=["unknown-command", "missing-config-argument", "unknown-flag", "unknown-list"])
def test_usage_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv.split())
    assert_one_error_line(exc.value.code, capsys.readouterr().err, expected)


def test_case_count():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,expected", [
    ("train {d}/malformed.yaml", "not valid YAML"),
    ("train {d}/tag.yaml", "YAML tag"),
    ("eval {d}/evil.pt", "refused"),
    ("eval {d}/truncated.pt", "corrupt or truncated"),
    ("train {d}/base.yaml student.options.in_channels=1", "student.options.in_channels=1 clashes"),
    ("train {d}/base.yaml student.options.num_classes=5", "student.options.num_classes=5 clashes"),
], ids=["malformed-yaml", "yaml-tag", "pickled-code", "truncated", "in-channels-clash", "num-classes-clash"])
def test_bad_input_subprocess(files, argv, expected):
    """The real executable: stderr must hold the one line only (no warnings, no traceback)."""
    args = argv.format(d=files).split()
    res = subprocess.run([sys.executable, "-m", "crossdistill.cli", *args], capture_output=True, text=True, timeout=120)
    assert_one_error_line(res.returncode, res.stderr, expected)
    assert not (files / "PWNED").exists()


def test_output_dir_without_permission(files, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere; covered by output-dir-under-a-file")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc = cli.main(["train", str(files / "base.yaml"), f"output_dir={locked}/run"])
        assert_one_error_line(rc, capsys.readouterr().err, "is not writable")
    finally:
        locked.chmod(0o700)


def test_disk_full_keeps_the_previous_checkpoint(files, tmp_path, monkeypatch, capsys):
    """The 3rd save hits ENOSPC half-way: one clear error, checkpoint 2 intact, no temp file."""
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"PK\x03\x04 partial bytes")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    out = tmp_path / "run"
    rc = cli.main(["train", str(files / "base.yaml"), f"output_dir={out}", "train.max_steps_per_epoch=4",
                   "train.checkpoint_every_steps=1"])
    line = assert_one_error_line(rc, capsys.readouterr().err, "No space left on device")
    assert "free some disk space" in line and "previous checkpoint.pt is intact" in line
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert load_checkpoint(out / "checkpoint.pt")["position"]["global_step"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert not (out / "summary.json").exists() and not (out / "student.pt").exists()
    # and once there is space again, the run resumes from it
    assert cli.main(["train", str(files / "base.yaml"), f"output_dir={out}", "train.max_steps_per_epoch=4",
                     "train.checkpoint_every_steps=1", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["last"]["step"] == 4


def test_existing_run_is_not_touched(files, capsys):
    before = snapshot(files / "good")
    rc = cli.main(["train", str(files / "base.yaml")])
    assert_one_error_line(rc, capsys.readouterr().err, "already holds a run")
    assert snapshot(files / "good") == before


def test_a_model_option_equal_to_the_given_value_is_accepted():
    """``student.options.in_channels=3`` beside data with 3 channels says the same thing twice: no error."""
    from crossdistill.build import model_from_spec, model_spec
    from crossdistill.tasks import create_task

    spec = model_spec("resnet8", {"in_channels": 3, "num_classes": 4}, create_task("classification", 4), 3)
    assert spec["options"] == {} and spec["in_channels"] == 3 and spec["num_classes"] == 4
    assert model_from_spec(spec)(torch.randn(2, 3, 16, 16)).shape == (2, 4)
