#!/usr/bin/env bash
# Installs medcoss-monai (editable) with its test extras. PyTorch and torchvision first, as the pair
# tested together, so pip does not pull a different build as a dependency of MONAI; a torch with an
# importable torchvision is kept. (torchvision's PyPI wheels do not load beside torch 2.13.0+cpu, hence
# the pair is installed, torch replaced, whenever torchvision cannot be imported.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
"$PY" -m pip install --quiet -e ".[test]"
