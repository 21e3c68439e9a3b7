"""The plateau check of `crossdistill reproduce dpk-teacher-size` (full scale): every cell of the grid
(the student alone, KD and DPK from each teacher) trained 32 epochs instead of 16, seed 0, reusing
the teachers of a finished full run. docs/results.md#dpk reports it.

    python -m crossdistill.lab.scripts.dpk_teacher_size_32ep [FULL_RUN_FOLDER (default runs/reproduce/dpk-teacher-size)]

Each run goes to FULL_RUN_FOLDER/32ep/<teacher>_<method>; its last test accuracy is printed.
"""
import sys
from pathlib import Path

from crossdistill.config import deep_merge
from crossdistill.lab.reproduce import dpk
from crossdistill.lab.reproduce.grid import train_config

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce/dpk-teacher-size")
scale = dpk.SCALES["first-attempt"]  # the confounded first attempt (teachers of growing depth)
for cell in dpk.cells(out, scale, (0,)):
    cfg = deep_merge(cell.config, {"seed": 0, "train": {"epochs": 2 * scale["epochs"]}})
    train_config(cfg, out / "32ep" / f"{cell.row}_{cell.col}".replace(" ", "-"), print)
