"""The benchmarks at toy sizes: structure, the equality checks they carry, options and errors.

Never a timing assertion: only that the numbers are there, finite, and where they should be.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossdistill import cli
from crossdistill.lab import bench
from crossdistill.lab.bench.common import interleave, quartiles, ratios, resolve_options
from crossdistill.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL = ["model=resnet8", "b=4", "size=16", "classes=5", "steps=1", "warmup=0"]


def test_one_file_per_benchmark_and_the_cli_lists_them():
    files = {p.stem for p in (ROOT / "src/crossdistill/lab/bench").glob("*.py") if not p.name.startswith("_")} - set(bench.SHARED)
    assert set(bench.names()) == files >= {"crd", "amp", "regulariser", "overhead", "cache"}
    choices = next(a for a in cli.parser()._subparsers._group_actions[0].choices["bench"]._actions
                   if a.dest == "what").choices
    assert list(choices) == bench.names() + ["all"]
    for name in bench.names():  # every benchmark has the interface the runner relies on
        mod = bench.load(name)
        assert callable(mod.run) and "out" in mod.DEFAULTS and set(getattr(mod, "QUICK", {})) <= set(mod.DEFAULTS)


def test_interleaved_timer_rotates_the_order_and_aligns_rounds():
    calls = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                        "c": lambda: calls.append("c")}, rounds=3, warmup=1)
    assert calls == list("abc" "bca" "cab" "abc")
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)
    r = ratios([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert r == {"median": 2.0, "q1": 2.0, "q3": 2.5}
    cpu = interleave({"a": lambda: sum(range(10000))}, rounds=2, warmup=0, clock="cpu")
    assert len(cpu["a"]) == 2 and all(t >= 0 for t in cpu["a"])
    with pytest.raises(ConfigError, match="clock=cpu"):
        interleave({"a": lambda: None}, rounds=1, warmup=0, device=torch.device("cuda"), clock="cpu")


def test_option_parser_checks_names_types_and_choices():
    defaults = {"steps": 8, "warmup": 2, "t": 0.5, "memory": True, "kind": "a", "threads": None, "out": "x.json"}
    o = resolve_options("toy", defaults, {"steps": 3, "t": 1, "threads": 2, "warmup": 0}, {"steps": 1}, True,
                        {"kind": ("a", "b")})
    assert o["steps"] == 3 and o["t"] == 1.0 and o["threads"] == 2 and o["warmup"] == 0
    for bad, msg in (({"stpes": 3}, "no option 'stpes'.*steps"), ({"steps": 0}, "positive integer"),
                     ({"steps": "many"}, "positive integer"), ({"memory": "yes"}, "true or false"),
                     ({"kind": "c"}, "not one of: a, b"), ({"t": "hot"}, "a number"), ({"threads": 0}, "or unset")):
        with pytest.raises(ConfigError, match=msg):
            resolve_options("toy", defaults, bad, choices={"kind": ("a", "b")})
    with pytest.raises(ConfigError, match="key=value"):
        bench.parse_overrides(["steps"])
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        bench.run_bench("nope", [])
    with pytest.raises(ConfigError, match="bench all has no option 'nope'"):
        bench.run_bench("all", ["nope=1"])


def test_bench_amp_and_regulariser_write_their_tables(tmp_path):
    amp = bench.run_bench("amp", TOY_MODEL + [f"out={tmp_path / 'amp.json'}"])["amp"]
    assert set(amp["results"]) == {"fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"}
    assert json.loads((tmp_path / "amp.json").read_text())["results"]["fp32"]["speed_vs_fp32"] == 1.0
    reg = bench.run_bench("regulariser", TOY_MODEL + ["side=layer3", f"out={tmp_path / 'reg.json'}"])["regulariser"]
    assert set(reg["results"]) == {"supervised step", "Distiller, no term", "+ spectral regulariser"}
    assert math.isfinite(reg["overhead"]) and math.isfinite(reg["regulariser_only"])


def test_bench_overhead_measures_every_registered_method_and_recipe(tmp_path, capsys):
    from crossdistill.lab.bench.overhead import rows
    from crossdistill.cli import RECIPES
    from crossdistill.methods import METHODS

    out = tmp_path / "overhead.json"
    opts = ["student=resnet8", "teacher=resnet8", "b=4", "size=16", "n=64", "k=8", "rounds=1", "warmup=0",
            "memory=false", "precision=both", f"out={out}"]
    res = bench.run_bench("overhead", opts)["overhead"]
    recipes = {p.stem for p in (RECIPES / "cifar100/resnet32x4_resnet8x4").glob("[!_]*.yaml")}
    expected = set(METHODS.names()) | recipes
    assert set(rows(bench.options("overhead", {}))) == expected
    printed = capsys.readouterr().out
    for mode in ("fp32", "bf16 + channels_last"):
        got = res["precisions"][mode]
        measured = {name.split(":")[0] for name in got["methods"]} | set(got["skipped"])
        assert measured == expected
        for name, row in got["methods"].items():
            assert math.isfinite(row["ratio"]["median"]) and row["ms_median"] > 0
            assert any(line.startswith(name + " ") and line.split()[3].endswith("x") for line in printed.splitlines())
        # init phases are measured too, and a term inactive in main training is compared with the student alone
        assert "ft:init" in got["methods"] and got["methods"]["ab"]["baseline"] == "student step"
        assert got["methods"]["kd"]["baseline"] == "student step + teacher forward"
        assert got["methods"]["spectral"]["baseline"] == "student step"
        assert "ratio_vs_kd" in got["methods"]["crd"]
        # MLKD reads two views with the teacher declared on each: measured against both networks on both views
        assert got["methods"]["mlkd"]["baseline"] == "student step + teacher forward, 2 views"
        assert got["methods"]["mlkd_ls"]["baseline"] in got["baselines"]
        # only what cannot run on a CNN pair without a recipe: DeiT's token needs a ViT student, SimCLR and
        # SimSiam (no recipe of the pair) two views of an unlabelled set
        assert set(got["skipped"]) == {"deit", "simclr", "simsiam"}, got["skipped"]
    saved = json.loads(out.read_text())
    assert saved["precisions"]["fp32"]["methods"]["kd"]["ratio"] == res["precisions"]["fp32"]["methods"]["kd"]["ratio"]
    assert "| kd |" in out.with_suffix(".md").read_text()


def test_bench_overhead_runs_the_recipe_as_training_builds_it():
    """The bench takes a row's terms and options from the recipe (CRD+KD is two terms, K as given)."""
    from crossdistill.lab.bench.overhead import row_config

    o = bench.options("overhead", {"k": 128})
    cfg = row_config(o, "crd_kd")
    assert [t.method for t in cfg.distill.terms] == ["crd", "kd"]
    assert cfg.distill.terms[0].model_extra["nce_k"] == 128
    assert cfg.teachers["default"].model == "resnet32x4" and cfg.teachers["default"].random_init
    assert row_config(o, "spectral").distill.terms[0].method == "spectral"  # no recipe: the defaults


