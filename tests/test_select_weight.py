"""--select-weight: weights chosen on a validation split carved from the training data only."""
import csv
import subprocess
import sys

import pytest

from crossdistill.lab.reproduce.grid import Cell, Selection, pick_candidate, run_grid, weight_candidates, write_tables

BASE = {"data": {"name": "shapes", "batch_size": 8, "augment": "none",
                 "options": {"num_classes": 3, "image_size": 16, "train_size": 24, "test_size": 8}},
        "student": {"name": "resnet8"}, "train": {"epochs": 1, "precision": "fp32"}}
TEACHER = {"teachers": {"default": {"model": "resnet8", "num_classes": 3, "random_init": True}}}


def test_candidates_scale_every_term_weight_and_default_to_the_method_beta():
    cfg = {**BASE, "distill": {"terms": [{"method": "fitnet"}, {"method": "kd", "weight": 0.5}]}}
    cands = weight_candidates(cfg, (0.1, 2.0))
    assert list(cands) == ["w=10,0.05", "w=200,1"]  # fitnet's β = 100
    assert [t["weight"] for t in cands["w=200,1"]["distill"]["terms"]] == [200.0, 1.0]
    assert weight_candidates(BASE, (0.1, 2.0)) == {"": {}}


def test_pick_prefers_no_divergence_then_the_best_validation_mean():
    val = {"a": (0.5, 0.0, 0), "b": (0.7, 0.0, 1), "c": (0.6, 0.0, 0)}
    assert pick_candidate(val) == "c"
    assert pick_candidate(val, higher_is_better=False) == "a"
    assert pick_candidate({"a": (0.5, 0, 0), "b": (0.5, 0, 0)}) == "a"  # ties keep the first
    assert pick_candidate({"x": (float("nan"), 0, 3), "y": (float("nan"), 0, 3)}) == "x"


def test_selection_reads_only_validation_then_scores_the_selected_students_on_test(tmp_path, monkeypatch):
    import crossdistill.build as build
    import crossdistill.commands.evaluate as evaluate

    built, scored, scoring = [], [], []
    real_dataset, real_eval = build.cached_dataset.__wrapped__, evaluate.evaluate_checkpoint
    # (split, whether it was built to score a selected student on test)
    monkeypatch.setattr(build, "cached_dataset", lambda *a: (built.append((a[1], bool(scoring))), real_dataset(*a))[1])

    def score(p, *a):
        scored.append(p)
        scoring.append(p)
        try:
            return real_eval(p, *a)
        finally:
            scoring.pop()

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", score)

    distilled = {**BASE, **TEACHER, "distill": {"terms": [{"method": "fitnet", "weight": 1.0}]}}
    cells = [Cell("r", "alone", BASE, "acc", True, (0, 1)), Cell("r", "fitnet", distilled, "acc", True, (0, 1))]
    results = run_grid(cells, tmp_path, log=lambda *a: None, select=Selection(factors=(0.1, 10.0), validation=0.25))

    assert ("test", False) not in built  # no training run ever built the test split; only the scoring did
    assert ("test", True) in built
    alone, fit = results
    assert alone.selected == "" and list(alone.validation) == [""]
    assert set(fit.validation) == {"w=0.1", "w=10"}
    # the selection is the argmax of the validation means, recomputed here from the runs themselves
    import json
    means = {}
    for label in ("w=0.1", "w=10"):
        runs = [json.loads((tmp_path / "runs" / f"r__fitnet__{label.replace('=', '-')}__s{s}" / "summary.json").read_text())
                for s in (0, 1)]
        assert all(r["eval_split"] == "validation" for r in runs)
        means[label] = sum(r["last"]["acc"] for r in runs) / 2
    assert fit.selected == max(means, key=means.get)
    # exactly the selected candidate's students (and the baseline's) were scored on test, once each
    chosen = fit.selected.replace("=", "-")
    assert sorted(scored) == sorted([str(tmp_path / "runs" / f"r__alone__s{s}" / "student.pt") for s in (0, 1)]
                                    + [str(tmp_path / "runs" / f"r__fitnet__{chosen}__s{s}" / "student.pt") for s in (0, 1)])
    assert fit.values == [real_eval(str(tmp_path / "runs" / f"r__fitnet__{chosen}__s{s}" / "student.pt"))["acc"]
                          for s in (0, 1)]
    # the table and the CSVs carry the selected weight
    md = write_tables(results, tmp_path, "t")
    assert f"({fit.selected})" in md and "validation split" in md
    row = list(csv.DictReader(open(tmp_path / "results.csv")))[1]
    assert row["selected"] == fit.selected and row["validation_mean"]
    sel = list(csv.DictReader(open(tmp_path / "selection.csv")))
    assert len(sel) == 3 and sum(int(r["selected"]) for r in sel if r["column"] == "fitnet") == 1
    # a rerun reads everything back (no training, no test scoring)
    scored.clear()
    again = run_grid(cells, tmp_path, log=lambda *a: None, select=Selection(factors=(0.1, 10.0), validation=0.25))
    assert [r.values for r in again] == [r.values for r in results] and scored == []


