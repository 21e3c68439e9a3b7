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
    for col in ("student alone", "KD", "FitNet (tokens ↔ map)", "OFA", "DeiT token (hard)", "VkD"):
        assert col in md
    assert "resnet20 → ViT" in md and "ViT → resnet8" in md and "over 2 seeds" in md
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 10 and all(r["n_seeds"] == "2" for r in rows)
    # the plateau check: every cell's curve, and the student alone trained twice as long each way
    assert "Plateau check" in md and md.count("student alone, seed 0: ") == 2 and "after 2 epochs against" in md
    assert len(list(tmp_path.glob("runs/*twice-as-long__s0/summary.json"))) == 2


def test_the_split_grid_reports_only_finished_runs_and_never_chooses_from_part_of_the_candidates(tmp_path, monkeypatch):
    import json

    from crossdistill.lab.reproduce import grid
    from crossdistill.lab.scripts import cross_architecture_split as split

    def finish(name, acc, epochs=4):
        folder = tmp_path / "runs" / grid.slug(name)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"last": {"acc": acc}}))
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "acc": acc - 0.01 * (epochs - e)})
                                                        for e in range(1, epochs + 1)))
        (folder / "student.pt").write_bytes(b"")

    for seed, acc in enumerate((0.80, 0.82, 0.81)):
        finish(f"resnet20 → ViT__student alone__s{seed}", acc)
    # KD: every candidate on seed 0 (w=9 best on validation), the chosen weight on seeds 1 and 2
    for label, acc in (("w=0.09", 0.79), ("w=0.9", 0.78), ("w=9", 0.83)):
        finish(f"resnet20 → ViT__KD__{label}__s0", acc)
    finish("resnet20 → ViT__KD__w=9__s1", 0.84)
    finish("resnet20 → ViT__KD__w=9__s2", 0.85)
    # OFA: one candidate of three finished — no choice may be made from it
    finish("resnet20 → ViT__OFA__w=0.1__s0", 0.99)
    test_acc = {}
    monkeypatch.setattr(split, "test_metrics", lambda student: {"acc": test_acc.setdefault(str(student), 0.5 + 0.01 * len(test_acc))})
    by = {(r.row, r.col): r for r in split.collect(tmp_path)}
    alone, kd, ofa = by[("resnet20 → ViT", "student alone")], by[("resnet20 → ViT", "KD")], by[("resnet20 → ViT", "OFA")]
    assert alone.seeds == [0, 1, 2] and alone.selected == ""
    assert kd.selected == "w=9" and kd.seeds == [0, 1, 2]
    assert kd.runs == [str(tmp_path / "runs" / grid.slug(f"resnet20 → ViT__KD__w=9__s{s}")) for s in (0, 1, 2)]
    assert ofa.selected == "" and ofa.values == [] and set(ofa.validation) == {"w=0.1"}
    md = split.report(tmp_path)
    assert "choice not finished" in md and "not run" in md and "± " in md and "(w=9)" in md
    assert "| resnet20 → ViT / KD | w=9 | 83.00 ✓ |" in md
