#!/usr/bin/env bash
# Set everything up, then run the whole test suite.
# As root on Debian/Ubuntu it also installs the system packages some tests drive
# (a headless browser, a virtual X screen with a tray): scripts/system-deps/*.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  for script in scripts/system-deps/*.sh; do
    [ -e "$script" ] && bash "$script"
  done
fi
bash scripts/setup.sh --dev
export PYTHONHASHSEED=0 OMP_WAIT_POLICY=PASSIVE
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
