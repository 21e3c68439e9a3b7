"""Issue 22: progress visible when output is not a terminal (trainer lines, the demo's per-run
lines), and the GPU-figures script's CPU-tiny mode."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYTHON=sys.executable, OMP_NUM_THREADS="1")


def test_a_piped_training_prints_one_plain_line_per_epoch(tmp_path):
    """stdout and stderr are pipes (no terminal): tqdm would draw nothing, so the trainer prints
    ``main epoch k/E: loss …`` once per epoch instead."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("""
task: classification
data: {name: shapes, batch_size: 16, options: {num_classes: 4, image_size: 16, train_size: 32, test_size: 16}}
student: {name: resnet8}
train: {epochs: 2, eval_every: 2, precision: fp32, threads: 1, optimizer: {name: sgd, lr: 0.05}}
""")
    proc = subprocess.run([sys.executable, "-m", "crossdistill.cli", "train", str(cfg), f"output_dir={tmp_path / 'run'}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("main epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["main epoch 1/2", "main epoch 2/2"], proc.stdout
    assert all(" loss " in ln for ln in lines)
    assert "\r" not in proc.stdout + proc.stderr  # no bar redrawn into the pipe


def test_runs_side_by_side_print_one_line_per_finished_run_and_match_run_grid(tmp_path):
    from crossdistill.lab.reproduce.grid import Cell, Selection, run_grid
    from crossdistill.lab.reproduce.parallel import planned_runs, train_runs

    base = {"task": "classification",
            "data": {"name": "shapes", "batch_size": 16, "options": {"num_classes": 4, "image_size": 16,
                                                                      "train_size": 40, "test_size": 16}},
            "student": {"name": "resnet8"},
            "train": {"epochs": 1, "precision": "fp32", "threads": 1, "optimizer": {"name": "sgd", "lr": 0.05}}}
    spectral = dict(base, distill={"terms": [{"method": "spectral", "student": "layer3", "weight": 0.1}]})
    cells = [Cell("r", "plain", base, "acc", True, (0,)), Cell("r", "spectral", spectral, "acc", True, (0,))]
    select = Selection(factors=(1.0,), validation=8)
    runs = planned_runs(cells, tmp_path, select)
    assert len(runs) == 2
    lines = []
    train_runs(runs, 2, lines.append)  # a pytest capture is not a terminal: plain lines
    assert len(lines) == 2 and all(ln.strip().startswith("run ") and "acc=" in ln for ln in lines)
    trained = []
    results = run_grid(cells, tmp_path, trained.append, select)  # reads the runs back: trains nothing
    assert not [ln for ln in trained if "s)" in ln and "acc=" in ln], trained
    assert all(len(r.values) == 1 for r in results)


def test_gpu_figures_tiny_runs_on_cpu_and_writes_its_markdown(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_figures.sh"), "--out", str(out),
                           "--json-dir", str(tmp_path / "json")],
                          env=dict(_env(), GPU_FIGURES_TINY="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    md = out.read_text()
    assert "NOT GPU NUMBERS" in md
    for name in ("overhead", "crd", "amp", "throughput"):
        assert f"## bench {name}" in md and (tmp_path / "json" / f"{name}.json").exists()
    assert "| 32 px | resnet32x4 → resnet8x4 | dpk |" in md and "| simreg |" in md


def test_gpu_figures_refuses_without_a_gpu_unless_tiny(tmp_path):
    import pytest
    import torch

    from crossdistill.errors import ConfigError
    from crossdistill.lab.scripts import gpu_figures

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ConfigError, match="--tiny"):
        gpu_figures.run(False, tmp_path / "gpu.md", tmp_path)
