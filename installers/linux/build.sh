#!/usr/bin/env bash
# Build Butterfly for Linux: the PyInstaller bundle, a per-user tarball and a .deb.
#
#   bash installers/linux/build.sh [--dist DIR] [--work DIR] [--no-deb]
#
#   --dist DIR   outputs (default $BUTTERFLY_DIST_DIR or dist/):
#                  butterfly-<version>-linux-<arch>/          the unpacked tarball:
#                      butterfly/butterfly                    the program (with butterfly/_internal/)
#                      share/applications/butterfly.desktop   the menu entry
#                      share/icons/hicolor/…                  icons from assets/butterfly.svg
#                      install.sh, uninstall.sh               per-user, XDG, no root
#                  butterfly-<version>-linux-<arch>.tar.gz
#                  butterfly-pool_<version>_<debarch>.deb     (when dpkg-deb is present)
#   --work DIR   intermediate files (default $BUTTERFLY_WORK_DIR or build/)
#   --no-deb     skip the .deb
# Environment: PYTHON (default .venv/bin/python, else python3) with the project and its dev
# tools installed; BUTTERFLY_GZIP_LEVEL (1-9, default 6) for the tarball and the .deb;
# BUTTERFLY_DEB_MAINTAINER for the .deb's Maintainer field.
# Nothing is downloaded.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIST=${BUTTERFLY_DIST_DIR:-$ROOT/dist}
WORK=${BUTTERFLY_WORK_DIR:-$ROOT/build}
BUILD_DEB=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --dist) DIST=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --no-deb) BUILD_DEB=no; shift ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
LEVEL=${BUTTERFLY_GZIP_LEVEL:-6}
mkdir -p "$DIST" "$WORK"
DIST=$(cd "$DIST" && pwd)
WORK=$(cd "$WORK" && pwd)

VERSION=$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$ROOT/cli/main.py")
ARCH=$(uname -m)
NAME="butterfly-$VERSION-linux-$ARCH"
STAGE="$DIST/$NAME"
started=$(date +%s)

echo "== icons"
"$PYTHON" "$ROOT/installers/make_icons.py" "$WORK/icons"

echo "== PyInstaller (onedir)"
BUTTERFLY_ICON_DIR="$WORK/icons" "$PYTHON" -m PyInstaller "$ROOT/installers/butterfly.spec" \
  --noconfirm --log-level WARN --distpath "$WORK/pyinstaller-dist" --workpath "$WORK/pyinstaller"

echo "== tarball layout"
rm -rf "$STAGE"
mkdir -p "$STAGE/share/applications"
mv "$WORK/pyinstaller-dist/butterfly" "$STAGE/butterfly"
cp "$ROOT/installers/linux/butterfly.desktop" "$STAGE/share/applications/butterfly.desktop"
for png in "$WORK"/icons/png/*.png; do
  size=$(basename "$png" .png)
  [ "$size" -le 512 ] || continue  # hicolor stops at 512
  mkdir -p "$STAGE/share/icons/hicolor/${size}x${size}/apps"
  cp "$png" "$STAGE/share/icons/hicolor/${size}x${size}/apps/butterfly.png"
done
mkdir -p "$STAGE/share/icons/hicolor/scalable/apps"
cp "$WORK/icons/butterfly.svg" "$STAGE/share/icons/hicolor/scalable/apps/butterfly.svg"
install -m 755 "$ROOT/installers/linux/install.sh" "$STAGE/install.sh"
install -m 755 "$ROOT/installers/linux/uninstall.sh" "$STAGE/uninstall.sh"

if [ "$BUILD_DEB" = yes ] && ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "== no dpkg-deb here: skipping the .deb"
  BUILD_DEB=no
fi
if [ "$BUILD_DEB" = yes ]; then
  DEBARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  DEB="$DIST/butterfly-pool_${VERSION}_${DEBARCH}.deb"
  DEBROOT="$WORK/deb/root"
  echo "== .deb layout"
  rm -rf "$WORK/deb"
  mkdir -p "$DEBROOT/DEBIAN" "$DEBROOT/opt" "$DEBROOT/usr/bin" "$DEBROOT/usr/share/applications"
  # Hard links where possible (same file system): no second copy of the bundle.
  cp -al "$STAGE/butterfly" "$DEBROOT/opt/butterfly-pool" 2>/dev/null || cp -a "$STAGE/butterfly" "$DEBROOT/opt/butterfly-pool"
  ln -s /opt/butterfly-pool/butterfly "$DEBROOT/usr/bin/butterfly"
  cp "$STAGE/share/applications/butterfly.desktop" "$DEBROOT/usr/share/applications/"
  cp -r "$STAGE/share/icons" "$DEBROOT/usr/share/icons"
  size_kib=$(du -sk --exclude=DEBIAN "$DEBROOT" | cut -f1)
  # The bundle links against this machine's C library: build on the oldest system to support.
  glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
  cat > "$DEBROOT/DEBIAN/control" <<CONTROL
Package: butterfly-pool
Version: $VERSION
Architecture: $DEBARCH
Maintainer: ${BUTTERFLY_DEB_MAINTAINER:-Butterfly developers <butterfly@invalid>}
Installed-Size: $size_kib
Depends: libc6 (>= ${glibc:-2.28}), libgl1, libegl1, libfontconfig1, libxkbcommon0, libdbus-1-3
Recommends: libxcb-cursor0, libxkbcommon-x11-0, libxcb-icccm4, libxcb-keysyms1, libxcb-shape0
Section: net
Priority: optional
Description: volunteer computing for large language models
 Butterfly splits a language model's layers across volunteers' computers.
 This package holds the desktop app (tray), the volunteer worker and the
 coordinator as one program, 'butterfly', with the default model inside.
CONTROL
fi

# The two archives compress at the same time (gzip uses one core each).
pids=()
echo "== $NAME.tar.gz"
rm -f "$DIST/$NAME.tar.gz"
(tar -C "$DIST" -cf - "$NAME" | gzip -"$LEVEL" > "$DIST/$NAME.tar.gz.part" && mv "$DIST/$NAME.tar.gz.part" "$DIST/$NAME.tar.gz") &
pids+=($!)
if [ "$BUILD_DEB" = yes ]; then
  echo "== $(basename "$DEB")"
  (dpkg-deb --root-owner-group -Zgzip -z"$LEVEL" --build "$DEBROOT" "$DEB" >/dev/null) &
  pids+=($!)
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
if [ "$status" != 0 ]; then
  echo "build.sh: packing failed" >&2
  exit 1
fi

elapsed=$(( $(date +%s) - started ))
"$PYTHON" "$ROOT/installers/bundle_report.py" "$STAGE/butterfly" --build-seconds "$elapsed" \
  --archive "$DIST/$NAME.tar.gz" ${DEB:+--archive "$DEB"} --out "$DIST/$NAME.report.json"
echo "== done in ${elapsed}s"
