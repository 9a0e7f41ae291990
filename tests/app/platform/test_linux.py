"""Linux backend: desktop-entry text and Exec quoting per the spec, real XDG autostart files, idle probes."""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from app.platform.base import PlatformBackend
from app.platform.linux import (
    EXEC_RESERVED,
    MUTTER_IDLE_COMMAND,
    LinuxBackend,
    autostart_dir,
    desktop_entry,
    desktop_entry_enabled,
    parse_mutter_idletime,
    parse_xprintidle,
    x11_idle_seconds,
)
from core.errors import ConfigError

COMMAND = ["/opt/Butterfly Pool/bin/python3", "-m", "app", "--data-dir", "/home/ann/My $tuff/it's \"here\"", "100%", "a\\b", ""]


def unescape_string_value(value: str) -> str:
    """The Desktop Entry spec's string escapes (\\s \\n \\t \\r \\\\), undone."""
    out, i = [], 0
    escapes = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in escapes:
            out.append(escapes[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def split_exec(value: str) -> list[str]:
    """An Exec value split into arguments as the spec says; asserts it follows the quoting rules."""
    text = unescape_string_value(value)
    args: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        if text[i] == '"':
            i += 1
            arg = []
            while text[i] != '"':
                if text[i] == "\\":
                    assert text[i + 1] in '"`$\\', f"bad escape in {text!r}"
                    i += 1
                else:
                    assert text[i] not in '"`$', f"unescaped {text[i]!r} in quotes"
                arg.append(text[i])
                i += 1
            i += 1
            assert i == len(text) or text[i] == " "
            args.append("".join(arg))
        else:
            end = text.find(" ", i)
            end = len(text) if end < 0 else end
            plain = text[i:end]
            assert not set(plain) & EXEC_RESERVED, f"reserved character outside quotes in {plain!r}"
            args.append(plain)
            i = end
    return [undo_percent(a) for a in args]


def undo_percent(arg: str) -> str:
    out, i = [], 0
    while i < len(arg):
        if arg[i] == "%":
            assert arg[i + 1] == "%", f"field code in {arg!r}"
            i += 1
        out.append(arg[i])
        i += 1
    return "".join(out)


def parse_entry(text: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser.sections() == ["Desktop Entry"]
    return parser["Desktop Entry"]


def test_desktop_entry_is_a_valid_application_entry() -> None:
    entry = parse_entry(desktop_entry(COMMAND))
    assert entry["Type"] == "Application" and entry["Name"] == "Butterfly" and entry["Terminal"] == "false"
    assert split_exec(entry["Exec"]) == COMMAND


def test_exec_quoting_matches_the_spec_examples() -> None:
    exec_line = parse_entry(desktop_entry(["/bin/x", "$HOME", "a\\b", "plain", "50%"]))["Exec"]
    # The spec: a literal "$" in a quoted argument is "\\$" in the file; a backslash is four.
    assert exec_line == '/bin/x "\\\\$HOME" "a\\\\\\\\b" plain 50%%'


@hyp_settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n\t\r\x85")), min_size=1, max_size=5).filter(lambda c: c[0] != ""))
def test_any_command_survives_the_exec_quoting(command: list[str]) -> None:
    text = desktop_entry(command)
    exec_line = next(line for line in text.split("\n") if line.startswith("Exec="))
    assert "\r" not in exec_line and "\t" not in exec_line
    assert split_exec(exec_line[len("Exec="):]) == command


@pytest.mark.parametrize("command", [[], [""], ["/bin/x", "a\0b"], ["/bin/x", "\udc80"], ["/bin/x", "bell\x07"], "/bin/x"])
def test_bad_commands_raise_config_error(command: Sequence[str]) -> None:
    with pytest.raises(ConfigError):
        desktop_entry(command)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "/home/ann/.config/autostart"),
        ({"XDG_CONFIG_HOME": ""}, "/home/ann/.config/autostart"),
        ({"XDG_CONFIG_HOME": "relative/cfg"}, "/home/ann/.config/autostart"),
        ({"XDG_CONFIG_HOME": "/srv/cfg"}, "/srv/cfg/autostart"),
    ],
)
def test_autostart_dir_honours_xdg_config_home(env: dict[str, str], expected: str) -> None:
    assert autostart_dir(env, Path("/home/ann")) == Path(expected)


