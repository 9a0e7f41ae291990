"""``butterfly bench``: our pipeline side by side with single-process Hugging Face ``generate``.

One command, one run, one machine: a coordinator in this process and volunteer processes
on loopback serve the model while the same weights, dtype, prompt and thread count run
through ``transformers`` in this process, round for round (the two alternate, so drift on
a busy machine hits both). Our side runs twice per round on the same pool: with direct
links (stages hand hidden states to each other, the product default) and with the
coordinator relaying every hop. Measured: decode tokens/s and time to first token of all
three, per-hop overhead both ways (against the reference, and as the slope over runs with
1, 2, … stages),
prefill throughput for long prompts, a per-step breakdown (each stage's compute and
overhead, the coordinator's sampling), aggregate tokens/s of concurrent sessions, and
the coordinator's wire bytes per token both ways (per wire codec where the coordinator
offers a choice) with the count of steps handed off directly. Writes
``bench.json`` and PNG charts to ``--out``.

The stage count is forced with memory caps: volunteer ``i`` is offered just the memory
its share of an even split needs, so no plan with fewer stages fits. The arithmetic
lives in :mod:`cli.bench_report`; this module measures and draws.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.bench_report import (
    DIRECT_HOPS_PER_STAGE,
    Run,
    breakdown,
    breakdown_direct,
    compare_runs,
    concurrency_point,
    fit_hop_overhead,
    plot_specs,
    prefill_point,
    summarize,
    table,
    wire_per_stage,
)
from core.errors import ConfigError, PoolUnavailable
from core.types import LayerRange, ModelSpec

PROMPT = "Write a long, detailed story about a lighthouse keeper and a storm."
READY_TIMEOUT_S = 300.0
CODECS = ("auto", "model", "float16", "bfloat16", "int8")
PROFILE_STEPS = 24
CONCURRENCY_TOKENS = 32


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """The options of ``butterfly bench``."""
    p.add_argument("--model", default="default", help="a .gguf file, a Hugging Face model folder, or 'default'")
    p.add_argument("--stages", type=int, default=3, help="volunteer processes in the main run (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the reference and of each volunteer (default: all cores)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--tokens", type=int, default=None, help="greedy tokens per timed answer (default 64; 16 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="alternated rounds of each side (default 3; 1 with --quick)")
    p.add_argument("--prompt", default=PROMPT, help="the prompt (a user message unless --raw)")
    p.add_argument("--raw", action="store_true", help="send the prompt as-is, without the chat template")
    p.add_argument("--prefill", type=_int_list, default=None, help="prompt lengths for prefill throughput (default 128,512,1024)")
    p.add_argument("--concurrency", type=_int_list, default=None, help="concurrent sessions to time (default 1,2,4,8,16)")
    p.add_argument("--sweep", type=_int_list, default=None,
                   help="stage counts for the per-hop fit (default 1..--stages; an empty string skips the sweep)")
    p.add_argument("--out", type=Path, default=Path("butterfly-bench"), help="folder for bench.json and the charts")
    p.add_argument("--quick", action="store_true", help="a short run: one round, few tokens, small sweeps, no codec sweep")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a coordinator setting for every pool of the run, e.g. verify_share=0 (repeatable)")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The resolved settings of one ``butterfly bench`` run."""

    model: str
    stages: int
    threads: int
    dtype: str
    tokens: int
    rounds: int
    prompt: str
    raw: bool
    prefill: tuple[int, ...]
    concurrency: tuple[int, ...]
    sweep: tuple[int, ...]
    out: Path
    quick: bool
    codecs: bool
    settings: tuple[tuple[str, object], ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        """Apply the defaults (and the ``--quick`` ones) and check the values."""
        quick = bool(args.quick)
        stages = int(args.stages)
        if stages < 1:
            raise ConfigError(f"--stages must be at least 1, got {stages}")
        tokens = args.tokens if args.tokens is not None else (16 if quick else 64)
        rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
        if tokens < 2 or rounds < 1 or args.threads < 1:
            raise ConfigError("--tokens must be at least 2, --rounds and --threads at least 1")
        sweep = args.sweep if args.sweep is not None else ((1, stages) if quick else tuple(range(1, stages + 1)))
        if any(s < 1 for s in sweep):
            raise ConfigError(f"--sweep stage counts must be at least 1, got {sweep}")
        return cls(
            model=args.model, stages=stages, threads=int(args.threads), dtype=args.dtype, tokens=tokens, rounds=rounds,
            prompt=args.prompt, raw=bool(args.raw),
            prefill=args.prefill if args.prefill is not None else ((32, 128) if quick else (128, 512, 1024)),
            concurrency=args.concurrency if args.concurrency is not None else ((1, 2, 4) if quick else (1, 2, 4, 8, 16)),
            sweep=tuple(sorted(set(sweep) | {stages})) if sweep else (), out=args.out, quick=quick, codecs=not quick,
            settings=tuple(coordinator_settings(getattr(args, "settings", []) or []).items()),
        )


def coordinator_settings(pairs: Sequence[str]) -> dict[str, object]:
    """``KEY=VALUE`` texts as coordinator settings, each converted to the type of the setting's default.

    Raises :class:`ConfigError` for a malformed pair, an unknown setting or a value of the wrong type.
    """
    from server.config import CoordinatorConfig

    fields = {f.name: f for f in dataclasses.fields(CoordinatorConfig)}
    settings: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields or key in ("data_dir", "port", "host", "min_volunteers"):
            raise ConfigError(f"cannot set {pair!r}", hint="use KEY=VALUE with a coordinator setting, e.g. verify_share=0")
        default = fields[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: object = text.lower() in ("true", "1")
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            else:
                value = None if text.lower() == "none" else text
        except ValueError:
            raise ConfigError(f"{key} cannot be {text!r}", hint=f"give a value like {default!r}") from None
        settings[key] = value
    return settings


# --------------------------------------------------------------------------- forcing the stage count


def even_split(num_layers: int, stages: int) -> list[LayerRange]:
    """``stages`` contiguous ranges covering ``num_layers``, sizes differing by at most one (larger first)."""
    if not 1 <= stages <= num_layers:
        raise ConfigError(f"cannot split {num_layers} layers into {stages} stages", hint=f"use 1 to {num_layers} stages")
    base, extra = divmod(num_layers, stages)
    ranges, start = [], 0
    for i in range(stages):
        end = start + base + (1 if i < extra else 0)
        ranges.append(LayerRange(start, end, num_layers))
        start = end
    return ranges


def memory_caps(spec: ModelSpec, split: Sequence[LayerRange]) -> list[int]:
    """Memory to offer per volunteer so the planner needs all of them: each range's need plus half a layer.

    With these caps no volunteer can take a layer more than its range, in any role, so
    no plan with fewer stages fits; half a layer of slack absorbs the small difference
    between the embedding and the head.
    """
    per_layer = spec.layer_bytes + spec.kv_bytes_per_token_layer * spec.context_tokens * spec.concurrency
    return [spec.stage_bytes(r) + per_layer // 2 for r in split]


# --------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, object]:
    """CPU model, cores, RAM, OS, Python and torch versions, date and load: what a figure was measured on."""
    import psutil
    import torch

    from app.hardware.probe import cpu_model

    cpu = cpu_model(platform.system())
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
    }


# --------------------------------------------------------------------------- the reference


class Reference:
    """The model in this process through ``transformers`` ``generate``: the yardstick."""

    def __init__(self, model_dir: Path, *, dtype: str, threads: int) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise ConfigError(
                "`butterfly bench` compares against Hugging Face transformers, which is not installed",
                hint="install the development extras: pip install 'butterfly-pool[dev]'",
            ) from exc
        torch.set_num_threads(threads)
        self._torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def generate(self, prompt_ids: Sequence[int], tokens: int) -> tuple[Run, list[int]]:
        """Greedy ``tokens`` new tokens (end of sequence ignored); the timings and the new ids."""
        torch = self._torch
        from transformers import StoppingCriteria

        class Stamps(StoppingCriteria):
            def __init__(self) -> None:
                self.times: list[float] = []

            def __call__(self, input_ids, scores, **kwargs):  # noqa: ANN001, ANN003, ANN204
                self.times.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool)

        ids = torch.tensor([list(prompt_ids)])
        stamps = Stamps()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                do_sample=False, pad_token_id=0, stopping_criteria=[stamps],
            )
        t = stamps.times
        run = Run(
            ttft_s=t[0] - start,
            decode_tokens_per_s=(len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0,
            total_s=t[-1] - start,
            new_tokens=len(t),
        )
        return run, [int(i) for i in out[0, len(prompt_ids):]]


# --------------------------------------------------------------------------- our pool


class LoopbackPool:
    """A coordinator in this process and one volunteer process per stage of a forced split, on 127.0.0.1."""

    def __init__(self, model: Any, *, stages: int, threads: int, dtype: str, workdir: Path,
                 max_sessions: int = 8, overrides: dict[str, object] | None = None) -> None:
        self.model = model
        self.stages = stages
        self.threads = threads
        self.dtype = dtype
        self.workdir = workdir
        self.max_sessions = max_sessions
        self.overrides = overrides or {}
        self.coordinator: Any = None
        self.procs: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> LoopbackPool:
        import torch

        from cli.main import self_command
        from server.config import CoordinatorConfig
        from server.coordinator import Coordinator

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = CoordinatorConfig(
            data_dir=self.workdir / "coordinator", port=0, min_volunteers=self.stages, settle_s=0.3, dtype=self.dtype,
            max_sessions=self.max_sessions, mdns=False, **self.overrides,  # type: ignore[arg-type]
        )
        spec = self.model.config.model_spec(
            name=self.model.manifest.name, dtype=getattr(torch, self.dtype), context_tokens=config.context_tokens,
            concurrency=config.max_sessions,
        )
        caps = memory_caps(spec, even_split(spec.num_layers, self.stages)) if self.stages > 1 else [None]
        self.coordinator = Coordinator(config, self.model)
        await self.coordinator.start()
        invite = self.coordinator.invite(ttl_s=3600)
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        for i, cap in enumerate(caps):
            name = f"v{i + 1}"
            cmd = self_command("volunteer", "--invite", invite, "--name", name, "--data-dir", str(self.workdir / name),
                               "--threads", str(self.threads))
            if cap is not None:
                cmd += ["--memory-gb", f"{cap / 2**30:.9f}"]
            with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own handle
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        try:
            await self._wait_ready()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _wait_ready(self) -> None:
        pool = self.coordinator.pool
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (pool.pipelines and len(pool.pipelines[0].stages) == self.stages):
            if pool.pipelines:
                raise PoolUnavailable(
                    f"the pool planned {len(pool.pipelines[0].stages)} stages instead of {self.stages}",
                    hint="the memory caps did not force the split; try another --stages",
                )
            if time.monotonic() > deadline:
                raise PoolUnavailable(f"the pool was not ready after {READY_TIMEOUT_S:.0f} s: {pool.last_error}")
            if any(p.poll() is not None for p in self.procs):
                raise PoolUnavailable("a volunteer process exited early", hint=f"see the logs in {self.workdir}")
            await asyncio.sleep(0.1)

    async def __aexit__(self, *exc: object) -> None:
        from cli.demo import stop_process

        for p in self.procs:
            stop_process(p)
        for p in self.procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.wait), 20)
            except TimeoutError:
                p.kill()
                await asyncio.to_thread(p.wait)
        if self.coordinator is not None:
            await self.coordinator.stop()

    @property
    def probation_steps(self) -> int:
        """Steps of each volunteer the coordinator re-checks before it trusts it (0 without result checks)."""
        return int(getattr(self.coordinator.config, "probation_steps", 0) or 0)

    @property
    def pipeline(self) -> Any:
        return self.coordinator.pool.pipelines[0]

    def settings(self) -> dict[str, object]:
        """The coordinator settings that bear on speed (those this coordinator has)."""
        config = self.coordinator.config
        names = ("dtype", "wire_codec", "wire_logits", "verify_share", "probation_steps", "insecure_loopback", "max_sessions")
        return {n: getattr(config, n) for n in names if hasattr(config, n)}

    def event_counts(self) -> dict[str, int]:
        """How many pool events of each kind (plans, re-plans, strikes, failures…) happened so far."""
        counts: dict[str, int] = {}
        for entry in self.coordinator.pool.events.entries:
            counts[str(entry["kind"])] = counts.get(str(entry["kind"]), 0) + 1
        return counts

    def split(self) -> list[list[object]]:
        """``[volunteer, start, end]`` per stage of the live pipeline."""
        return [[s.link.name, s.start, s.end] for s in self.pipeline.stages]

    def wire_bytes(self) -> list[tuple[int, int]]:
        """Bytes (to the volunteer, from the volunteer) so far on each stage's link."""
        return [(s.link.channel.bytes_sent, s.link.channel.bytes_received) for s in self.pipeline.stages]

    def handed_off_steps(self) -> int:
        """Steps so far whose output a stage of the live pipeline handed straight to the next stage."""
        return sum(int(getattr(s.link, "handed_off_steps", 0)) for s in self.pipeline.stages)

    async def generate(self, prompt_ids: Sequence[int], tokens: int, *,
                       direct: bool | None = None) -> tuple[Run, list[int]]:
        """Greedy ``tokens`` new tokens through the pool (end of sequence ignored); timings and ids.

        ``direct`` picks direct links (True) or the coordinator's relay (False) for this
        request; None leaves it to the pool's ``direct_links`` setting.
        """
        from server.generation import generate
        from server.sampling import SamplingParams

        start = time.perf_counter()
        ids: list[int] = []
        usage = None
        params = SamplingParams(max_tokens=tokens, ignore_eos=True)
        async for event in generate(self.coordinator.pool, self.coordinator.tokenizer, list(prompt_ids), params,
                                    direct=direct):
            if event.token_id >= 0:
                ids.append(event.token_id)
            usage = event.usage or usage
        if usage is None:
            raise PoolUnavailable("the pool finished an answer without usage figures")
        run = Run(usage.time_to_first_token_s, usage.decode_tokens_per_s, time.perf_counter() - start, usage.completion_tokens)
        return run, ids

    async def profile(self, prompt_ids: Sequence[int], steps: int, *, direct: bool = False) -> list[dict[str, object]]:
        """Drive ``steps`` greedy decode steps by hand, timing each stage and the sampler (no result checks).

        Relayed (``direct`` False): stage after stage through the coordinator, each stage's
        ``round_trip_s`` from its send to its answer. Direct: every stage gets its step at
        once, as in a direct-link request, and each stage's ``arrival_s`` is when its copy
        of the output reached the coordinator, from the step's start. The last stage
        returns the top logits a greedy request asks for, as in a real request.
        """
        import uuid

        import torch

        from server.sampling import Sampler, SamplingParams, logits_needed

        pool = self.coordinator.pool
        pipeline = await pool.acquire_pipeline()
        session = uuid.uuid4().hex
        params = SamplingParams(max_tokens=steps)
        sampler = Sampler(params, seed=0)
        top = logits_needed(params)
        x = torch.tensor(list(prompt_ids), dtype=torch.int64)
        pos, records = 0, []
        try:
            for step in range(steps + 1):
                started = time.perf_counter()
                if direct and len(pipeline.stages) > 1:
                    x, stages = await self._direct_step(pipeline.stages, session, pos, x, top, started)
                else:
                    stages = []
                    for i, stage in enumerate(pipeline.stages):
                        result = await stage.link.forward(
                            session_id=session, assignment_id=stage.assignment_id, start_pos=pos, x=x,
                            logits_top=top if i == len(pipeline.stages) - 1 else 0,
                        )
                        stages.append({"compute_s": result.compute_s, "round_trip_s": result.round_trip_s,
                                       "arrival_s": time.perf_counter() - started, "handed_off": False})
                        x = result.y
                sampled = time.perf_counter()
                token = sampler.sample(x)
                ended = time.perf_counter()
                if step > 0:  # step 0 is the prompt's prefill
                    records.append({"total_s": ended - started, "sample_s": ended - sampled, "stages": stages})
                pos += len(prompt_ids) if step == 0 else 1
                x = torch.tensor([token], dtype=torch.int64)
        finally:
            pool.release_pipeline(pipeline)
            for stage in pipeline.stages:
                await stage.link.end_session(session)
        return records

    @staticmethod
    async def _direct_step(stages: Sequence[Any], session: str, pos: int, x: Any, top: int,
                           started: float) -> tuple[Any, list[dict[str, object]]]:
        """One step sent to every stage at once (direct links), as a direct-link request sends it."""
        last = len(stages) - 1
        opened: list[int | None] = [
            s.link.open_step(assignment_id=s.assignment_id, tokens=int(x.shape[0]), logits_top=top if i == last else 0)
            for i, s in enumerate(stages)
        ]
        records: list[dict[str, object]] = []
        try:
            for i, s in enumerate(stages):
                await s.link.send_step(
                    opened[i], session_id=session, assignment_id=s.assignment_id, start_pos=pos,
                    x=x if i == 0 else None, from_node=None if i == 0 else stages[i - 1].link.node_id,
                    next_node=stages[i + 1].link.node_id if i < last else None,
                    next_step=opened[i + 1] if i < last else 0, logits_top=top if i == last else 0,
                )
            handed_off = False
            for i, s in enumerate(stages):
                step_id, opened[i] = opened[i], None
                result = await s.link.wait_step(step_id, refeed=x if handed_off else None)
                records.append({"compute_s": result.compute_s, "round_trip_s": result.round_trip_s,
                                "arrival_s": time.perf_counter() - started, "handed_off": result.handed_off})
                handed_off = result.handed_off
                if i < last and not handed_off:
                    await stages[i + 1].link.feed(opened[i + 1], result.y)
                x = result.y
        finally:
            for s, step_id in zip(stages, opened):
                if step_id is not None:
                    s.link.abandon(step_id)
        return x, records


