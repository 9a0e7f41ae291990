#!/usr/bin/env bash
# Set everything up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export PYTHONHASHSEED=0 OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