def test_bad_selection_flag_is_a_one_line_error_from_the_real_cli():
    r = subprocess.run([sys.executable, "-m", "crossdistill.cli", "reproduce", "cross-task", "--select-weight", "a,b"],
                       capture_output=True, text=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "positive weight factors" in lines[0]


def test_choosing_on_the_first_seed_trains_only_the_chosen_weight_on_the_others(tmp_path, monkeypatch):
    import json

    from crossdistill.lab.reproduce import grid
    from crossdistill.lab.reproduce.parallel import chosen_runs, planned_runs

    trained = []
    real_train = grid.train_config
    monkeypatch.setattr(grid, "train_config", lambda raw, folder, log=print: (trained.append(folder.name), real_train(raw, folder, log))[1])
    distilled = {**BASE, **TEACHER, "distill": {"terms": [{"method": "fitnet", "weight": 1.0}]}}
    cells = [Cell("r", "alone", BASE, "acc", True, (0, 1, 2)), Cell("r", "fitnet", distilled, "acc", True, (0, 1, 2))]
    select = Selection(factors=(0.1, 10.0), validation=0.25, seeds=1)
    # what the side-by-side pool trains first, before any choice: every candidate on seed 0, and every
    # seed of the cell that has nothing to choose
    first = sorted(f.name for _, f in planned_runs(cells, tmp_path, select))
    assert first == ["r__alone__s0", "r__alone__s1", "r__alone__s2", "r__fitnet__w-0.1__s0", "r__fitnet__w-10__s0"]
    alone, fit = run_grid(cells, tmp_path, log=lambda *a: None, select=select)
    chosen = fit.selected.replace("=", "-")
    # the choice reads seed 0 alone, and is the better of its two validation runs
    scores = {label: json.loads((tmp_path / "runs" / f"r__fitnet__{label.replace('=', '-')}__s0" / "summary.json").read_text())["last"]["acc"]
              for label in ("w=0.1", "w=10")}
    assert fit.selected == max(scores, key=scores.get) and {k: v[0] for k, v in fit.validation.items()} == scores
    other = "w-10" if chosen == "w-0.1" else "w-0.1"
    assert sorted(set(trained)) == sorted(first + [f"r__fitnet__{chosen}__s1", f"r__fitnet__{chosen}__s2"])
    assert not any(other in name and not name.endswith("s0") for name in trained)
    assert fit.seeds == [0, 1, 2] and len(fit.values) == 3 and len(alone.values) == 3
    assert "on the first 1 seed(s)" in write_tables([alone, fit], tmp_path, "t")
    # and the pool's second phase names exactly the runs run_grid made after choosing
    assert sorted(f.name for _, f in chosen_runs(cells, tmp_path, select, log=lambda *a: None)) == \
        [f"r__fitnet__{chosen}__s1", f"r__fitnet__{chosen}__s2"]


@pytest.mark.parametrize("args, msg", [
    (["--select-weight", "0,1"], "positive weight factors"),
    (["--select-weight", "--validation", "1.5"], "neither a count"),
    (["--validation", "0.2"], "add --select-weight"),
    (["--select-seeds", "1"], "add --select-weight"),
    (["--select-weight", "--select-seeds", "0"], "not a positive whole number"),
    (["--workers", "2"], "takes no --workers"),
])
def test_bad_selection_flags_are_one_line_errors(args, msg, capsys):
    from crossdistill.cli import main

    try:
        code = main(["reproduce", "cross-task", "--quick", "--out", "/nonexistent/never", *args])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and msg in err[0]


def test_reproduce_cross_task_with_select_weight_end_to_end(tmp_path, monkeypatch):
    from crossdistill.cli import main
    from crossdistill.lab.reproduce import cross_task

    tiny = dict(image_size=16, train_size=32, test_size=16, epochs=1, teacher_epochs=1,
                student="dense_resnet_xs", teacher="dense_resnet_xs", batch_size=16, seeds=(0, 1))
    monkeypatch.setitem(cross_task.SCALES, "quick", tiny)
    real_cells = cross_task.cells
    monkeypatch.setattr(cross_task, "cells",
                        lambda out, scale, seeds=None, log=print: real_cells(out, scale, seeds, ("depth",), log))
    assert main(["reproduce", "cross-task", "--quick", "--seeds", "1", "--select-weight", "0.1,1", "--validation", "8",
                 "--out", str(tmp_path)]) == 0
    rows = {r["column"]: r for r in csv.DictReader(open(tmp_path / "results.csv"))}
    assert rows["no distillation"]["selected"] == ""
    assert rows["trained teacher: inverted"]["selected"] in ("w=0.1", "w=1")
    assert rows["teacher-free"]["selected"] in ("w=0.01", "w=0.1")  # the regulariser's 0.1 × factors
    assert all(r["n_seeds"] == "1" for r in rows.values())
    assert "w=" in (tmp_path / "results.md").read_text()


def test_every_zoo_variant_gets_weight_candidates_around_its_reference_beta():
    from crossdistill.lab.reproduce import zoo
    from crossdistill.methods import METHODS

    from crossdistill.methods import build_method

    s = zoo.SCALES["quick"]
    for name, recipe in zoo.zoo_recipes().items():
        cfg = {"distill": zoo.column_config(recipe, s, "teacher.pt")["distill"]}
        cands = weight_candidates(cfg, (0.1, 1.0))
        terms = cfg["distill"]["terms"]
        if not any(build_method(t["method"], **{k: v for k, v in t.items() if k not in ("method", "weight")})
                   .active_in("main") for t in terms):
            # AB / FSP as the reference: an unweighted init phase only, so there is no weight to choose
            assert cands == {"": {}}, name
            continue
        assert len(cands) == 2, name
        for factor, patch in zip((0.1, 1.0), cands.values()):
            for term, got in zip(cfg["distill"]["terms"], patch["distill"]["terms"]):
                beta = term.get("weight", METHODS.get(term["method"]).default_weight)
                assert got["weight"] == pytest.approx(factor * beta), name
                assert {k: v for k, v in got.items() if k != "weight"} == {k: v for k, v in term.items() if k != "weight"}


def test_select_weight_on_a_reproduction_without_weights_is_one_clear_error(tmp_path):
    from crossdistill.errors import ConfigError
    from crossdistill.lab.reproduce import reproduce

    for what in ("simreg", "dpk-teacher-size", "teacher-cache"):
        with pytest.raises(ConfigError, match=f"reproduce {what} takes no --select-weight.*zoo"):
            reproduce(what, quick=True, out=str(tmp_path / what), select=Selection(factors=(0.1, 1.0)))
        assert not (tmp_path / what).exists()
