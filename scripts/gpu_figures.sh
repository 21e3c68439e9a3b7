#!/usr/bin/env bash
# The GPU figures, ready for the day a GPU is lent: on one GPU, in under 8 minutes, runs
# `bench overhead`, `bench crd`, `bench amp` and `bench throughput` (images/s of the student alone,
# KD, CRD, DPK and SimReg at 32 px and 224 px) and writes docs/results/gpu.md.
#
#   bash scripts/gpu_figures.sh                      # on a machine with a CUDA GPU
#   GPU_FIGURES_TINY=1 bash scripts/gpu_figures.sh   # (or --tiny) a CPU smoke run in seconds, not a measurement
#
# Extra arguments go to `python -m crossdistill.lab.scripts.gpu_figures` (--out, --json-dir, --only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
args=("$@")
if [ "${GPU_FIGURES_TINY:-0}" = "1" ]; then args+=(--tiny); fi
exec "$PY" -m crossdistill.lab.scripts.gpu_figures ${args[@]+"${args[@]}"}
