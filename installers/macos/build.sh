#!/usr/bin/env bash
# Build Butterfly for macOS: Butterfly.app (a menu-bar app: LSUIElement, no Dock icon)
# and a disk image, Butterfly-<version>-macos-<arch>.dmg, with an Applications link.
#
#   bash installers/macos/build.sh [--dist DIR] [--work DIR]
#
#   --dist DIR  outputs (default $BUTTERFLY_DIST_DIR or dist/): Butterfly.app, the .dmg
#   --work DIR  intermediate files (default $BUTTERFLY_WORK_DIR or build/)
# PYTHON (default .venv/bin/python, else python3) must have the project, PyInstaller and Pillow.
#
# Signing and notarization happen only when their variables are set; unset, the app keeps
# PyInstaller's ad-hoc signature and runs on the machine that built it.
#   MACOS_SIGN_IDENTITY          "Developer ID Application: Name (TEAMID)": sign the app and the
#                                image (hardened runtime, entitlements.plist, secure timestamp)
#   MACOS_CERTIFICATE_P12_BASE64 optional (CI): that identity as a base64 .p12, imported into a
#   MACOS_CERTIFICATE_PASSWORD   temporary keychain with this password
#   Notarization (needs MACOS_SIGN_IDENTITY), one of:
#   MACOS_NOTARY_PROFILE         a profile saved with `xcrun notarytool store-credentials`
#   MACOS_NOTARY_APPLE_ID, MACOS_NOTARY_TEAM_ID, MACOS_NOTARY_PASSWORD (an app-specific password)
#   MACOS_NOTARY_KEY_PATH, MACOS_NOTARY_KEY_ID, MACOS_NOTARY_ISSUER    (an App Store Connect API key)
# The notarized image is stapled, so it opens without a network check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIST=${BUTTERFLY_DIST_DIR:-$ROOT/dist}
WORK=${BUTTERFLY_WORK_DIR:-$ROOT/build}
while [ $# -gt 0 ]; do
  case "$1" in
    --dist) DIST=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$(uname -s)" != Darwin ]; then
  echo "build.sh: the macOS app is built on macOS (hdiutil, codesign)" >&2
  exit 2
fi
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$DIST" "$WORK"
DIST=$(cd "$DIST" && pwd)
WORK=$(cd "$WORK" && pwd)
VERSION=$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' "$ROOT/cli/main.py")
ARCH=$(uname -m)
APP="$DIST/Butterfly.app"
DMG="$DIST/Butterfly-$VERSION-macos-$ARCH.dmg"
ENTITLEMENTS="$ROOT/installers/macos/entitlements.plist"
SIGN_ID=${MACOS_SIGN_IDENTITY:-}
started=$(date +%s)

echo "== icons"
"$PYTHON" "$ROOT/installers/make_icons.py" "$WORK/icons"

echo "== PyInstaller (onedir, .app)"
BUTTERFLY_ICON_DIR="$WORK/icons" "$PYTHON" -m PyInstaller "$ROOT/installers/butterfly.spec" \
  --noconfirm --log-level WARN --distpath "$WORK/pyinstaller-dist" --workpath "$WORK/pyinstaller"
rm -rf "$APP"
mv "$WORK/pyinstaller-dist/Butterfly.app" "$APP"
if [ "$(/usr/libexec/PlistBuddy -c 'Print :LSUIElement' "$APP/Contents/Info.plist")" != true ]; then
  echo "build.sh: Info.plist lacks LSUIElement" >&2
  exit 1
fi

