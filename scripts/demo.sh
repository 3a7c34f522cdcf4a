#!/usr/bin/env bash
# The main job: install, fetch the real sample data, and pre-train the five-stage curriculum at demo size.
# Extra arguments go to the pipeline (e.g. --max_epochs 1, --output_dir runs/other).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
"$PY" -m medcoss_monai.samples.sample_data fetch
"$PY" -m medcoss_monai.bundle.pipeline --stages report,xray,ct,mri,pathology --method medcoss --output_dir runs/demo "$@"
