"""`crossdistill reproduce cross-task` end to end on a miniature scale: table (MD, CSV) and plot."""
import csv

from crossdistill.cli import main
from crossdistill.lab.reproduce import cross_task


def test_reproduce_cross_task_writes_table_csv_and_plot(tmp_path, monkeypatch):
    tiny = dict(image_size=16, train_size=32, test_size=16, epochs=1, teacher_epochs=1,
                student="dense_resnet_xs", teacher="dense_resnet_xs", batch_size=16, seeds=(0, 1))
    monkeypatch.setitem(cross_task.SCALES, "quick", tiny)
    real_cells = cross_task.cells
    monkeypatch.setattr(cross_task, "cells", lambda out, scale, seeds=None, log=print: real_cells(out, scale, seeds, ("depth",), log))
    assert main(["reproduce", "cross-task", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    for col in ("no distillation", "trained teacher: standard", "trained teacher: inverted",
                "random teacher: standard", "random teacher: inverted", "teacher-free"):
        assert col in md
    assert "±" in md and "over 2 seeds" in md
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 6 and all(r["n_seeds"] == "2" for r in rows)
    assert (tmp_path / "results.png").stat().st_size > 1000
    # a second call reads the finished runs back instead of training again
    summaries = sorted(tmp_path.glob("runs/*/summary.json"))
    assert len(summaries) == 12
    stamps = [p.stat().st_mtime_ns for p in summaries]
    assert main(["reproduce", "cross-task", "--quick", "--out", str(tmp_path)]) == 0
    assert [p.stat().st_mtime_ns for p in summaries] == stamps


def test_a_changed_grid_never_reads_back_runs_of_the_old_config(tmp_path):
    import pytest

    from crossdistill.errors import ConfigError
    from crossdistill.lab.reproduce.grid import train_config

    raw = {"data": {"name": "shapes", "batch_size": 8, "options": {"num_classes": 3, "image_size": 16,
                                                                  "train_size": 16, "test_size": 8}},
           "student": {"name": "resnet8"}, "train": {"epochs": 1, "precision": "fp32"}}
    first = train_config(raw, tmp_path / "cell", log=lambda *a: None)
    assert train_config(raw, tmp_path / "cell", log=lambda *a: None) == first
    with pytest.raises(ConfigError, match="different config"):
        train_config({**raw, "seed": 5}, tmp_path / "cell", log=lambda *a: None)