def test_autostart_for_real_in_a_temporary_config_home(tmp_path: Path) -> None:
    config_home = tmp_path / "cfg"
    backend = LinuxBackend(env={"XDG_CONFIG_HOME": str(config_home)}, home=tmp_path / "home")
    assert isinstance(backend, PlatformBackend) and backend.autostart_supported
    path = config_home / "autostart" / "butterfly.desktop"
    assert not backend.autostart_enabled()

    backend.set_autostart(True, COMMAND)
    assert path.is_file() and backend.autostart_enabled()
    assert split_exec(parse_entry(path.read_text(encoding="utf-8"))["Exec"]) == COMMAND
    backend.set_autostart(True, ["/usr/bin/butterfly"])  # replaces, still one file
    assert [p.name for p in path.parent.iterdir()] == ["butterfly.desktop"]
    assert split_exec(parse_entry(path.read_text(encoding="utf-8"))["Exec"]) == ["/usr/bin/butterfly"]

    backend.set_autostart(False, COMMAND)
    assert not path.exists() and not backend.autostart_enabled()
    backend.set_autostart(False, COMMAND)  # idempotent
    assert not (tmp_path / "home").exists()


def test_a_hidden_entry_counts_as_disabled(tmp_path: Path) -> None:
    backend = LinuxBackend(env={"XDG_CONFIG_HOME": str(tmp_path)}, home=tmp_path)
    backend.set_autostart(True, ["/usr/bin/butterfly"])
    backend.autostart_path.write_text(backend.autostart_path.read_text() + "Hidden=true\n")
    assert not backend.autostart_enabled()
    assert not desktop_entry_enabled("[Desktop Entry]\nX-GNOME-Autostart-enabled=false\n")
    assert desktop_entry_enabled(desktop_entry(["/bin/x"]))


def test_an_unwritable_autostart_folder_raises_config_error(tmp_path: Path) -> None:
    (tmp_path / "cfg").write_text("a file, not a folder")
    backend = LinuxBackend(env={"XDG_CONFIG_HOME": str(tmp_path / "cfg")}, home=tmp_path)
    with pytest.raises(ConfigError, match="starting at login") as err:
        backend.set_autostart(True, ["/usr/bin/butterfly"])
    assert err.value.hint


@pytest.mark.parametrize(("text", "seconds"), [("1234\n", 1.234), ("0", 0.0), ("", None), ("abc", None), ("-5", None), ("١٢", None)])
def test_parse_xprintidle(text: str, seconds: float | None) -> None:
    assert parse_xprintidle(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), [("(uint64 90500,)\n", 90.5), ("(0,)", 0.0), ("", None), ("Error: no such name", None), ("(uint64 -3,)", None)])
def test_parse_mutter_idletime(text: str, seconds: float | None) -> None:
    assert parse_mutter_idletime(text) == seconds


class FakeRunner:
    def __init__(self, outputs: dict[str, str | None]) -> None:
        self.outputs = outputs
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.calls.append(tuple(argv))
        return self.outputs.get(argv[0])


def backend_with(env: dict[str, str], outputs: dict[str, str | None], installed: set[str], x11: float | None = 7.0) -> tuple[LinuxBackend, FakeRunner]:
    runner = FakeRunner(outputs)
    backend = LinuxBackend(env=env, home=Path("/nonexistent"), run=runner, which=lambda name: f"/usr/bin/{name}" if name in installed else None, x11_idle=lambda: x11)
    return backend, runner


@pytest.mark.parametrize(
    ("env", "outputs", "installed", "seconds"),
    [
        ({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, {"gdbus": "(uint64 4000,)", "xprintidle": "1"}, {"gdbus", "xprintidle"}, 4.0),
        ({"XDG_SESSION_TYPE": "wayland"}, {}, set(), None),  # Wayland without Mutter: unknown, X11 not trusted
        ({"XDG_SESSION_TYPE": "wayland"}, {"gdbus": None}, {"gdbus"}, None),
        ({"DISPLAY": ":0"}, {"xprintidle": "2500\n"}, {"xprintidle"}, 2.5),
        ({"DISPLAY": ":0"}, {"xprintidle": None}, {"xprintidle"}, 7.0),  # falls back to XScreenSaver
        ({"DISPLAY": ":0"}, {}, set(), 7.0),
        ({}, {"xprintidle": "1"}, {"xprintidle"}, None),  # no display at all
    ],
)
def test_idle_seconds_picks_the_right_probe(env: dict[str, str], outputs: dict[str, str | None], installed: set[str], seconds: float | None) -> None:
    backend, runner = backend_with(env, outputs, installed)
    assert backend.idle_seconds() == seconds
    if "gdbus" in installed and env.get("WAYLAND_DISPLAY"):
        assert runner.calls == [MUTTER_IDLE_COMMAND]


def test_idle_seconds_never_raises() -> None:
    def broken(argv: Sequence[str]) -> str | None:
        raise RuntimeError("boom")

    backend = LinuxBackend(env={"DISPLAY": ":0"}, run=broken, which=lambda name: "/usr/bin/" + name)
    assert backend.idle_seconds() is None


def test_x11_probe_on_this_machine_returns_a_number_or_none() -> None:
    result = x11_idle_seconds()
    assert result is None or result >= 0


def test_battery_comes_from_the_injected_probe() -> None:
    assert LinuxBackend(battery=lambda: True).on_battery() is True
    assert LinuxBackend(battery=lambda: None).on_battery() is None