# --------------------------------------------------------------------------- measuring


def _prompt_ids(tokenizer: Any, options: BenchOptions) -> list[int]:
    if options.raw or not tokenizer.has_chat_template:
        return tokenizer.encode(options.prompt)
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": options.prompt}]))


def _long_prompt(base: Sequence[int], length: int) -> list[int]:
    """The base prompt repeated to exactly ``length`` tokens."""
    reps = -(-length // max(1, len(base)))
    return (list(base) * reps)[:length]


async def _alternate(pool: LoopbackPool, reference: Reference, prompt_ids: list[int], tokens: int, rounds: int,
                     say: Any) -> dict[str, object]:
    """Warm-ups, then ``rounds`` × (ours both ways, reference); all runs and whether the tokens agree.

    Our two ways swap order every round (direct first in odd rounds, relay first in even
    ones), so neither always follows the reference.

    Our warm-up runs every volunteer past its probation (where the coordinator re-checks
    each of its steps) and gives the volunteers time to dial each other, so the timed
    rounds see the steady state. ``handed_off`` counts, per way, the steps the stages
    handed straight to the next stage during that way's timed rounds.
    """
    await asyncio.to_thread(reference.generate, prompt_ids, min(tokens, 8))
    await pool.generate(prompt_ids, max(min(tokens, 8), pool.probation_steps + 2), direct=True)
    await asyncio.sleep(1.5)  # a fresh pool's first steps relay while its volunteers dial each other
    await pool.generate(prompt_ids, min(tokens, 8), direct=True)
    await pool.generate(prompt_ids, min(tokens, 8), direct=False)
    runs: dict[str, list[Run]] = {"direct": [], "relay": [], "reference": []}
    handed_off = {"direct": 0, "relay": 0}
    same = {"direct": True, "relay": True}
    last_ids: list[int] = []
    for r in range(rounds):
        ids: dict[str, list[int]] = {}
        ways = (("direct", True), ("relay", False))
        for way, flag in ways if r % 2 == 0 else ways[::-1]:
            before = pool.handed_off_steps()
            run, ids[way] = await pool.generate(prompt_ids, tokens, direct=flag)
            handed_off[way] += pool.handed_off_steps() - before
            runs[way].append(run)
        ref_run, ref_ids = await asyncio.to_thread(reference.generate, prompt_ids, tokens)
        runs["reference"].append(ref_run)
        for way in same:
            same[way] = same[way] and ids[way] == ref_ids
        last_ids = ids["direct"]
        say(f"  round {r + 1}/{rounds}: direct {runs['direct'][-1].decode_tokens_per_s:.1f} tok/s, "
            f"relay {runs['relay'][-1].decode_tokens_per_s:.1f} tok/s, reference {ref_run.decode_tokens_per_s:.1f} tok/s "
            f"({pool.stages} stages)")
    return {**runs, "same_tokens": same, "tokens": last_ids, "handed_off_steps": handed_off}


async def _wire(pool: LoopbackPool, prompt_ids: list[int], tokens: int, *, direct: bool | None = None,
                attempts: int = 3) -> dict[str, object]:
    """The coordinator's bytes per decoded token on each stage's link, prefill and per-request messages cancelled out.

    ``direct`` as for :meth:`LoopbackPool.generate`; ``handed_off_steps`` counts the steps
    of the two answers a stage handed straight to the next. A re-plan in the middle (a
    volunteer judged slower than planned on a busy machine) moves weights over the
    links; such an attempt is discarded and measured again.
    """
    for attempt in range(1, attempts + 1):
        pipeline, replans = pool.pipeline, pool.coordinator.pool.replans
        handed = pool.handed_off_steps()
        before = pool.wire_bytes()
        await pool.generate(prompt_ids, 1, direct=direct)
        middle = pool.wire_bytes()
        await pool.generate(prompt_ids, tokens, direct=direct)
        if pool.pipeline is not pipeline or pool.coordinator.pool.replans != replans:
            continue
        after = pool.wire_bytes()
        return {**wire_per_stage(before, middle, after, tokens), "attempts": attempt,
                "handed_off_steps": pool.handed_off_steps() - handed, "steps": tokens + 1}
    return {"bytes_per_token": None, "note": f"the pool re-planned during each of {attempts} attempts"}


async def _concurrency(pool: LoopbackPool, prompt_ids: list[int], levels: Sequence[int], tokens: int,
                       say: Any) -> list[dict[str, float]]:
    points = []
    for sessions in levels:
        started = time.perf_counter()
        results = await asyncio.gather(*(pool.generate(prompt_ids, tokens) for _ in range(sessions)))
        wall = time.perf_counter() - started
        points.append(concurrency_point(sessions, [run.new_tokens for run, _ in results], wall))
        say(f"  {sessions} sessions: {points[-1]['aggregate_tokens_per_s']:.1f} tok/s together")
    return points


def _runs(runs: Sequence[Run]) -> list[dict[str, float]]:
    return [dataclasses.asdict(r) for r in runs]


def _codec_support() -> bool:
    from server.config import CoordinatorConfig

    return "wire_codec" in {f.name for f in dataclasses.fields(CoordinatorConfig)}


async def measure(options: BenchOptions, say: Any = print) -> dict[str, object]:
    """Run every measurement of ``butterfly bench`` and return the report (JSON-ready)."""
    from cli.commands import load_model

    model = load_model(options.model)
    config = model.config
    if options.stages > config.num_layers or any(s > config.num_layers for s in options.sweep):
        raise ConfigError(f"the model has {config.num_layers} layers; cannot run more stages than that")
    tokenizer = model.tokenizer()
    prompt_ids = _prompt_ids(tokenizer, options)
    machine_before = machine_info()
    say(f"Loading the reference ({model.manifest.name}, {options.dtype}, {options.threads} threads)…")
    reference = Reference(model.path, dtype=options.dtype, threads=options.threads)
    workdir = Path(tempfile.mkdtemp(prefix="butterfly-bench-"))
    max_sessions = max([8, *options.concurrency])
    report: dict[str, object] = {}
    sweep: list[dict[str, object]] = []
    order = [options.stages] + [s for s in options.sweep if s != options.stages]
    for stages in order:
        say(f"Starting a pool of {stages} volunteer process(es)…")
        async with LoopbackPool(model, stages=stages, threads=options.threads, dtype=options.dtype,
                                workdir=workdir / f"s{stages}", max_sessions=max_sessions,
                                overrides=dict(options.settings)) as pool:
            alternated = await _alternate(pool, reference, prompt_ids, options.tokens, options.rounds, say)
            ours, relayed, refs = alternated["direct"], alternated["relay"], alternated["reference"]
            say(f"Profiling decode steps stage by stage ({stages} stages)…")
            steps = await pool.profile(prompt_ids, min(PROFILE_STEPS, options.tokens))
            direct_steps = await pool.profile(prompt_ids, min(PROFILE_STEPS, options.tokens), direct=True)
            generate_step_s = 1.0 / summarize([r.decode_tokens_per_s for r in ours]).median  # type: ignore[union-attr]
            relay_step_s = 1.0 / summarize([r.decode_tokens_per_s for r in relayed]).median  # type: ignore[union-attr]
            sweep.append({
                "stages": stages,
                "split": pool.split(),
                "ours_step_ms": generate_step_s * 1000.0,
                "ours_relay_step_ms": relay_step_s * 1000.0,
                "ours_bare_step_ms": breakdown(steps)["step_ms"],
                "ours_bare_direct_step_ms": breakdown_direct(direct_steps)["step_ms"],
                "reference_step_ms": 1000.0 / summarize([r.decode_tokens_per_s for r in refs]).median,  # type: ignore[union-attr]
            })
            if stages != options.stages:
                continue
            report["split"] = pool.split()
            report["coordinator_settings"] = pool.settings()
            same, handed = alternated["same_tokens"], alternated["handed_off_steps"]
            report["decode"] = {
                **compare_runs(ours, refs, stages=stages, direct=True),  # type: ignore[arg-type]
                "same_tokens_as_reference": same["direct"],  # type: ignore[index]
                "handed_off_steps": handed["direct"],  # type: ignore[index]
                "tokens": alternated["tokens"],
                "rounds": {"ours": _runs(ours), "reference": _runs(refs)},  # type: ignore[arg-type]
            }
            report["decode_relay"] = {
                **compare_runs(relayed, refs, stages=stages, direct=False),  # type: ignore[arg-type]
                "same_tokens_as_reference": same["relay"],  # type: ignore[index]
                "handed_off_steps": handed["relay"],  # type: ignore[index]
                "rounds": {"ours": _runs(relayed), "reference": _runs(refs)},  # type: ignore[arg-type]
                "note": "the same pool and rounds as `decode`, the coordinator relaying every hidden state",
            }
            report["breakdown"] = breakdown(steps, generate_step_s=relay_step_s)
            report["breakdown_direct"] = breakdown_direct(direct_steps, generate_step_s=generate_step_s)
            say("Prefill throughput…")
            report["prefill"], report["prefill_skipped"] = await _prefill(pool, reference, options, tokenizer, config)
            say("Wire bytes per token…")
            report["wire"] = await _wire(pool, prompt_ids, options.tokens, direct=True)
            report["wire_relay"] = await _wire(pool, prompt_ids, options.tokens, direct=False)
            report["pool_events"] = pool.event_counts()
            if options.concurrency:
                say("Concurrent sessions…")
                tokens = min(options.tokens, 8 if options.quick else CONCURRENCY_TOKENS)
                report["concurrency"] = {
                    "tokens_per_session": tokens,
                    "note": "aggregate = all sessions' tokens over the wall time from the first request to the last answer",
                    "points": await _concurrency(pool, prompt_ids, options.concurrency, tokens, say),
                }
    report["hops"] = {"sweep": sweep}
    if len({p["stages"] for p in sweep}) > 1:
        hops_report: dict[str, object] = report["hops"]  # type: ignore[assignment]
        hops_report["fit"] = fit_hop_overhead(
            [(int(p["stages"]), float(p["ours_step_ms"]) / 1000.0) for p in sweep],  # type: ignore[arg-type]
            hops_per_stage=DIRECT_HOPS_PER_STAGE,
        ).as_dict()
        hops_report["fit_relay"] = fit_hop_overhead(
            [(int(p["stages"]), float(p["ours_relay_step_ms"]) / 1000.0) for p in sweep]  # type: ignore[arg-type]
        ).as_dict()
        hops_report["fit_bare_steps"] = fit_hop_overhead(
            [(int(p["stages"]), float(p["ours_bare_step_ms"]) / 1000.0) for p in sweep]  # type: ignore[arg-type]
        ).as_dict()
        hops_report["fit_bare_steps_direct"] = fit_hop_overhead(
            [(int(p["stages"]), float(p["ours_bare_direct_step_ms"]) / 1000.0) for p in sweep],  # type: ignore[arg-type]
            hops_per_stage=DIRECT_HOPS_PER_STAGE,
        ).as_dict()
        hops_report["note"] = (
            "fit: full requests with direct links (result checks, trace, detokenizing included; one hop per "
            "added stage); fit_relay: the same with the coordinator relaying (two hops per added stage); "
            "fit_bare_steps: the same pools driven step by step, stage after stage through the coordinator, "
            "which isolates what a stage's round trip costs; fit_bare_steps_direct: the same by hand with direct links"
        )
    report["codecs"] = await _codecs(model, options, prompt_ids, workdir, say)
    shutil.rmtree(workdir, ignore_errors=True)  # kept (with the volunteers' logs) only when a run fails
    return {
        "benchmark": "butterfly bench: pipeline on loopback vs single-process transformers generate",
        "machine": machine_before,
        "load_average_after": machine_info()["load_average"],
        "model": {"name": model.manifest.name, "layers": config.num_layers, "hidden_size": config.hidden_size,
                  "vocab_size": config.vocab_size},
        "dtype": options.dtype,
        "threads_per_process": options.threads,
        "prompt_tokens": len(prompt_ids),
        "prompt_ids": prompt_ids,
        "prompt": options.prompt,
        "chat_template": not options.raw and tokenizer.has_chat_template,
        "new_tokens": options.tokens,
        "rounds": options.rounds,
        "stages": options.stages,
        "quick": options.quick,
        **report,
    }


async def _prefill(pool: LoopbackPool, reference: Reference, options: BenchOptions, tokenizer: Any,
                   config: Any) -> tuple[list[dict[str, float]], list[int]]:
    limit = min(pool.coordinator.config.context_tokens, reference.max_positions or config.max_position_embeddings) - 1
    base = tokenizer.encode(options.prompt) or [0]
    points, skipped = [], []
    for length in options.prefill:
        if length > limit:
            skipped.append(length)
            continue
        ids = _long_prompt(base, length)
        ours, refs = [], []
        for _ in range(max(1, min(options.rounds, 2))):
            run, _ = await asyncio.to_thread(reference.generate, ids, 1)
            refs.append(run.ttft_s)
            run, _ = await pool.generate(ids, 1)
            ours.append(run.ttft_s)
        points.append(prefill_point(length, ours, refs))
    return points, skipped


async def _codecs(model: Any, options: BenchOptions, prompt_ids: list[int], workdir: Path, say: Any) -> dict[str, object]:
    if not _codec_support():
        return {"supported": False, "note": "this coordinator has no wire codec setting; hidden states travel in the compute dtype"}
    if not options.codecs:
        return {"supported": True, "note": "skipped with --quick"}
    from server.config import CoordinatorConfig

    variants: list[tuple[str, dict[str, object]]] = [(codec, {"wire_codec": codec}) for codec in CODECS]
    if "wire_logits" in {f.name for f in dataclasses.fields(CoordinatorConfig)}:
        variants.append(("auto, logits float16", {"wire_codec": "auto", "wire_logits": "float16"}))
    results: dict[str, object] = {}
    for name, setting in variants:
        say(f"Wire codec {name}…")
        try:
            async with LoopbackPool(model, stages=options.stages, threads=options.threads, dtype=options.dtype,
                                    workdir=workdir / f"codec-{len(results)}",
                                    overrides={**dict(options.settings), **setting}) as pool:
                await pool.generate(prompt_ids, min(options.tokens, 8), direct=False)
                wire = await _wire(pool, prompt_ids, options.tokens, direct=False)
                run, _ = await pool.generate(prompt_ids, options.tokens, direct=False)
                results[name] = {**wire, "links": "relay", "decode_tokens_per_s": run.decode_tokens_per_s,
                                 "pool_events": pool.event_counts()}
        except ConfigError as exc:
            results[name] = {"error": exc.message}
    return {"supported": True, "links": "relay", "results": results,
            "note": "each codec on a fresh pool with the coordinator relaying, so every hidden state crosses its links"}


# --------------------------------------------------------------------------- output


def write_plots(report: dict[str, object], out: Path) -> list[Path]:
    """Draw every chart of ``report`` as ``bench_<name>.png`` in ``out`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for spec in plot_specs(report):
        fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=100)
        if spec.kind == "bar":
            values = spec.series[0].values
            bars = ax.bar([str(x) for x in spec.x], values, color=["#8c8c8c", "#d9822b", "#3b75af"][: len(values)])
            ax.bar_label(bars, fmt="%.1f")
            ax.margins(y=0.15)
        else:
            for series in spec.series:
                ax.plot(list(spec.x), list(series.values), marker="o", label=series.label)
            ax.set_xticks(list(spec.x))
            ax.legend(fontsize=8)
        ax.set_title(spec.title)
        ax.set_xlabel(spec.xlabel)
        ax.set_ylabel(spec.ylabel)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"bench_{spec.name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def run_bench(args: argparse.Namespace) -> int:
    """``butterfly bench``: measure, write ``bench.json`` and the charts, print the headline table."""
    options = BenchOptions.from_args(args)
    options.out.mkdir(parents=True, exist_ok=True)
    report = asyncio.run(measure(options, say=lambda s: print(s, flush=True)))
    path = options.out / "bench.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    plots = write_plots(report, options.out)
    print()
    print(table(report))
    print(f"\nWrote {path} and {len(plots)} chart(s) to {options.out}")
    return 0


__all__ = [
    "BenchOptions",
    "LoopbackPool",
    "Reference",
    "add_bench_args",
    "even_split",
    "machine_info",
    "measure",
    "memory_caps",
    "run_bench",
    "write_plots",
]
