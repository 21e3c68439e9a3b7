"""End-to-end through the CLI entry point: train → resume (no-op) → eval; the ``list`` commands;
and the rules for untrusted input (weights-only loading, safe YAML, imports only when allowed)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from crossdistill import cli
from helpers import tiny_run_yaml

SRC = Path(__file__).resolve().parents[1] / "src"

def tiny(out) -> str:
    return tiny_run_yaml(out, name="cli-test", seed=1, data={"options": {"test_size": 48}}, train={"epochs": 2})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.yaml").write_text(tiny(d / "run"))
    assert cli.main(["train", str(d / "tiny.yaml")]) == 0
    return d


def files_state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_train_writes_checkpoint_student_summary_and_log(run_dir):
    out = run_dir / "run"
    for name in ("checkpoint.pt", "student.pt", "summary.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["primary_metric"] == "acc" and summary["last"]["epoch"] == 2
    assert not list(out.glob(".*.tmp"))


def test_resume_of_a_finished_run_is_a_no_op(run_dir, capsys):
    before = files_state(run_dir / "run")
    # overrides may follow the flag; progress/log keys may change on resume
    assert cli.main(["train", str(run_dir / "tiny.yaml"), "--resume", "train.progress=true"]) == 0
    assert "done:" in capsys.readouterr().out
    assert files_state(run_dir / "run") == before


@pytest.mark.parametrize("name", ["student.pt", "checkpoint.pt"])
def test_eval_gives_the_metric_of_the_summary(run_dir, name, capsys):
    summary = json.loads((run_dir / "run" / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir / "run" / name), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc"] == summary["last"]["acc"]


@pytest.mark.parametrize("what,expect", [
    (["methods"], "kd"), (["models"], "resnet8"), (["datasets"], "shapes"), (["tasks"], "classification"),
    (["configs"], "quickstart/kd"), (["layers", "resnet8"], "layer1"),
])
def test_list(what, expect, capsys):
    assert cli.main(["list", *what]) == 0
    out = capsys.readouterr().out
    assert expect in out.split() and len(out.splitlines()) >= 2


# -- untrusted input ------------------------------------------------------------------------------
def _calls(tree: ast.AST, module: str, attr: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
            base = node.func.value
            if isinstance(base, ast.Name) and base.id == module:
                yield node


def test_every_torch_load_is_weights_only():
    """Unpickling runs code: every ``torch.load(`` in src/ passes ``weights_only=True``."""
    found, unsafe = 0, []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch", "load"):
            found += 1
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            if not ok:
                unsafe.append(f"{path.relative_to(SRC)}:{call.lineno}")
        text = path.read_text()
        assert "torch.serialization.load(" not in text and "pickle.loads(" not in text, path
    assert found >= 1 and not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_yaml_is_only_safe_loaded():
    bad = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for attr in ("load", "load_all", "unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
            bad += [f"{path.relative_to(SRC)}:{c.lineno} yaml.{attr}" for c in _calls(tree, "yaml", attr)]
    assert not bad, bad


def test_pickle_only_where_documented():
    """The one pickle reader is the CIFAR loader (the official format); see docs/security.md."""
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if any(True for _ in _calls(ast.parse(p.read_text()), "pickle", "load")))
    assert users == ["crossdistill/data/cifar.py"]
    for path in SRC.rglob("*.py"):
        assert "allow_pickle=True" not in path.read_text(), path


def test_import_path_needs_allow_imports(run_dir, tmp_path, capsys):
    args = ["train", str(run_dir / "tiny.yaml"), f"output_dir={tmp_path / 'run'}", "teachers.default.model=null",
            "teachers.default.import_path=helpers:TinyNet", "teachers.default.options={num_classes: 4}",
            "train.epochs=1", "train.max_steps_per_epoch=1"]
    assert cli.main(args) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-imports" in err
    assert not (tmp_path / "run").exists()
    assert cli.main(args + ["--allow-imports"]) == 0
    assert (tmp_path / "run" / "student.pt").is_file()
