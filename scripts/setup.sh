#!/usr/bin/env bash
# Create .venv and install crossdistill into it without ever re-resolving torch:
# torch==2.13.0 is installed first only when the environment has no torch (on a CPU machine pip
# finds the local CPU build; see docs/install.md), then the package is
# installed with the present torch pinned as a constraint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
  "$PY" -W ignore -c "import torch" || { echo "error: torch could not be installed; install a torch build for your machine into .venv first" >&2; exit 1; }
fi
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null)
CONSTRAINT=$(mktemp)
echo "torch==${TORCH}" > "$CONSTRAINT"
"$PY" -m pip install -q -c "$CONSTRAINT" -e ".[test]" 2>&1 | grep -v "is ignored" || true
rm -f "$CONSTRAINT"
"$PY" -c "import crossdistill, torch; print(f'crossdistill ready (torch {torch.__version__})')"
