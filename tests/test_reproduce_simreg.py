"""`crossdistill reproduce simreg` end to end at a toy scale (skips without Fashion-MNIST)."""
import csv

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

    tiny = dict(subset=48, teacher_subset=64, epochs=2, ssl_epochs=1, sup_epochs=1, batch_size=24, nce_k=16, probe_epochs=3, seeds=(0, 1))
    monkeypatch.setitem(simreg.SCALES, "quick", tiny)
    every = simreg.student_cells
    # three rows run (one teacher, two teachers, two views); every row is built below
    kept = ("SimReg, SSL teacher: 4-layer head", "SimReg, both teachers: 4-layer heads",
            "SimReg, SSL teacher: 4-layer, different views")
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
    rows = every(tiny, teachers)
    assert len(rows) == 12
    for _, cfg in rows:
        build_run(parse_config(deep_merge(cfg, {"output_dir": str(tmp_path / "unused")})))


def test_reproduce_simreg_without_the_data_set_says_how_to_install_it(tmp_path, monkeypatch):
    from crossdistill.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CROSSDISTILL_DATA", str(tmp_path / "none"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        simreg.reproduce_simreg(tmp_path / "out", quick=True)
    assert not (tmp_path / "out").exists()
