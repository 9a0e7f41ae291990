"""Render every installer icon from the one source, ``assets/butterfly.svg``.

``python installers/make_icons.py OUT_DIR`` writes into ``OUT_DIR``:

- ``png/<n>.png`` for n in :data:`PNG_SIZES` (Linux hicolor theme, and the others' source);
- ``butterfly.svg`` (the scalable icon, copied);
- ``butterfly.ico`` (Windows: executable, installer and shortcuts);
- ``butterfly.icns`` (macOS: the ``.app`` and the disk image).

It needs PySide6 (the product's own Qt, to draw the SVG) and Pillow (to write ICO/ICNS);
no display is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "assets" / "butterfly.svg"
PNG_SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512, 1024)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = (16, 32, 64, 128, 256, 512, 1024)


def render_png(svg: Path, size: int, out: Path) -> None:
    """Draw ``svg`` into a transparent ``size``×``size`` PNG at ``out``."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"make_icons: cannot read {svg} as SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out), "PNG"):
        raise SystemExit(f"make_icons: cannot write {out}")


def make_icons(svg: Path, out_dir: Path) -> list[Path]:
    """Write the PNGs, the SVG copy, the ICO and the ICNS into ``out_dir``; the files written."""
    from PIL import Image

    png_dir = out_dir / "png"
    png_dir.mkdir(parents=True, exist_ok=True)
    pngs = {size: png_dir / f"{size}.png" for size in PNG_SIZES}
    for size, path in pngs.items():
        render_png(svg, size, path)
    scalable = out_dir / "butterfly.svg"
    shutil.copyfile(svg, scalable)

    ico = out_dir / "butterfly.ico"
    with Image.open(pngs[256]) as big:
        big.save(ico, format="ICO", sizes=[(s, s) for s in ICO_SIZES])

    icns = out_dir / "butterfly.icns"
    images = [Image.open(pngs[s]) for s in ICNS_SIZES]
    try:
        images[-1].save(icns, format="ICNS", append_images=images[:-1])
    finally:
        for image in images:
            image.close()
    return [*pngs.values(), scalable, ico, icns]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``make_icons.py OUT_DIR [--svg FILE]``."""
    parser = argparse.ArgumentParser(description="Render the installer icons from assets/butterfly.svg.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--svg", type=Path, default=SOURCE, help="the source SVG (default: assets/butterfly.svg)")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication([sys.argv[0]])
    written = make_icons(args.svg, args.out_dir)
    del app
    print(f"make_icons: wrote {len(written)} files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
