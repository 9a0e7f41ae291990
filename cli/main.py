"""The ``butterfly`` command: coordinator, invite, volunteers, volunteer, generate, status, apikey, app, demo.

Each subcommand imports only what it needs, so ``butterfly --help`` and the volunteer
start fast. Errors from the product end the command with a one-line message and a
hint, never a traceback; the exit code is 2 for bad input and 1 for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from cli.app import add_app_args
from cli.invite import add_invite_args
from cli.volunteers import add_volunteers_args
from cli.bench import add_bench_args
from core.errors import ButterflyError, ConfigError

VERSION = "0.1.0"


def self_command(*args: str) -> list[str]:
    """The argv that runs this very program with ``args`` (works installed and frozen)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "cli", *args]


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise ConfigError(f"cannot read duration {text!r}", hint="use e.g. 90s, 15m, 24h or 7d") from None


def _add_coordinator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="a .gguf file, a Hugging Face model folder, or 'default' (SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port for volunteers and clients (0 = any free port)")
    p.add_argument("--public-url", help="the http(s) URL volunteers should use, if not host:port")
    p.add_argument("--data-dir", type=Path, help="where the pool key lives (default: the platform data dir)")
    p.add_argument("--pool-name", default="Butterfly pool")
    p.add_argument("--min-volunteers", type=int, default=1, help="volunteers to wait for before the first plan")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--wire-codec", choices=("auto", "model", "float16", "bfloat16", "int8"), default="auto",
                   help="how hidden states travel to volunteers (default auto: exact on fast links, float16 on slow ones)")
    p.add_argument("--relay-only", action="store_true",
                   help="relay every hidden state through the coordinator instead of letting stages hand them on directly")
    p.add_argument("--api-key", help="require this Bearer key for the generation API")
    p.add_argument("--admin-key", help="the Bearer key of the admin API (default: admin.key in the data dir, made on first start)")
    p.add_argument("--invite-uses", type=int, default=None, help="uses of the printed invite (default unlimited)")
    p.add_argument("--invite-ttl", default="24h", help="lifetime of the printed invite (default 24h)")
    p.add_argument("--open", action="store_true", help="admit volunteers without an invite (anyone who can reach the pool)")
    p.add_argument("--insecure-loopback", action="store_true",
                   help="development only: plain http/ws instead of TLS bound to the pool key; only on a loopback address")
    p.add_argument("--no-mdns", action="store_true", help="do not advertise the pool on the local network")
    p.add_argument("--mdns-interface", action="append", default=[], metavar="IP",
                   help="advertise on the interface with this IPv4 address (repeatable; default: those matching --host)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="butterfly", description="Run language models on a pool of volunteers' computers.")
    parser.add_argument("--version", action="version", version=f"butterfly {VERSION}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("coordinator", help="host a pool: admit volunteers, split the model, serve generations")
    _add_coordinator_args(p)

    p = sub.add_parser("invite", help="create, list or revoke a pool's invites (create is the default)")
    add_invite_args(p)

    p = sub.add_parser("volunteers", help="list a pool's volunteers, ban or unban one")
    add_volunteers_args(p)

    p = sub.add_parser("volunteer", help="lend this machine to a pool")
    p.add_argument("--invite", help="the invite token or butterfly:// link from the host")
    p.add_argument("--url", help="the coordinator's wss:// address (taken from the invite if omitted)")
    p.add_argument("--data-dir", type=Path, help="where this install's key lives (default: the platform data dir)")
    p.add_argument("--name", default="", help="the name the pool shows for this machine")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for compute (default: all)")
    p.add_argument("--memory-gb", type=float, default=None, help="memory cap in GiB (default: half of free RAM)")
    p.add_argument("--slowdown", type=float, default=1.0, help="debug: multiply compute time by this factor")
    p.add_argument("--max-batch", type=int, default=32, help="most sessions' decode steps run as one forward (1 = no batching)")
    p.add_argument("--no-direct-links", action="store_true",
                   help="do not open direct links to other volunteers (found over mDNS); all hidden states go through the coordinator")
    p.add_argument("--peer-host", metavar="IP",
                   help="address to accept direct links from other volunteers on (default: the one that reaches the coordinator)")
    p.add_argument("--peer-port", type=int, default=0, help="port for direct links (default: any free port)")
    p.add_argument("--peer-advertise-port", type=int, default=None,
                   help="port other volunteers should dial for direct links, when a forwarded port differs from --peer-port")
    p.add_argument("--perturb", type=float, default=0.0, metavar="SCALE",
                   help="debug only: add noise of this relative size to every result (the pool quarantines this volunteer)")
    p.add_argument("--pool-id", help="the pool key fingerprint (bf1…) to insist on (default: the invite's, or the one pinned before)")
    p.add_argument("--insecure-loopback", action="store_true",
                   help="development only: allow a plain ws:// pool on this machine")

    p = sub.add_parser("generate", help="stream an answer from a pool")
    p.add_argument("prompt", help="the prompt (a user message unless --raw)")
    p.add_argument("--url", default="https://127.0.0.1:8765", help="the coordinator's https:// address")
    p.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--api-key", default=os.environ.get("BUTTERFLY_API_KEY"))
    p.add_argument("--pool-id", default=os.environ.get("BUTTERFLY_POOL_ID"), help="the pool key (bf1…) an https:// coordinator must prove")

    p = sub.add_parser("status", help="show a pool's volunteers, layers, pipelines and recent events")
    p.add_argument("--url", default="https://127.0.0.1:8765", help="the coordinator's https:// address")
    p.add_argument("--json", action="store_true", help="print the raw JSON view")
    p.add_argument("--pool-id", default=os.environ.get("BUTTERFLY_POOL_ID"), help="the pool key (bf1…) an https:// coordinator must prove")

    p = sub.add_parser("apikey", help="create, list or revoke the API keys of a pool hosted here")
    p.add_argument("--data-dir", type=Path, help="the coordinator's data dir (default: the platform data dir)")
    keys = p.add_subparsers(dest="action", required=True)
    k = keys.add_parser("create", help="create a key and print it (shown only once)")
    k.add_argument("--name", default="", help="a label for the key, e.g. who uses it")
    keys.add_parser("list", help="list keys (ids and first characters only)")
    k = keys.add_parser("revoke", help="revoke a key")
    k.add_argument("key_id", help="the key's id (or a unique start of it), from `butterfly apikey list`")

    p = sub.add_parser("app", help="the desktop app: join pools from the tray, host one, control what this machine gives")
    add_app_args(p)

    p = sub.add_parser("benchmark", help="measure this machine: seconds per layer of a model, matmul and memory speed")
    p.add_argument("--model", default="default", help="the model whose layer shape to time ('default', a .gguf file or an HF folder)")
    p.add_argument("--dtype", action="append", default=[], help="compute dtype(s) to time (default: float32 and bfloat16 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--force", action="store_true", help="measure again even if a cached result exists")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("demo", help="a coordinator and three volunteers on this machine, answering one prompt")
    p.add_argument("--prompt", default="What is volunteer computing? Answer in three sentences.")
    p.add_argument("--volunteers", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--keep", action="store_true", help="leave the pool running and print its address")

    p = sub.add_parser("bench", help="our pipeline on loopback side by side with single-process transformers generate")
    add_bench_args(p)

    from cli.selftest import add_selftest_args

    p = sub.add_parser("selftest", help="check this install: a coordinator and two volunteers answer a prompt, then stop")
    add_selftest_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "coordinator":
            from cli.commands import run_coordinator

            return run_coordinator(args)
        if args.command == "invite":
            from cli.invite import run_invite

            return run_invite(args)
        if args.command == "volunteers":
            from cli.volunteers import run_volunteers

            return run_volunteers(args)
        if args.command == "volunteer":
            from cli.commands import run_volunteer

            return run_volunteer(args)
        if args.command == "generate":
            from cli.commands import run_generate

            return run_generate(args)
        if args.command == "status":
            from cli.status import run_status

            return run_status(args)
        if args.command == "apikey":
            from cli.apikey import run_apikey

            return run_apikey(args)
        if args.command == "app":
            from cli.app import run_app

            return run_app(args)
        if args.command == "benchmark":
            from cli.commands import run_benchmark

            return run_benchmark(args)
        if args.command == "demo":
            from cli.demo import run_demo

            return run_demo(args)
        if args.command == "selftest":
            from cli.selftest import run_selftest

            return run_selftest(args)
        if args.command == "bench":
            from cli.bench import run_bench

            return run_bench(args)
    except ButterflyError as exc:
        print(f"butterfly: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
