"""`reproduce cross-task-regimes` and `reproduce teacher-free` at toy scale; paired differences."""
import csv
import math

from crossdistill.lab.reproduce import cross_task_regimes as ctr
from crossdistill.lab.reproduce import teacher_free as tf
from crossdistill.lab.reproduce.grid import Result


def test_paired_delta_is_the_mean_and_standard_error_of_per_seed_differences():
    a = Result("r", "a", "m", values=[0.5, 0.7, 0.6], seeds=[0, 1, 2])
    b = Result("r", "b", "m", values=[0.4, 0.5, 0.7, 0.9], seeds=[0, 1, 2, 3])  # seed 3 has no partner
    mean, se, n = ctr.paired_delta(a, b)
    d = [0.1, 0.2, -0.1]
    sd = math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert n == 3 and math.isclose(mean, sum(d) / 3) and math.isclose(se, sd / math.sqrt(3))


def test_regime_configs_train_on_exactly_the_stated_number_of_scenes():
    s = ctr.SCALES["full"]
    r = ctr.Regime("depth", 128, "dense_resnet_m", location="stages", reading="orthogonal + smooth-L1")
    teachers = {"trained": {"checkpoint": "t.pt"}, "random": {"model": "dense_resnet_s", "num_classes": 1,
                                                              "random_init": True}}
    v = ctr.variants(r, teachers, s)
    assert set(v) == {"trained: standard", "trained: inverted"}  # readings: the two projectors only
    cfg = v["trained: inverted"]
    assert cfg["data"]["options"]["train_size"] - s["validation"] == 128
    terms = cfg["distill"]["terms"]
    assert [t["student"] for t in terms] == ["@stage:0", "@stage:1", "@stage:2"]
    assert all(t["distance"] == "smooth_l1" and t["projector_options"] == {"orthogonal": True, "log_singular_values": 4}
               and t["regressor_relu"] is False for t in terms)
    short = ctr.Regime("depth", 512, "dense_resnet_xs", length="short")
    assert ctr.epochs_of(short, s) == s["epochs"][512] // 4


def test_the_full_map_has_its_extras_at_the_centre():
    s = ctr.SCALES["full"]
    labels = [r.label(s) for r in ctr.regimes(s, ("depth",))]
    assert len(labels) == len(set(labels)) == len(s["map"]) + 2 + len(s["readings"])
    assert sum(" stages " in x for x in labels) == 1 and sum("(short)" in x for x in labels) == 1
    assert sum("reading:" in x for x in labels) == len(ctr.READINGS)


def test_reproduce_cross_task_regimes_quick_writes_heatmaps_tables_and_csv(tmp_path, monkeypatch):
    from crossdistill.cli import main

    tiny = dict(ctr.SCALES["quick"], image_size=16, tasks=("depth",), validation=8, test_size=16,
                epochs={16: 2}, map=[(16, "dense_resnet_xs")], sizes=(16,), students=("dense_resnet_xs",),
                centre=(16, "dense_resnet_xs"), extras=(), readings=(),
                teacher="dense_resnet_xs", teacher_size=16, teacher_epochs=1, factors=(1.0,), seeds=(0, 1))
    monkeypatch.setitem(ctr.SCALES, "quick", tiny)
    assert main(["reproduce", "cross-task-regimes", "--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "inverted − standard (trained teacher)" in md and "teacher-free − none" in md
    assert "Projector spectra" in md and "Plateau check" in md
    assert (tmp_path / "heatmaps.png").stat().st_size > 5000
    deltas = list(csv.DictReader(open(tmp_path / "deltas.csv")))
    assert len(deltas) == 3 and all(d["n"] == "2" for d in deltas)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert all(r["selected"] == "w=1" for r in rows if r["column"] != "none")
    assert {r["column"] for r in rows} == {"none", "trained: standard", "trained: inverted", "random: inverted",
                                         "teacher-free"}


def test_reproduce_teacher_free_quick_selects_each_column_on_validation(tmp_path, monkeypatch):
    tiny = dict(tf.SCALES["quick"], shapes_size=48, test_size=16, validation=16, epochs={"shapes": 1}, seeds=(0,))
    monkeypatch.setitem(tf.SCALES, "quick", tiny)
    md = tf.reproduce_teacher_free(tmp_path, quick=True, log=lambda *a: None)
    for col in ("plain", "label smoothing", "spectral: tail_energy", "spectral: tail_ratio", "spectral: energy"):
        assert col in md
    rows = {r["column"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert rows["label smoothing"]["selected"] == "ε=0.1"
    assert rows["spectral: tail_energy"]["selected"] == "k=0.5,w=0.1"
    assert (tmp_path / "results.png").exists()


def test_a_long_plot_title_stays_inside_the_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from crossdistill.lab.reproduce.grid import plot_results

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig: kept.append(fig))
    results = [Result("depth (delta1; trained teacher: segmentation)", c, "delta1", values=[0.7, 0.72], seeds=[0, 1])
               for c in ("no distillation", "trained teacher: standard", "teacher-free")]
    title = "Demo: depth student on built-in scenes, teacher trained on segmentation (small scale) " * 2
    plot_results(results, tmp_path / "p.png", title, "δ1")
    fig = kept[0]
    box = fig._suptitle.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_demo_prints_its_table_and_says_plainly_what_it_shows(tmp_path, monkeypatch, capsys):
    from crossdistill.lab.reproduce import cross_task_regimes, quickstart

    tiny = dict(cross_task_regimes.SCALES["full"], image_size=16, validation=8, test_size=8, epochs={16: 1},
                batch_size=8, teacher="dense_resnet_xs")
    monkeypatch.setitem(cross_task_regimes.SCALES, "full", tiny)
    monkeypatch.setattr(quickstart, "DEMO_REGIME", dict(task="segmentation", size=16, student="dense_resnet_xs"))
    quickstart.run_demo(tmp_path, quick=True, log=lambda *a: None)
    out = capsys.readouterr().out
    assert "no distillation" in out and "random teacher: inverted" in out and "docs/results.md" in out
    assert quickstart.DEMO_NOTE in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 5000
    # the demo's cells are the regime map's cells: the same configs, so the same runs
    (cell,) = [c for c in quickstart.demo_cells((0,)) if c.col != "no distillation"]
    term = cell.config["distill"]["terms"][0]
    assert term["projector"] == "inverted" and term["weight"] == 1.0 and cell.config["teachers"]["default"]["random_init"]


def test_the_demo_regime_is_a_cell_of_the_full_regime_map():
    from crossdistill.lab.reproduce import cross_task_regimes as ctr, quickstart

    s = ctr.SCALES["full"]
    assert (quickstart.DEMO_REGIME["size"], quickstart.DEMO_REGIME["student"]) in s["map"]
    assert quickstart.DEMO_REGIME["task"] in s["tasks"]
