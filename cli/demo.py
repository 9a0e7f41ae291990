"""``butterfly demo``: a whole pool on this machine, answering one prompt.

Starts a coordinator in this process with the embedded default model, launches the
volunteers as separate processes that join with an invite over loopback, waits for the
split, streams the answer, prints time to first token and tokens/s, and shuts
everything down (volunteers are drained, not killed). ``--keep`` leaves it running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli.commands import load_model
from cli.main import self_command
from core.errors import PoolUnavailable

READY_TIMEOUT_S = 300.0


def stop_process(proc: subprocess.Popen) -> None:
    """Ask a volunteer process to leave (it drains first); a hard stop where signals are not portable."""
    if proc.poll() is not None:
        return
    if sys.platform == "win32":
        proc.terminate()
    else:
        proc.send_signal(signal.SIGTERM)


def run_demo(args: argparse.Namespace) -> int:
    from server.config import CoordinatorConfig
    from server.coordinator import Coordinator
    from server.generation import generate
    from server.pool import describe_split
    from server.sampling import SamplingParams

    print("Preparing the default model (converted once, then cached)…", flush=True)
    model = load_model("default")
    tmp = Path(tempfile.mkdtemp(prefix="butterfly-demo-"))
    config = CoordinatorConfig(
        data_dir=tmp / "coordinator",
        port=args.port,
        pool_name="Butterfly demo",
        min_volunteers=args.volunteers,
        dtype=args.dtype,
        settle_s=0.3,
    )
    threads = max(1, os.cpu_count() or 1)

    async def main() -> int:
        coordinator = Coordinator(config, model)
        await coordinator.start()
        invite = coordinator.invite(ttl_s=3600, max_uses=args.volunteers)
        procs = []
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        for i in range(args.volunteers):
            cmd = self_command(
                "volunteer", "--invite", invite, "--data-dir", str(tmp / f"volunteer-{i + 1}"),
                "--name", f"volunteer-{i + 1}", "--threads", str(threads),
            )
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
        print(f"Coordinator at {coordinator.url}; started {args.volunteers} volunteer processes", flush=True)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not coordinator.pool.pipelines:
                if time.monotonic() > deadline:
                    raise PoolUnavailable(f"the pool was not ready after {READY_TIMEOUT_S:.0f} s: {coordinator.pool.last_error}")
                if any(p.poll() is not None for p in procs):
                    raise PoolUnavailable("a volunteer process exited early; run `butterfly volunteer` by hand to see why")
                await asyncio.sleep(0.1)
            print(f"\nModel {model.manifest.name}: {model.config.num_layers} layers split as\n"
                  + describe_split(coordinator.pool.pipelines), flush=True)
            tokenizer = coordinator.tokenizer
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
            print(f"\n> {args.prompt}\n", flush=True)
            usage = None
            async for event in generate(coordinator.pool, tokenizer, tokenizer.encode(prompt), SamplingParams(max_tokens=args.max_tokens)):
                sys.stdout.write(event.text)
                sys.stdout.flush()
                usage = event.usage or usage
            if usage is not None:
                print(
                    f"\n\n{usage.completion_tokens} tokens; time to first token {usage.time_to_first_token_s * 1000:.0f} ms; "
                    f"{usage.decode_tokens_per_s:.1f} tokens/s",
                    flush=True,
                )
            if args.keep:
                print(f"\nThe pool keeps running at {coordinator.url} (Ctrl-C to stop).")
                print(f'Try: butterfly generate --url {coordinator.url} --pool-id {coordinator.pool_id} "Tell me a joke"', flush=True)
                stop = asyncio.Event()
                from cli.commands import _on_interrupt

                _on_interrupt(stop.set)
                await stop.wait()
            return 0
        finally:
            for p in procs:  # volunteers drain and leave for good
                stop_process(p)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
            await coordinator.stop()

    return asyncio.run(main())
