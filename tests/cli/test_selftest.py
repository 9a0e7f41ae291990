"""``butterfly selftest``: reading the demo's answer, failing clearly, leaving no process behind."""

from __future__ import annotations

import argparse
import sys
import time

import psutil
import pytest

from cli import selftest
from cli.selftest import DemoResult, parse_demo_output, run_selftest
from core.errors import ConfigError, PoolUnavailable, RequestFailed

PROMPT = "Say hello in one short sentence."
DEMO_OUTPUT = f"""Preparing the default model (converted once, then cached)…
Coordinator at https://127.0.0.1:41973; started 2 volunteer processes

Model SmolLM2-135M-Instruct: 30 layers split as
  pipeline 0: layers [ 0,  8) on volunteer-2
  pipeline 0: layers [ 8, 30) on volunteer-1

> {PROMPT}

Hello there, welcome!

8 tokens; time to first token 292 ms; 16.1 tokens/s
"""


def test_parse_reads_the_answer_the_token_count_and_the_model() -> None:
    assert parse_demo_output(DEMO_OUTPUT, PROMPT) == DemoResult("Hello there, welcome!", 8, "SmolLM2-135M-Instruct")


def test_parse_without_the_summary_lines_still_reads_the_answer() -> None:
    result = parse_demo_output(f"> {PROMPT}\n\nHi!\n", PROMPT)
    assert result == DemoResult("Hi!", None, None)


def test_parse_without_the_prompt_line_reads_no_answer() -> None:
    assert parse_demo_output("Preparing…\n", PROMPT).text == ""


def args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = dict(volunteers=2, max_tokens=4, prompt=PROMPT, timeout=60.0)
    values.update(overrides)
    return argparse.Namespace(**values)


def fake_demo(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Make the selftest run ``python -c code`` instead of ``butterfly demo``."""
    monkeypatch.setattr(selftest, "self_command", lambda *a: [sys.executable, "-c", code])


def test_ok_prints_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake_demo(monkeypatch, f"import sys; sys.stdout.write({DEMO_OUTPUT!r})")
    assert run_selftest(args()) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("selftest: ok: 2 volunteers, 8 tokens from SmolLM2-135M-Instruct")


def test_a_failed_demo_is_an_error_with_its_last_words(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_demo(monkeypatch, "import sys; print('no volunteer joined', file=sys.stderr); sys.exit(1)")
    with pytest.raises(PoolUnavailable, match="exit code 1") as exc:
        run_selftest(args())
    assert "no volunteer joined" in (exc.value.hint or "")


def test_an_empty_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_demo(monkeypatch, f"print('> {PROMPT}'); print(); print('0 tokens; time to first token 0 ms; 0.0 tokens/s')")
    with pytest.raises(RequestFailed, match="no tokens"):
        run_selftest(args())


def test_a_hung_demo_is_stopped_with_its_children(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    pid_file = tmp_path / "child.pid"
    fake_demo(monkeypatch, (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    ))
    started = time.monotonic()
    with pytest.raises(PoolUnavailable, match="no answer within 3 s"):
        run_selftest(args(timeout=3.0))
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ConfigError):
        run_selftest(args(volunteers=0))
    with pytest.raises(ConfigError):
        run_selftest(args(prompt="two\nlines"))