def test_bench_overhead_gives_crd_its_contrast_indices_in_the_batch_as_the_loader_does(monkeypatch):
    """CRD's negatives come with the batch (the loader's workers draw them), so the timed step never
    draws them: drawing on the spot is refused here."""
    from crossdistill.lab.bench.overhead import build_row, with_sample_fields
    from crossdistill.lab.bench._steps import random_batch

    o = bench.options("overhead", {"k": 16, "n": 200, "b": 4, "student": "resnet8", "teacher": "resnet14"})
    batch = random_batch(4, 32, o["classes"], seed=0, device=torch.device("cpu"), channels_last=False)
    batch["index"] = torch.arange(4)
    d, views = build_row(o, "crd", batch, torch.device("cpu"), False)
    assert views == 1
    full = with_sample_fields(d, batch, 0)
    key = next(k for k in full if k.endswith(".contrast_index"))
    assert full[key].shape == (4, 17) and (full[key][:, 0] == batch["index"]).all()
    term = d.terms[0]

    def drawn(*a):
        raise AssertionError("drawn on the step")

    names = list(term.sample_fields())
    monkeypatch.setattr(term, "sample_fields", lambda: {n: drawn for n in names})
    d(full)  # uses the batch's indices, draws none
    with pytest.raises(AssertionError, match="drawn on the step"):
        d(batch)  # without them the Distiller would draw them on the step


def test_bench_cli_errors_are_one_line():
    res = subprocess.run([sys.executable, "-m", "crossdistill.cli", "bench", "amp", "stpes=3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: bench amp has no option 'stpes'")


def test_benchmark_scripts_are_thin_wrappers(tmp_path):
    res = subprocess.run([sys.executable, "-m", "crossdistill.lab.scripts.amp_bench", *TOY_MODEL, f"out={tmp_path / 'a.json'}"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a.json").is_file() and "bf16 + channels_last" in res.stdout


def test_bench_cache_times_three_epochs_and_reports_the_fill(tmp_path):
    out = tmp_path / "cache.json"
    res = bench.run_bench("cache", ["student=resnet8", "teacher=resnet8", "n=32", "b=16", "size=16", "views=2",
                                    "rounds=1", "warmup=0", "precision=fp32", f"out={out}"])["cache"]
    assert set(res["epochs"]) == {"student only", "live teacher", "warm cache"}
    assert res["epochs"]["student only"]["ratio_vs_student"]["median"] == 1.0
    assert res["fill_seconds"] > 0 and res["bytes"] > 0
    # logits [10] + nothing else (KD reads the output only), float16, 2 views, 32 samples, + the fill flags
    assert res["bytes_per_10k_samples"] == pytest.approx(res["bytes"] / 32 * 10_000)
    assert json.loads(out.read_text())["warm_cache_vs_student"] == res["warm_cache_vs_student"]