keychain=
cleanup() {
  if [ -n "$keychain" ]; then security delete-keychain "$keychain" || true; fi
}
trap cleanup EXIT
if [ -n "$SIGN_ID" ] && [ -n "${MACOS_CERTIFICATE_P12_BASE64:-}" ]; then
  echo "== importing the signing certificate into a temporary keychain"
  keychain="$WORK/signing.keychain-db"
  keychain_password=$(uuidgen)
  rm -f "$keychain"
  security create-keychain -p "$keychain_password" "$keychain"
  security set-keychain-settings -lut 3600 "$keychain"
  security unlock-keychain -p "$keychain_password" "$keychain"
  echo "$MACOS_CERTIFICATE_P12_BASE64" | base64 --decode > "$WORK/certificate.p12"
  security import "$WORK/certificate.p12" -k "$keychain" -P "${MACOS_CERTIFICATE_PASSWORD:-}" -T /usr/bin/codesign
  rm -f "$WORK/certificate.p12"
  security set-key-partition-list -S apple-tool:,apple: -s -k "$keychain_password" "$keychain" >/dev/null
  security list-keychains -d user -s "$keychain" $(security list-keychains -d user | tr -d '"')
fi

sign() {
  codesign --force --timestamp --options runtime --entitlements "$ENTITLEMENTS" --sign "$SIGN_ID" "$@"
}
if [ -n "$SIGN_ID" ]; then
  echo "== signing as $SIGN_ID"
  # Inside out: every Mach-O file first, then the bundle that seals them.
  while IFS= read -r -d '' file; do
    if file -b "$file" | grep -q "Mach-O"; then sign "$file"; fi
  done < <(find "$APP/Contents/Frameworks" "$APP/Contents/MacOS" -type f -print0)
  sign "$APP"
  codesign --verify --deep --strict --verbose=2 "$APP"
else
  echo "== MACOS_SIGN_IDENTITY is unset: not signing (ad-hoc signature only)"
fi

echo "== $(basename "$DMG")"
staging="$WORK/dmg"
rm -rf "$staging" "$DMG"
mkdir -p "$staging"
ditto "$APP" "$staging/Butterfly.app"
ln -s /Applications "$staging/Applications"
hdiutil create -volname "Butterfly $VERSION" -srcfolder "$staging" -fs HFS+ -format UDZO -ov "$DMG" >/dev/null
if [ -n "$SIGN_ID" ]; then
  codesign --force --timestamp --sign "$SIGN_ID" "$DMG"
fi

notary=()
if [ -n "${MACOS_NOTARY_PROFILE:-}" ]; then
  notary=(--keychain-profile "$MACOS_NOTARY_PROFILE")
elif [ -n "${MACOS_NOTARY_APPLE_ID:-}" ]; then
  notary=(--apple-id "$MACOS_NOTARY_APPLE_ID" --team-id "${MACOS_NOTARY_TEAM_ID:?MACOS_NOTARY_TEAM_ID is needed with MACOS_NOTARY_APPLE_ID}"
          --password "${MACOS_NOTARY_PASSWORD:?MACOS_NOTARY_PASSWORD is needed with MACOS_NOTARY_APPLE_ID}")
elif [ -n "${MACOS_NOTARY_KEY_PATH:-}" ]; then
  notary=(--key "$MACOS_NOTARY_KEY_PATH" --key-id "${MACOS_NOTARY_KEY_ID:?MACOS_NOTARY_KEY_ID is needed with MACOS_NOTARY_KEY_PATH}"
          --issuer "${MACOS_NOTARY_ISSUER:?MACOS_NOTARY_ISSUER is needed with MACOS_NOTARY_KEY_PATH}")
fi
if [ ${#notary[@]} -gt 0 ] && [ -n "$SIGN_ID" ]; then
  echo "== notarizing (this waits for Apple)"
  xcrun notarytool submit "$DMG" "${notary[@]}" --wait
  xcrun stapler staple "$DMG"
  xcrun stapler validate "$DMG"
elif [ ${#notary[@]} -gt 0 ]; then
  echo "build.sh: notarization needs a signed app; set MACOS_SIGN_IDENTITY" >&2
  exit 2
else
  echo "== no notary credentials: not notarizing"
fi

elapsed=$(( $(date +%s) - started ))
"$PYTHON" "$ROOT/installers/bundle_report.py" "$APP/Contents" --build-seconds "$elapsed" \
  --archive "$DMG" --out "$DIST/Butterfly-$VERSION-macos-$ARCH.report.json"
echo "== done in ${elapsed}s: $DMG"
