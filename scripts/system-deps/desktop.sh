#!/usr/bin/env bash
# System packages the desktop app's tests drive on Debian/Ubuntu: a virtual X screen
# with a system tray (Xvfb + trayer), input and screenshot tools, the X/GL libraries
# Qt's xcb platform plugin loads, and iproute2 for the network-namespace discovery test.
# Idempotent: installs only what is missing. Run as root.
set -euo pipefail
PACKAGES=(
  xvfb xauth trayer xdotool x11-utils imagemagick
  libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0 libxcb-xinerama0 libxcb-randr0
  libegl1 libgl1 libfontconfig1 libdbus-1-3 iproute2
)
if ! command -v apt-get >/dev/null 2>&1; then
  echo "desktop.sh: no apt-get here; install these yourself: ${PACKAGES[*]}" >&2
  exit 0
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "desktop.sh: run as root to install: ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
