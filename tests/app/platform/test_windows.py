"""Windows backend: Run-key command-line quoting against the C runtime's rules, a fake registry, tick arithmetic."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings as hyp_settings, strategies as st

from app.platform.base import PlatformBackend
from app.platform.windows import (
    MAX_RUN_COMMAND_CHARS,
    RUN_VALUE_NAME,
    WindowsBackend,
    idle_from_ticks,
    quote_windows_arg,
    run_key_value,
    windows_idle_seconds,
)
from core.errors import ConfigError

PROGRAM = r"C:\Program Files\Butterfly\Butterfly.exe"


def command_line_to_argv(line: str) -> list[str]:
    """How CommandLineToArgvW (and the MS C runtime since 2008) splits a command line."""
    i, n = 0, len(line)
    if line.startswith('"'):
        end = line.index('"', 1)
        argv, i = [line[1:end]], end + 1
    else:
        end = min((j for j in (line.find(" "), line.find("\t")) if j >= 0), default=n)
        argv, i = [line[:end]], end
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return argv
        arg: list[str] = []
        quoted = False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                count = 0
                while i < n and line[i] == "\\":
                    count, i = count + 1, i + 1
                if i < n and line[i] == '"':
                    arg.append("\\" * (count // 2))
                    if count % 2:
                        arg.append('"')
                        i += 1
                else:
                    arg.append("\\" * count)
            elif line[i] == '"':
                if quoted and i + 1 < n and line[i + 1] == '"':
                    arg.append('"')
                    i += 2
                else:
                    quoted = not quoted
                    i += 1
            else:
                arg.append(line[i])
                i += 1
        argv.append("".join(arg))


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("C:\\dir with space\\", '"C:\\dir with space\\\\"'),
        ("C:\\no_space\\", "C:\\no_space\\"),
        ('a\\"b', '"a\\\\\\"b"'),
    ],
)
def test_quote_windows_arg(arg: str, quoted: str) -> None:
    assert quote_windows_arg(arg) == quoted


args_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0") | st.sampled_from(['"', "\\", " ", "\t"]), max_size=12)


@hyp_settings(max_examples=300, deadline=None)
@given(st.lists(args_text, max_size=5))
def test_any_arguments_survive_the_run_key_quoting(args: list[str]) -> None:
    line = " ".join([f'"{PROGRAM}"', *(quote_windows_arg(a) for a in args)])
    assert command_line_to_argv(line) == [PROGRAM, *args]
    # Python's own quoting for the same C runtime rules reads back the same.
    assert command_line_to_argv(subprocess.list2cmdline([PROGRAM, *args]))[1:] == args


def test_run_key_value_quotes_the_program_always() -> None:
    assert run_key_value([r"C:\Butterfly\b.exe", "--tray"]) == '"C:\\Butterfly\\b.exe" --tray'
    assert command_line_to_argv(run_key_value([PROGRAM, "--data-dir", "C:\\Users\\Ann Lee\\butterfly\\"])) == [PROGRAM, "--data-dir", "C:\\Users\\Ann Lee\\butterfly\\"]


def test_run_key_value_limits() -> None:
    program = "C:\\" + "b" * (MAX_RUN_COMMAND_CHARS - 5)
    assert len(run_key_value([program])) == MAX_RUN_COMMAND_CHARS
    with pytest.raises(ConfigError, match="260") as err:
        run_key_value([program + "b"])
    assert err.value.hint
    with pytest.raises(ConfigError, match="double quote"):
        run_key_value(['C:\\odd"name\\b.exe'])
    with pytest.raises(ConfigError):
        run_key_value([])


@pytest.mark.parametrize(("now", "last", "seconds"), [(5000, 2000, 3.0), (100, 100, 0.0), (1000, (1 << 32) - 1000, 2.0)])
def test_idle_from_ticks_survives_the_32_bit_wrap(now: int, last: int, seconds: float) -> None:
    assert idle_from_ticks(now, last) == seconds


class FakeRunKey:
    def __init__(self, *, fail: bool = False) -> None:
        self.values: dict[str, str] = {}
        self.fail = fail

    def read(self, name: str) -> str | None:
        if self.fail:
            raise PermissionError("access denied")
        return self.values.get(name)

    def write(self, name: str, value: str) -> None:
        if self.fail:
            raise PermissionError("access denied")
        self.values[name] = value

    def delete(self, name: str) -> None:
        if self.fail:
            raise PermissionError("access denied")
        self.values.pop(name, None)


def test_autostart_writes_and_deletes_the_run_value() -> None:
    key = FakeRunKey()
    backend = WindowsBackend(run_key=key, idle=lambda: 12.0, battery=lambda: False)
    assert isinstance(backend, PlatformBackend) and backend.autostart_supported
    assert not backend.autostart_enabled()
    backend.set_autostart(True, [PROGRAM, "--tray"])
    assert key.values == {RUN_VALUE_NAME: run_key_value([PROGRAM, "--tray"])} and backend.autostart_enabled()
    backend.set_autostart(False, [PROGRAM])
    assert key.values == {} and not backend.autostart_enabled()
    backend.set_autostart(False, [PROGRAM])
    assert (backend.idle_seconds(), backend.on_battery()) == (12.0, False)


def test_registry_failures_become_config_errors() -> None:
    backend = WindowsBackend(run_key=FakeRunKey(fail=True))
    assert not backend.autostart_enabled()
    with pytest.raises(ConfigError, match="starting at login") as err:
        backend.set_autostart(True, [PROGRAM])
    assert err.value.hint


def test_off_windows_the_real_registry_and_idle_probe_fail_softly() -> None:
    backend = WindowsBackend()
    assert windows_idle_seconds() is None and backend.idle_seconds() is None
    assert not backend.autostart_enabled()
    with pytest.raises(ConfigError):
        backend.set_autostart(True, [PROGRAM])


def test_a_bad_command_never_reaches_the_registry() -> None:
    key = FakeRunKey()
    with pytest.raises(ConfigError):
        WindowsBackend(run_key=key).set_autostart(True, ["C:\\" + "x" * 300])
    assert key.values == {}
