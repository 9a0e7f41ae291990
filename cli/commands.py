"""The long-running subcommands: coordinator, volunteer, and the clients invite and generate."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cli.main import parse_duration
from core.errors import ConfigError, PoolUnavailable


def load_model(spec: str):  # noqa: ANN201 - returns core.store.store.StoredModel (imported lazily)
    """Import ``spec`` ('default', a .gguf file or an HF folder) into the local store."""
    from core.store.default_model import ensure_default_model
    from core.store.store import ModelStore

    store = ModelStore()
    if spec == "default":
        return ensure_default_model(store)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"model {spec!r} not found", hint="pass a .gguf file, a Hugging Face folder, or 'default'")
    return store.import_path(path)


def coordinator_config(args: argparse.Namespace, **overrides: object):  # noqa: ANN201
    from server.config import CoordinatorConfig, default_data_dir

    values: dict[str, object] = dict(
        data_dir=args.data_dir or default_data_dir(),
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        pool_name=args.pool_name,
        min_volunteers=args.min_volunteers,
        dtype=args.dtype,
        wire_codec=getattr(args, "wire_codec", "auto"),
        direct_links=not getattr(args, "relay_only", False),
        api_key=args.api_key,
        admin_key=getattr(args, "admin_key", None),
        open_pool=args.open,
        insecure_loopback=args.insecure_loopback,
        mdns=not args.no_mdns,
        mdns_interfaces=tuple(args.mdns_interface),
    )
    values.update(overrides)
    return CoordinatorConfig(**values)  # type: ignore[arg-type]


def run_coordinator(args: argparse.Namespace) -> int:
    from server.coordinator import Coordinator

    model = load_model(args.model)
    config = coordinator_config(args)

    async def main() -> None:
        coordinator = Coordinator(config, model)
        await coordinator.start()
        invite = coordinator.invite(ttl_s=parse_duration(args.invite_ttl), max_uses=args.invite_uses)
        print(f"Pool {config.pool_name!r} ({coordinator.pool_id}) serving {model.manifest.name}")
        pin = "" if config.insecure_loopback else f" --pool-id {coordinator.pool_id}"
        print(f"  clients:    {coordinator.url}  (butterfly generate --url {coordinator.url}{pin} \"...\")")
        if not config.insecure_loopback:
            print(f"  TLS:        certificate {config.data_dir / 'pool_cert.pem'} (its key is the pool key; trust it in HTTPS clients)")
        print(f"  volunteers: {coordinator.ws_url}")
        print(f"  admin key:  {coordinator.surface.admin.key_path or 'the one given with --admin-key'}")
        print(f"  invite:     {invite}")
        print(f"Join with:    butterfly volunteer --invite {invite}", flush=True)
        stop = asyncio.Event()
        _on_interrupt(stop.set)
        await stop.wait()
        print("shutting down…", file=sys.stderr)
        await coordinator.stop()

    asyncio.run(main())
    return 0


def run_invite(args: argparse.Namespace) -> int:
    """``butterfly invite``: see :mod:`cli.invite`."""
    from cli.invite import run_invite as invite

    return invite(args)


def run_volunteer(args: argparse.Namespace) -> int:
    import platformdirs

    from app.profile import quick_profile
    from app.volunteer import VolunteerConfig, VolunteerService

    if not args.invite and not args.url:
        raise ConfigError("a volunteer needs --invite (or --url for a pool it joined before)")
    memory = None if args.memory_gb is None else int(args.memory_gb * 2**30)
    profile = quick_profile(memory_bytes=memory, threads=args.threads or None, name=args.name)
    data_dir = args.data_dir or Path(platformdirs.user_data_dir("butterfly", appauthor=False)) / "volunteer"
    config = VolunteerConfig(
        data_dir=data_dir, url=args.url, invite=args.invite, name=args.name, profile=profile,
        slowdown=args.slowdown, memory_cap_bytes=memory,
        pool_id=args.pool_id, insecure_loopback=args.insecure_loopback, perturb=args.perturb,
        max_batch=args.max_batch, direct_links=not args.no_direct_links, peer_host=args.peer_host,
        peer_port=args.peer_port, peer_advertise_port=args.peer_advertise_port,
    )
    if args.perturb:
        print(f"DEBUG: --perturb {args.perturb:g}: this volunteer returns WRONG results on purpose; "
              "the pool will quarantine it", file=sys.stderr, flush=True)

    async def main() -> None:
        volunteer = VolunteerService(config, on_status=lambda s: print(f"[{config.name or 'volunteer'}] {s}", flush=True))
        interrupts = 0

        def on_interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                print("leaving the pool (Ctrl-C again to quit at once)…", file=sys.stderr, flush=True)
                volunteer.request_drain()
            else:
                raise SystemExit(130)

        _on_interrupt(on_interrupt)
        await volunteer.run()

    asyncio.run(main())
    return 0


def run_benchmark(args: argparse.Namespace) -> int:
    """Print this machine's benchmark for a model's layer shape (cached per machine and model)."""
    from app.hardware.report import run_benchmark_command

    model = load_model(args.model)
    print(
        run_benchmark_command(
            model.config,
            dtypes=args.dtype or None,
            as_json=args.json,
            force=args.force,
            threads=args.threads,
            model_name=model.manifest.name,
        )
    )
    return 0


def run_generate(args: argparse.Namespace) -> int:
    body: dict[str, object] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    if args.raw:
        body["prompt"] = args.prompt
    else:
        body["messages"] = [{"role": "user", "content": args.prompt}]
    for line in stream_generate(args.url, body, api_key=args.api_key, pool_id=args.pool_id):
        if "error" in line:
            raise PoolUnavailable(str(line["error"]))
        sys.stdout.write(str(line.get("text", "")))
        sys.stdout.flush()
        if "usage" in line:
            usage = line["usage"]
            print(
                f"\n\n[{usage['completion_tokens']} tokens, first after {usage['time_to_first_token_s']:.2f} s, "
                f"{usage['decode_tokens_per_s']:.1f} tokens/s]",
                file=sys.stderr,
            )
    return 0


def stream_generate(url: str, body: dict[str, object], *, api_key: str | None = None, pool_id: str | None = None, timeout: float = 600):  # noqa: ANN201
    """POST to ``/api/generate`` and yield each streamed JSON line (https pinned to ``pool_id``, see :mod:`cli.https`)."""
    from cli.https import open_url

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + "/api/generate", data=json.dumps(body).encode(), headers=headers)
    try:
        with open_url(request, pool_id=pool_id, timeout=timeout) as response:
            for raw in response:
                if raw.strip():
                    yield json.loads(raw)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise ConfigError(f"the coordinator refused the request ({exc.code}): {detail}") from None
    except urllib.error.URLError as exc:
        raise PoolUnavailable(f"cannot reach the coordinator at {url}: {exc.reason}", hint="is it running?") from None


def _on_interrupt(callback) -> None:  # noqa: ANN001
    """Run ``callback`` on the event loop when the user presses Ctrl-C (portable)."""
    loop = asyncio.get_running_loop()
    signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(callback))
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(callback))
