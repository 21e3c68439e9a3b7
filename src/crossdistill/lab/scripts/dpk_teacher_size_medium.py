"""`crossdistill reproduce dpk-teacher-size` at the ``medium`` scale of ``lab/reproduce/dpk.py``: the
claim's test (teachers of one depth and growing width, 3 seeds, students at a plateau) sized for
about one hour of a 2-core CPU. docs/results.md#dpk reports it.

    python -m crossdistill.lab.scripts.dpk_teacher_size_medium [OUT (default runs/reproduce/dpk-teacher-size-medium)]

A run that stops resumes: finished runs are read back, interrupted ones go on from their checkpoint.
"""
import sys
from pathlib import Path

from crossdistill.lab.reproduce.dpk import reproduce_dpk_teacher_size

if __name__ == "__main__":  # the runs are spawned worker processes: they import this file
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce/dpk-teacher-size-medium")
    print(reproduce_dpk_teacher_size(out, scale="medium", log=lambda *a: print(*a, flush=True)))
