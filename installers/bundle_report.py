"""Measure a built bundle: its size, what takes the room, and the archives made from it.

``python installers/bundle_report.py BUNDLE_DIR [--build-seconds N] [--archive FILE …] [--out FILE]``
prints the largest parts and writes them as JSON (``--out``). The sizes are the bytes of
the files (links not followed), summed per entry at the top of the bundle and of its
``_internal`` folder (a ``.app``'s ``Contents``: of ``Frameworks`` and ``Resources``), and
for the few single files that dominate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

MIB = 1024 * 1024
LARGEST_FILES = 8
CONTENT_FOLDERS = ("_internal", "Frameworks", "Resources")
"""Folders whose entries are listed one by one: onedir's ``_internal``, a ``.app``'s ``Contents/…``."""


def tree_bytes(path: Path) -> int:
    """The bytes of every regular file under ``path`` (``path`` itself if it is a file)."""
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root, name)
            if not file.is_symlink():
                total += file.stat().st_size
    return total


def files_by_size(path: Path) -> Iterable[tuple[int, Path]]:
    """Every regular file under ``path`` with its size."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            file = Path(root, name)
            if not file.is_symlink():
                yield file.stat().st_size, file


def report(bundle: Path, *, build_seconds: float | None, archives: list[Path]) -> dict[str, object]:
    """The bundle's total size, its parts from largest to smallest, and the archive sizes."""
    folders = [bundle / name for name in CONTENT_FOLDERS if (bundle / name).is_dir()]
    parts = [(tree_bytes(p), p.relative_to(bundle).as_posix()) for p in bundle.iterdir() if p not in folders]
    for folder in folders:
        parts += [(tree_bytes(p), p.relative_to(bundle).as_posix()) for p in folder.iterdir()]
    parts.sort(reverse=True)
    largest = sorted(files_by_size(bundle), key=lambda item: item[0], reverse=True)[:LARGEST_FILES]
    total = tree_bytes(bundle)
    return {
        "platform": f"{sys.platform}-{platform.machine()}",
        "python": platform.python_version(),
        "build_seconds": build_seconds,
        "bundle_mib": round(total / MIB, 1),
        "file_count": sum(1 for _ in files_by_size(bundle)),
        "top_level_mib": {name: round(size / MIB, 1) for size, name in parts if size >= MIB},
        "largest_files_mib": {p.relative_to(bundle).as_posix(): round(size / MIB, 1) for size, p in largest},
        "archives_mib": {a.name: round(a.stat().st_size / MIB, 1) for a in archives if a.is_file()},
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: print the report and write it to ``--out`` when given."""
    parser = argparse.ArgumentParser(description="Measure a PyInstaller onedir bundle.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--build-seconds", type=float)
    parser.add_argument("--archive", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = report(args.bundle, build_seconds=args.build_seconds, archives=args.archive)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"bundle {result['bundle_mib']} MiB in {result['file_count']} files; largest parts:")
    for name, mib in list(result["top_level_mib"].items())[:8]:  # type: ignore[union-attr]
        print(f"  {mib:8.1f} MiB  {name}")
    for name, mib in result["archives_mib"].items():  # type: ignore[union-attr]
        print(f"  archive {name}: {mib} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
