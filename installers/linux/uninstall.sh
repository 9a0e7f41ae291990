#!/usr/bin/env bash
# Remove Butterfly installed for this user by install.sh: the program, the command link,
# the menu entry, the icons and the start-at-login entry (which would point at nothing).
# Your settings, keys (the identity pools know this computer by) and cached models are
# kept unless you say so: it asks when run in a terminal, or take
#   --purge      remove them too            --keep-data  keep them, do not ask
set -euo pipefail

purge=ask
for arg in "$@"; do
  case "$arg" in
    --purge) purge=yes ;;
    --keep-data) purge=no ;;
    -h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown option $arg (use --purge or --keep-data)" >&2; exit 2 ;;
  esac
done

DATA_HOME=${XDG_DATA_HOME:-$HOME/.local/share}
CONFIG_HOME=${XDG_CONFIG_HOME:-$HOME/.config}
CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}
APP_DIR="$DATA_HOME/butterfly-pool"
BIN_LINK="$HOME/.local/bin/butterfly"
ICON_ROOT="$DATA_HOME/icons/hicolor"

if [ -L "$BIN_LINK" ] && [ "$(readlink "$BIN_LINK")" = "$APP_DIR/butterfly" ]; then
  rm -f "$BIN_LINK"
fi
rm -f "$DATA_HOME/applications/butterfly.desktop"
for icon in "$ICON_ROOT"/*/apps/butterfly.png "$ICON_ROOT"/*/apps/butterfly.svg; do
  [ -e "$icon" ] && rm -f "$icon"
done
touch "$ICON_ROOT" 2>/dev/null || true
rm -f "$CONFIG_HOME/autostart/butterfly.desktop"
if command -v update-desktop-database >/dev/null 2>&1 && [ -d "$DATA_HOME/applications" ]; then
  update-desktop-database -q "$DATA_HOME/applications" 2>/dev/null || true
fi
rm -rf "$APP_DIR"

DATA_DIRS=("$CONFIG_HOME/butterfly" "$DATA_HOME/butterfly" "$CACHE_HOME/butterfly")
if [ "$purge" = ask ]; then
  purge=no
  if [ -t 0 ]; then
    printf 'Also remove your Butterfly settings, keys and cached models?\n  %s\n[y/N] ' "${DATA_DIRS[*]}"
    read -r answer || answer=
    case "$answer" in [yY] | [yY][eE][sS]) purge=yes ;; esac
  fi
fi
if [ "$purge" = yes ]; then
  rm -rf "${DATA_DIRS[@]}"
  echo "Butterfly and its data are removed."
else
  echo "Butterfly is removed; your settings, keys and models are kept in:"
  printf '  %s\n' "${DATA_DIRS[@]}"
fi
