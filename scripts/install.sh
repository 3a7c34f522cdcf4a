#!/usr/bin/env bash
# Installs medcoss-monai (editable) with its test extras. PyTorch first, so pip does not pull a
# different build as a dependency of MONAI; an existing torch install is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[test]"
