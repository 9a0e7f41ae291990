"""``butterfly selftest``: prove that this install can host a pool and serve it.

Runs ``butterfly demo`` as a child process of this very program (so a frozen install
tests its frozen self): a coordinator with the default model, and volunteers that are
processes of their own joining it over loopback, answering one prompt greedily with a
few tokens. The answer must come back non-empty within the time limit; one line says
how it went. Every process started is stopped before returning, also on failure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import time
from dataclasses import dataclass

from cli.main import self_command
from core.errors import ConfigError, PoolUnavailable, RequestFailed

DEFAULT_PROMPT = "Say hello in one short sentence."
DEFAULT_TIMEOUT_S = 420.0
STOP_GRACE_S = 10.0
_USAGE = re.compile(r"^(\d+) tokens; time to first token (\d+) ms; ([0-9.]+) tokens/s", re.M)
_MODEL = re.compile(r"^Model (.+?): (\d+) layers split as", re.M)


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What one ``butterfly demo`` run printed: the answer, and what it says about it."""

    text: str
    tokens: int | None
    model: str | None


def parse_demo_output(output: str, prompt: str) -> DemoResult:
    """Read ``butterfly demo``'s standard output: the answer after the ``> prompt`` line.

    The answer ends at the token-count line; ``tokens`` and ``model`` are ``None``
    when the output does not say them.
    """
    marker = f"> {prompt}\n"
    start = output.find(marker)
    body = output[start + len(marker):] if start >= 0 else ""
    usage = _USAGE.search(body)
    text = (body[:usage.start()] if usage else body).strip()
    model = _MODEL.search(output)
    return DemoResult(
        text=text,
        tokens=int(usage.group(1)) if usage else None,
        model=model.group(1) if model else None,
    )


def add_selftest_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``butterfly selftest``."""
    p.add_argument("--volunteers", type=int, default=2, help="volunteer processes to start (default 2)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens to generate (default 8)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds before giving up (default {DEFAULT_TIMEOUT_S:.0f}; the first run converts the model)")


def run_selftest(args: argparse.Namespace) -> int:
    """Run the demo pool as a child, check its answer, print one line; 0 when it answered."""
    if args.volunteers < 1 or args.max_tokens < 1 or "\n" in args.prompt:
        raise ConfigError("selftest needs at least one volunteer, one token and a one-line prompt",
                          hint="e.g. butterfly selftest --volunteers 2 --max-tokens 8")
    cmd = self_command(
        "demo", "--volunteers", str(args.volunteers), "--max-tokens", str(args.max_tokens),
        "--prompt", args.prompt, "--port", "0",
    )
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, text=True, encoding="utf-8", errors="replace",
    )
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        try:
            out, err = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        raise PoolUnavailable(
            f"selftest: no answer within {args.timeout:.0f} s",
            hint=f"give it longer with --timeout, or see why: {_last_words(err, out)}",
        ) from None
    except BaseException:
        stop_tree(proc)
        raise
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise PoolUnavailable(
            f"selftest: the demo pool failed (exit code {proc.returncode})",
            hint=_last_words(err, out),
        )
    result = parse_demo_output(out, args.prompt)
    if not result.text or result.tokens == 0:
        raise RequestFailed("selftest: the pool answered with no tokens", hint=_last_words(err, out))
    tokens = f"{result.tokens} tokens" if result.tokens is not None else "an answer"
    model = result.model or "the default model"
    print(f"selftest: ok: {args.volunteers} volunteers, {tokens} from {model} in {elapsed:.1f} s: {result.text[:60]!r}",
          flush=True)
    return 0


def stop_tree(proc: subprocess.Popen[str]) -> None:
    """Stop ``proc`` and every process it started: politely, then by force. Never raises."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for p in (proc, *children):
        try:
            p.terminate()
        except (OSError, psutil.Error):
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
    _gone, alive = psutil.wait_procs(children, timeout=max(0.0, deadline - time.monotonic()))
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def _last_words(err: str, out: str, lines: int = 6) -> str:
    """The last few lines the child printed (errors first), on one line."""
    tail = [line.strip() for line in (err or out or "").strip().splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "it printed nothing"
