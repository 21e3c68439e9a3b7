"""A CNN ↔ ViT term from a config through the CLI, the ViT student recipe, and
``crossdistill reproduce cross-architecture`` on a miniature scale."""
from __future__ import annotations

import csv
import json

import pytest

from crossdistill import cli
from crossdistill.cli import RECIPES
from crossdistill.config import load_config

VIT = "{model}: vit_tiny_patch4_32, options: {{img_size: 16, embed_dim: 16, depth: 2, num_heads: 2}}"
CNN = "{model}: resnet8"

TERM = """
name: cnn-vit
seed: 1
output_dir: {out}
data:
  name: shapes
  options: {{num_classes: 4, image_size: 16, train_size: 32, test_size: 16}}
  batch_size: 16
student: {{{student}}}
teachers:
  default: {{{teacher}, num_classes: 4, random_init: true}}
distill:
  terms:
    - {{method: fitnet, student: "@stage:1", teacher: "@stage:1", projector: inverted}}
    - {{method: ofa}}
train: {{epochs: 1, max_steps_per_epoch: 2, device: cpu, precision: fp32, progress: false}}
"""


@pytest.mark.parametrize("student_vit", [True, False])
def test_a_cnn_vit_term_trains_from_the_cli(tmp_path, student_vit):
    student, teacher = (VIT, CNN) if student_vit else (CNN, VIT)
    text = TERM.format(out=tmp_path / "run", student=student.format(model="name"), teacher=teacher.format(model="model"))
    (tmp_path / "c.yaml").write_text(text)
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 0
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "fitnet" in r]
    assert steps and all(k in steps[-1] for k in ("fitnet", "ofa", "ofa/stages", "task"))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["last"]["epoch"] == 1


def test_the_vit_student_recipe_trains_a_few_steps_on_builtin_data(tmp_path):
    cfg = load_config(RECIPES / "quickstart" / "vit_student_kd.yaml")
    assert cfg.student.name == "vit_tiny_patch4_32" and cfg.data.name == "shapes"
    assert [t.method for t in cfg.distill.terms] == ["kd", "deit"]
    # the recipe's teacher is the quickstart CNN's checkpoint; here a random CNN of the same kind stands in
    assert cli.main(["train", str(RECIPES / "quickstart" / "vit_student_kd.yaml"), f"output_dir={tmp_path / 'run'}",
                     "teachers.default={model: resnet20, num_classes: 10, random_init: true}",
                     "data.options.train_size=32", "data.options.test_size=16", "data.batch_size=16",
                     "train.epochs=1", "train.max_steps_per_epoch=2", "train.precision=fp32", "train.progress=false"]) == 0
    assert (tmp_path / "run" / "student.pt").is_file()


def test_reproduce_cross_architecture_runs_in_a_tiny_mode(tmp_path, monkeypatch):
    from crossdistill.lab.reproduce import cross_architecture as ca

    monkeypatch.setitem(ca.SCALES, "quick", dict(subset=32, test_subset=16, epochs=1, teacher_epochs=1, seeds=(0, 1)))
    monkeypatch.setattr(ca, "VIT_TEACHER_OPTIONS", {"img_size": 16, "embed_dim": 16, "depth": 2, "num_heads": 2})
    monkeypatch.setattr(ca, "VIT_STUDENT_OPTIONS", {"img_size": 16, "embed_dim": 16, "depth": 2, "num_heads": 2})
    real = ca.base_config

    def tiny(s, model, epochs):  # built-in data at 16 px instead of Fashion-MNIST
        cfg = real(s, model, epochs)
        cfg["data"] = {"name": "shapes", "batch_size": 16,
                       "options": {"num_classes": 3, "image_size": 16, "train_size": 32, "test_size": 16}}
        cfg["train"].update(precision="fp32", device="cpu")
        return cfg

    monkeypatch.setattr(ca, "base_config", tiny)
    assert cli.main(["reproduce", "cross-architecture", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    for col in ("student alone", "KD", "FitNet (tokens ↔ map)", "OFA", "DeiT token (hard)"):
        assert col in md
    assert "resnet20 → ViT" in md and "ViT → resnet8" in md and "over 2 seeds" in md
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 9 and all(r["n_seeds"] == "2" for r in rows)
