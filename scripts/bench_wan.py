"""Benchmark: decode speed over emulated wide-area links vs the lower bound those links allow.

Each scenario of :data:`scripts.wan.scenarios.SCENARIOS` gets fresh hosts: network
namespaces on one bridge (:mod:`scripts.wan.netns`), the coordinator in one, a volunteer in
each of the others. The volunteers find the pool by real mDNS across the bridge and join
over real (TLS) websockets, each through a delaying TCP proxy on its host
(:mod:`scripts.wan.delay_proxy`) that adds the scenario's round trip. Each volunteer also
listens for direct links from the others behind a second delaying proxy with the same
shape, whose port it advertises over mDNS, so every one-way leg (coordinator to volunteer,
volunteer to volunteer) crosses one proxy. ``tbf`` shapes every host's link to the
scenario's rate in both directions. The lossy scenario emulates the effect of 1 % segment
loss on TCP (a lost segment's chunk is held for the time TCP would take to recover it),
since ``netem`` and ``iptables`` are not available.

Within a scenario the timed answers alternate between direct links (each stage hands its
output to the next) and relay (every stage through the coordinator), on the same pool;
each direct answer's hand-offs are counted and all answers' tokens compared. The first
scenario (no added latency, no shaping) measures the time one token needs without the
network; each scenario's lower bounds are that compute time plus the one-way legs each
way needs per token at half the added round trip (relay: 2 per stage; direct: stages + 1),
and tighter bounds add the token's wire bytes on its path at the link rate.
Needs root. Cleans up namespaces and processes on exit. Writes ``docs/benchmarks/wan.json``.

    sudo python scripts/bench_wan.py [--volunteers 3] [--tokens 32] [--rounds 3] [--scenarios baseline,...]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.wan.netns import Layout, Network, in_namespace, plan_hosts  # noqa: E402
from scripts.wan.scenarios import (  # noqa: E402
    LINKS,
    SCENARIOS,
    Scenario,
    critical_bytes_per_token,
    efficiency,
    lower_bound_step_s,
    one_way_legs,
)

STOP_TIMEOUT_S = 25.0
PEER_PORT = 9101
"""Where each volunteer listens for direct links (on its bridge address)."""
PEER_PROXY_PORT = 9100
"""Where the delaying proxy in front of that listener listens: the port volunteers advertise."""


class Events:
    """JSON lines from a process's stdout, read on a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: queue.Queue[dict[str, object] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    pass
        self.lines.put(None)

    def wait_for(self, event: str, timeout_s: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no {event!r} within {timeout_s:.0f} s")
            try:
                item = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if item is None:
                raise RuntimeError(f"{self.name} exited (code {self.proc.wait()}) before {event!r}")
            if item.get("event") == event:
                return item


def stop(procs: list[subprocess.Popen[str]]) -> None:
    """Ask each process to finish (volunteers drain), then end whatever is left of its process group."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group this script created for it, children included
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def run_scenario(scenario: Scenario, args: argparse.Namespace, tag: int, logs: Path) -> dict[str, object]:
    """Build the hosts, run one pool through the scenario's links, tear everything down; the coordinator's result."""
    layout: Layout = plan_hosts(tag, args.volunteers + 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    procs: list[subprocess.Popen[str]] = []
    work = Path(tempfile.mkdtemp(prefix=f"butterfly-wan-{scenario.name}-"))
    with Network(layout, rate_mbit=scenario.rate_mbit):
        try:
            coordinator_host = layout.hosts[0]
            coordinator = subprocess.Popen(
                in_namespace(coordinator_host.namespace, [
                    sys.executable, "-m", "scripts.wan.coordinator_host", "--address", coordinator_host.address,
                    "--volunteers", str(args.volunteers), "--tokens", str(args.tokens), "--rounds", str(args.rounds),
                    "--model", args.model, "--data-dir", str(work / "coordinator"), "--ready-timeout", str(args.ready_timeout),
                    "--direct-warmups", str(args.direct_warmups),
                ]),
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=open(logs / f"{scenario.name}-coordinator.log", "w"),  # noqa: SIM115
                text=True, start_new_session=True,
            )
            procs.append(coordinator)
            events = Events(coordinator, "the coordinator")
            listening = events.wait_for("listening", 120)
            caps = list(listening["memory_caps"])  # type: ignore[arg-type]
            for i, host in enumerate(layout.hosts[1:]):
                procs.append(subprocess.Popen(
                    in_namespace(host.namespace, [
                        sys.executable, "-m", "scripts.wan.volunteer_host", "--address", host.address,
                        "--pool-id", str(listening["pool_id"]), "--name", f"v{i + 1}", "--data-dir", str(work / f"v{i + 1}"),
                        "--threads", str(args.threads), "--memory-bytes", str(caps[i]),
                        "--delay-ms", str(scenario.rtt_ms / 2), "--loss", str(scenario.loss), "--rto-ms", str(scenario.rto_ms),
                        "--seed", str(args.seed + i), "--peer-port", str(PEER_PORT), "--peer-proxy-port", str(PEER_PROXY_PORT),
                    ]),
                    cwd=ROOT, env=env, stdout=open(logs / f"{scenario.name}-v{i + 1}.log", "w"),  # noqa: SIM115
                    stderr=subprocess.STDOUT, text=True, start_new_session=True,
                ))
            ready = events.wait_for("ready", args.ready_timeout)
            print(f"  [{scenario.name}] ready: {ready['split']}, link rtt ms {ready['link_rtt_ms']}", flush=True)
            result = events.wait_for("result", args.run_timeout)
        finally:
            stop(procs)
    shutil.rmtree(work, ignore_errors=True)
    return result


def summarize(result: dict[str, object], links: str) -> dict[str, object]:
    """The median speed and time to first token of the timed answers over ``links``, and their hand-offs."""
    runs = [r for r in result["runs"] if r["links"] == links]  # type: ignore[union-attr, index]
    rates = [float(r["decode_tokens_per_s"]) for r in runs]
    wire = result["wire_bytes_per_token"][links]  # type: ignore[index]
    return {
        "decode_tokens_per_s": statistics.median(rates),
        "decode_tokens_per_s_rounds": rates,
        "ttft_s": statistics.median(float(r["ttft_s"]) for r in runs),
        "handed_off_steps": [r["handed_off_steps"] for r in runs],
        "steps": [r["steps"] for r in runs],
        # direct: every stage but the last handed every step on; relay: none did
        "handed_off_as_expected": all(
            r["fully_handed_off"] if links == "direct" else r["handed_off_steps"] == 0 for r in runs
        ),
        "coordinator_wire_bytes_per_token": sum(wire["sent"]) + sum(wire["received"]),
        "critical_wire_bytes_per_token": critical_bytes_per_token(wire["sent"], wire["received"], links),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                        help="comma-separated names from the scenario table; the first must add no latency")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for a pool to load over the links")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds for the timed rounds of one scenario")
    parser.add_argument("--direct-warmups", type=int, default=6,
                        help="direct answers tried before timing until every stage hands off (volunteers dial each other)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "wan.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_wan.py builds network namespaces and needs root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` (iproute2) is missing")
    table = {s.name: s for s in SCENARIOS}
    chosen = [table[name] for name in args.scenarios.split(",") if name]
    if not chosen or chosen[0].rtt_ms or chosen[0].rate_mbit or chosen[0].loss:
        raise SystemExit("the first scenario must add no latency, loss or shaping: it measures the compute time")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` blocks

    from cli.bench import machine_info

    tag = os.getpid() % 10000
    logs = Path(tempfile.mkdtemp(prefix="butterfly-wan-logs-"))
    print(f"logs in {logs}", flush=True)
    measured: list[tuple[Scenario, dict[str, object]]] = []
    for scenario in chosen:
        print(f"scenario {scenario.name}: rtt +{scenario.rtt_ms} ms, loss {scenario.loss}, rate {scenario.rate_mbit} Mbit/s",
              flush=True)
        result = run_scenario(scenario, args, tag, logs)
        measured.append((scenario, result))
        for links in LINKS:
            rates = [round(float(r["decode_tokens_per_s"]), 2) for r in result["runs"] if r["links"] == links]  # type: ignore[union-attr, index]
            print(f"  [{scenario.name}] {links}: {statistics.median(rates):.2f} tok/s (rounds {rates})", flush=True)
        print(f"  [{scenario.name}] tokens identical: {result['tokens_identical']}", flush=True)
    # The compute time: the fastest answer of the no-latency scenario, either way, so that the
    # bounds stay below the measurements when other work on the machine slows some answers.
    compute_s = 1.0 / max(float(r["decode_tokens_per_s"]) for r in measured[0][1]["runs"])  # type: ignore[union-attr, index]
    stages = args.volunteers
    rows = []
    for scenario, result in measured:
        row: dict[str, object] = {
            "scenario": scenario.name,
            "rtt_ms_added": scenario.rtt_ms,
            "loss": scenario.loss,
            "rate_mbit": scenario.rate_mbit,
            "split": result["split"],
            "link_rtt_ms": result["link_rtt_ms"],
            "volunteer_compute_ms_per_step": result["volunteer_compute_ms_per_step"],
            "direct_warmup_answers": result["direct_warmup_answers"],
            "tokens_identical": result["tokens_identical"],
            "wire_bytes_per_token": result["wire_bytes_per_token"],
        }
        for links in LINKS:
            m = summarize(result, links)
            bound = lower_bound_step_s(compute_s, stages, scenario, links)
            bound_bytes = lower_bound_step_s(compute_s, stages, scenario, links,
                                             wire_bytes_per_token=float(m["critical_wire_bytes_per_token"]))
            rate = float(m["decode_tokens_per_s"])
            row[links] = {
                **m,
                "one_way_legs": one_way_legs(stages, links),
                "lower_bound_step_ms": bound * 1000,
                "lower_bound_tokens_per_s": 1 / bound,
                "measured_vs_bound": efficiency(rate, bound),
                "lower_bound_with_bytes_step_ms": bound_bytes * 1000,
                "measured_vs_bound_with_bytes": efficiency(rate, bound_bytes),
            }
        row["direct_vs_relay"] = row["direct"]["decode_tokens_per_s"] / row["relay"]["decode_tokens_per_s"]  # type: ignore[index]
        rows.append(row)
    report = {
        "benchmark": "decode over emulated WAN links (namespaces, mDNS, TLS websockets, delaying proxies, tbf), "
                     "direct links between volunteers vs relay through the coordinator, alternating in one pool",
        "machine": machine_info(),
        "model": args.model,
        "volunteers": args.volunteers,
        "threads_per_volunteer": args.threads,
        "new_tokens": args.tokens,
        "rounds": args.rounds,
        "compute_step_ms": compute_s * 1000,
        "one_way_legs_per_token": {links: one_way_legs(stages, links) for links in LINKS},
        "bound": "compute_step_ms (the fastest baseline answer, either way) + one_way_legs × added RTT / 2 (relay: 2 per stage, "
                 "direct: stages + 1); the 'with_bytes' bound adds the coordinator-link bytes on the token's path at the "
                 "link rate (relay: all of them; direct: the token to the first stage and the last stage's answer)",
        "loss_model": "a lost segment holds its chunk (and the stream behind it) for one RTT when >= 3 segments follow "
                      "it in the chunk (fast retransmit), else for the 200 ms RTO: the effect of loss on TCP, emulated "
                      "because netem and iptables are not available",
        "scenarios": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
