"""`crossdistill reproduce simreg` end to end at a toy scale (skips without Fashion-MNIST)."""
import csv
import json

import pytest

from crossdistill.cli import main
from crossdistill.errors import DataError
from crossdistill.lab.reproduce import simreg


def _have_fashion_mnist() -> bool:
    from crossdistill.data import create_dataset

    try:
        create_dataset("fashion_mnist", "test", subset=1)
    except DataError:
        return False
    return True


@pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_reproduce_simreg_writes_table_csv_and_plots(tmp_path, monkeypatch):
    from crossdistill.build import build_run
    from crossdistill.config import deep_merge, parse_config

    tiny = dict(subset=48, teacher_subset=64, epochs=2, ssl_epochs=1, sup_epochs=1, batch_size=24, nce_k=16, probe_epochs=3,
                seeds=(0, 1), data_options={"image_size": 16}, train={"threads": 1}, select=dict(factors=(0.5, 2.0), validation=12))
    monkeypatch.setitem(simreg.SCALES, "quick", tiny)
    every = simreg.student_cells
    # four rows run (one teacher, two teachers, two views, a baseline whose weight is chosen); every row is built below
    kept = ("SimReg, SSL teacher: 4-layer head", "SimReg, both teachers: 4-layer heads",
            "SimReg, SSL teacher: 4-layer, different views", "CC, SSL teacher")
    monkeypatch.setattr(simreg, "student_cells", lambda s, t: [c for c in every(s, t) if c[0] in kept])
    assert main(["reproduce", "simreg", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    for row in kept:
        assert row in md
    for col in ("k-NN k=1", "k-NN k=20", "linear probe", "random-init ResNet-8", "SSL teacher", "Plateau check",
                "Trained twice as long (4 epochs"):
        assert col in md
    assert "±" in md and "over 2 seeds" in md
    table = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(table) == 3 * len(kept) and all(r["n_seeds"] == "2" for r in table)
    assert {r["metric"] for r in table} == {"knn_k1", "knn_k20", "linear"}
    assert (tmp_path / "results.png").stat().st_size > 1000 and (tmp_path / "curves.png").stat().st_size > 1000
    # every student was evaluated from its exported backbone, and a second call trains nothing again
    evals = sorted(tmp_path.glob("runs/*/eval.json"))
    assert len(evals) == 2 * len(kept) + 1                   # and the twice-as-long plateau check
    stamps = [p.stat().st_mtime_ns for p in evals]
    assert main(["reproduce", "simreg", "--quick", "--out", str(tmp_path)]) == 0
    assert [p.stat().st_mtime_ns for p in evals] == stamps
    # every row of the grid builds (configs, teachers from the checkpoints, the Distiller's dry run)
    teachers = {"ssl": str(tmp_path / "teacher_ssl" / "student.pt"), "sup": str(tmp_path / "teacher_sup" / "student.pt")}
    rows = every(dict(tiny, supervised_head_ablation=True), teachers)
    assert len(rows) == 17 and len(every(tiny, teachers)) == 15
    # CC's weight: two candidates trained on the held-out split, the better one kept for its seeds
    chosen = list(csv.DictReader(open(tmp_path / "selection.csv")))
    assert [r["row"] for r in chosen] == ["CC, SSL teacher"] * 2 and sum(int(r["selected"]) for r in chosen) == 1
    best = max(chosen, key=lambda r: float(r["validation_knn"]))
    assert best["selected"] == "1" and "chosen on a validation split" in md
    # each candidate's score in selection.csv is its own run's validation k-NN (first seed)
    folders = {f.name: f for f in tmp_path.glob("selection/*")}
    assert len(folders) == 2
    for row in chosen:
        summary = json.loads((folders[simreg.slug(f"CC, SSL teacher__{row['candidate']}__s0")] / "summary.json").read_text())
        assert summary["eval_split"] == "validation"
        assert float(row["validation_knn"]) == pytest.approx(summary["last"]["knn_acc"])
    used = json.loads((tmp_path / "runs" / "CC--SSL-teacher__s1" / "grid_config.json").read_text())
    assert f"w={used['distill']['terms'][0]['weight']:g}" == best["candidate"]
    assert "validation" not in used["data"]
    for _, cfg in rows:
        build_run(parse_config(deep_merge(cfg, {"output_dir": str(tmp_path / "unused")})))


def test_reproduce_simreg_without_the_data_set_says_how_to_install_it(tmp_path, monkeypatch):
    from crossdistill.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CROSSDISTILL_DATA", str(tmp_path / "none"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        simreg.reproduce_simreg(tmp_path / "out", quick=True)
    assert not (tmp_path / "out").exists()


def test_choose_weights_keeps_the_best_validation_score_and_refuses_a_test_split_score(tmp_path, monkeypatch):
    from crossdistill.errors import ConfigError, NonFiniteLossError

    scores = {"w=0.5": 0.61, "w=2": 0.70, "w=8": None}

    def fake_train(config, folder, log):
        if scores[folder.name] is None:
            raise NonFiniteLossError("loss is nan")
        return {"eval_split": "validation", "last": {"knn_acc": scores[folder.name]}}

    monkeypatch.setattr(simreg, "train_config", fake_train)
    runs = {"CC": {label: ({}, tmp_path / label) for label in scores}}
    chosen, table = simreg.choose_weights(runs, print)
    assert chosen == {"CC": "w=2"}
    assert [(r[1], r[3]) for r in table] == [("w=0.5", 0), ("w=2", 1), ("w=8", 0)] and table[2][2] == float("-inf")
    scores = {"w=0.5": None, "w=2": None}
    with pytest.raises(NonFiniteLossError, match="every weight candidate of 'CC' diverged"):
        simreg.choose_weights({"CC": {label: ({}, tmp_path / label) for label in scores}}, print)
    monkeypatch.setattr(simreg, "train_config", lambda c, f, log: {"eval_split": "test", "last": {"knn_acc": 0.9}})
    with pytest.raises(ConfigError, match="not scored on a validation split"):
        simreg.choose_weights({"CC": {"w=1": ({}, tmp_path / "x")}}, print)
