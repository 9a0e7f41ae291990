#!/usr/bin/env bash
# Install the headless browser the cluster-map tests drive (Debian/Ubuntu, as root).
# Safe to run again: it does nothing when chromium and chromium-driver are already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chromium.sh: run as root (it installs chromium and chromium-driver with apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
