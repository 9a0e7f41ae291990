#!/usr/bin/env bash
# Install Butterfly for the current user (no root), following the XDG base directories:
#   program     $XDG_DATA_HOME/butterfly-pool/        (default ~/.local/share/butterfly-pool)
#   command     ~/.local/bin/butterfly                (a link to the program)
#   menu entry  $XDG_DATA_HOME/applications/butterfly.desktop
#   icons       $XDG_DATA_HOME/icons/hicolor/<size>/apps/butterfly.{png,svg}
# Run it from the unpacked tarball:  ./install.sh
# Installing again replaces the program and keeps your settings, keys and models.
# Remove it with ~/.local/share/butterfly-pool/uninstall.sh.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DATA_HOME=${XDG_DATA_HOME:-$HOME/.local/share}
APP_DIR="$DATA_HOME/butterfly-pool"
BIN_DIR="$HOME/.local/bin"
DESKTOP_FILE="$DATA_HOME/applications/butterfly.desktop"
ICON_ROOT="$DATA_HOME/icons/hicolor"

case "$DATA_HOME$HOME" in
  *'"'* | *'`'* | *'$'* | *'\'*)
    echo "install.sh: the install folder $APP_DIR has a character a desktop entry cannot hold (\" \` \$ \\)" >&2
    echo "  set XDG_DATA_HOME to another folder and run it again" >&2
    exit 2 ;;
esac
if [ ! -x "$HERE/butterfly/butterfly" ]; then
  echo "install.sh: $HERE/butterfly/butterfly is missing; run this from the unpacked tarball" >&2
  exit 2
fi

# The program: copied next to the old one, then swapped in, so a failed copy leaves the old one.
mkdir -p "$DATA_HOME"
staging="$APP_DIR.new.$$"
rm -rf "$staging"
mkdir -p "$staging"
cp -a "$HERE/butterfly/." "$staging/"
cp "$HERE/uninstall.sh" "$staging/uninstall.sh"
chmod 755 "$staging/uninstall.sh"
rm -rf "$APP_DIR"
mv "$staging" "$APP_DIR"

mkdir -p "$BIN_DIR"
ln -sfn "$APP_DIR/butterfly" "$BIN_DIR/butterfly"

# The menu entry runs the installed program by its full path (~/.local/bin may not be on PATH).
mkdir -p "$(dirname "$DESKTOP_FILE")"
sed -e "s|^Exec=butterfly |Exec=\"$APP_DIR/butterfly\" |" \
    -e "s|^TryExec=butterfly\$|TryExec=$APP_DIR/butterfly|" \
    "$HERE/share/applications/butterfly.desktop" > "$DESKTOP_FILE.tmp"
mv "$DESKTOP_FILE.tmp" "$DESKTOP_FILE"

for icon in "$HERE"/share/icons/hicolor/*/apps/butterfly.*; do
  size_dir=$(basename "$(dirname "$(dirname "$icon")")")
  mkdir -p "$ICON_ROOT/$size_dir/apps"
  cp "$icon" "$ICON_ROOT/$size_dir/apps/"
done
touch "$ICON_ROOT" 2>/dev/null || true  # tells icon caches to look again
if command -v update-desktop-database >/dev/null 2>&1; then
  update-desktop-database -q "$DATA_HOME/applications" 2>/dev/null || true
fi

echo "Butterfly is installed in $APP_DIR."
echo "  Start it from your applications menu, or run: $BIN_DIR/butterfly app"
case ":$PATH:" in
  *":$BIN_DIR:"*) ;;
  *) echo "  ($BIN_DIR is not on your PATH; add it to run 'butterfly' by name.)" ;;
esac
echo "  Uninstall: $APP_DIR/uninstall.sh"
