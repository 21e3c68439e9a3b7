"""`crossdistill reproduce simreg` at the ``medium`` scale of ``lab/reproduce/simreg.py``: a SimCLR
teacher trained on 10x the students' images (16 px), every student row over 3 seeds for 40 epochs,
CRD's and CC's weights chosen on a validation split — 1 h 7 min of wall clock on an idle 2-core AMD
EPYC (teachers 16 min, students 51 min; up to ~2.6x longer on a slower machine of the same kind);
``medium-20`` is the same grid with 20-epoch students. docs/results.md#simreg reports both.

    python -m crossdistill.lab.scripts.simreg_medium [OUT (default runs/reproduce/simreg-medium)] [SCALE (default medium)]

A run that stops resumes: finished runs are read back, interrupted ones go on from their checkpoint;
a new OUT folder can start from another one's teachers (copy its teacher_ssl/ and teacher_sup/; only
between the medium scales, which train the same teachers and score them on the same images).
"""
import sys
from pathlib import Path

from crossdistill.lab.reproduce.simreg import reproduce_simreg

if __name__ == "__main__":  # the runs are spawned worker processes: they import this file
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reproduce/simreg-medium")
    scale = sys.argv[2] if len(sys.argv) > 2 else "medium"
    print(reproduce_simreg(out, scale=scale, log=lambda *a: print(*a, flush=True)))
