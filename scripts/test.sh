#!/usr/bin/env bash
# The test command: install, fetch the sample data (idempotent, offline once fetched), run pytest.
# Extra arguments go to pytest (e.g. -m slow for the long end-to-end runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
"$PY" -m medcoss_monai.samples.sample_data fetch
"$PY" -m pytest -q "$@"
