#!/usr/bin/env bash
# Set everything up, then run the demo: a coordinator and three volunteers on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/butterfly demo "$@"
