"""The arithmetic of ``butterfly bench``: summaries, ratios, per-hop overhead, tables, plot data.

Everything here is pure: measurements in, plain numbers and JSON-ready dicts out. The
command (:mod:`cli.bench`) does the measuring and the drawing; keeping the arithmetic
apart lets it be tested with hand-made numbers and lets plots be redrawn from a saved
report.

Vocabulary: a *stage* is one volunteer's layer range. When the coordinator *relays* hidden
states, one token crosses ``2 × stages`` *hops* on its critical path (one message each way
per stage). With *direct* links the coordinator sends every stage its step at once and
each stage hands its output straight to the next, so the critical path is ``stages + 1``
hops (coordinator → first stage → … → last stage → coordinator).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from core.errors import ConfigError

HOPS_PER_STAGE = 2
"""Messages per stage per token when the coordinator relays hidden states: one out, one back."""

DIRECT_HOPS_PER_STAGE = 1
"""Critical-path messages one more stage adds when stages hand hidden states to each other."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Order statistics of repeated measurements of one quantity."""

    median: float
    mean: float
    minimum: float
    maximum: float
    stdev: float
    n: int

    @property
    def spread(self) -> float:
        """``(max - min) / median``: how far apart the rounds were (0 for one round)."""
        return (self.maximum - self.minimum) / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, float]:
        """The summary as JSON-ready numbers, with ``spread`` included."""
        return {**asdict(self), "spread": self.spread}


def summarize(values: Sequence[float]) -> Summary:
    """Median, mean, extremes and standard deviation of ``values`` (at least one, all finite)."""
    if not values:
        raise ConfigError("no measurements to summarize", hint="run at least one round")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"a measurement is not finite: {list(values)}", hint="a round failed; run the benchmark again")
    return Summary(
        median=statistics.median(values),
        mean=statistics.fmean(values),
        minimum=min(values),
        maximum=max(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        n=len(values),
    )


@dataclass(frozen=True, slots=True)
class Run:
    """One timed generation: ``new_tokens`` greedy tokens after a prompt.

    ``ttft_s`` runs from the call to the first token (prefill included);
    ``decode_tokens_per_s`` counts the tokens after the first over the time after it;
    ``total_s`` is the whole call.
    """

    ttft_s: float
    decode_tokens_per_s: float
    total_s: float
    new_tokens: int

    @property
    def step_s(self) -> float:
        """Seconds per decoded token."""
        return 1.0 / self.decode_tokens_per_s if self.decode_tokens_per_s > 0 else math.inf

    @property
    def end_to_end_tokens_per_s(self) -> float:
        """New tokens over the whole call, prefill included."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0


def ratio(ours: float, reference: float) -> float:
    """``ours / reference``; NaN when the reference is zero or not finite."""
    if not reference or not math.isfinite(reference):
        return math.nan
    return ours / reference


def hops(stages: int, *, direct: bool = False) -> int:
    """Messages on one token's critical path through ``stages`` stages: ``2 × stages`` relayed, ``stages + 1`` direct."""
    return stages + 1 if direct else HOPS_PER_STAGE * stages


def per_hop_vs_reference_ms(ours_step_s: float, reference_step_s: float, stages: int, *, direct: bool = False) -> float:
    """``(our step − reference step) / hops`` in milliseconds (hops as :func:`hops` counts them).

    This charges every difference between the two runtimes to the hops, so it is
    negative when our per-token compute is leaner than the reference's by more than
    the hops cost; :func:`fit_hop_overhead` isolates the hops.
    """
    if stages < 1:
        raise ConfigError(f"a pipeline has at least one stage, got {stages}")
    return (ours_step_s - reference_step_s) / hops(stages, direct=direct) * 1000.0


@dataclass(frozen=True, slots=True)
class HopFit:
    """A least-squares line ``step = intercept + per_stage × stages`` over runs of the same model.

    Every run computes the same layers, so the slope is what one more stage (its hops,
    ``hops_per_stage``: two relayed, one direct, and one more volunteer's fixed per-step
    cost) adds to a token.
    """

    per_stage_ms: float
    intercept_ms: float
    points: tuple[tuple[int, float], ...]
    hops_per_stage: int = HOPS_PER_STAGE

    @property
    def per_hop_ms(self) -> float:
        """The slope shared by the hops a stage adds."""
        return self.per_stage_ms / self.hops_per_stage

    def as_dict(self) -> dict[str, object]:
        """The fit as JSON-ready numbers."""
        return {
            "per_stage_ms": self.per_stage_ms,
            "per_hop_ms": self.per_hop_ms,
            "hops_per_stage": self.hops_per_stage,
            "intercept_ms": self.intercept_ms,
            "points": [{"stages": s, "step_ms": ms} for s, ms in self.points],
        }


def fit_hop_overhead(points: Sequence[tuple[int, float]], *, hops_per_stage: int = HOPS_PER_STAGE) -> HopFit:
    """Fit step time (seconds) against stage count; needs two distinct stage counts.

    ``hops_per_stage`` (2 relayed, :data:`DIRECT_HOPS_PER_STAGE` direct) divides the slope into ``per_hop_ms``.
    """
    if len({s for s, _ in points}) < 2:
        raise ConfigError(
            "the per-hop fit needs runs with at least two different stage counts",
            hint="pass --sweep with two or more stage counts, e.g. 1,2,3",
        )
    xs = [float(s) for s, _ in points]
    ys = [t * 1000.0 for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return HopFit(slope, my - slope * mx, tuple((s, t * 1000.0) for s, t in points), hops_per_stage)


def bytes_per_token(long_bytes: float, short_bytes: float, long_tokens: int, short_tokens: int) -> float:
    """Wire bytes per decoded token from two runs of the same prompt that differ only in length.

    The difference cancels the prompt's prefill frames and per-request messages.
    """
    if long_tokens <= short_tokens:
        raise ConfigError("the long run must generate more tokens than the short one")
    return (long_bytes - short_bytes) / (long_tokens - short_tokens)


def compare_runs(ours: Sequence[Run], reference: Sequence[Run], *, stages: int, direct: bool = False) -> dict[str, object]:
    """Decode speed, time to first token and end-to-end speed of two sets of rounds, with ratios.

    ``direct`` says how our hidden states travelled (``links``), which sets the hop count.
    """
    o_dec = summarize([r.decode_tokens_per_s for r in ours])
    r_dec = summarize([r.decode_tokens_per_s for r in reference])
    o_ttft = summarize([r.ttft_s for r in ours])
    r_ttft = summarize([r.ttft_s for r in reference])
    o_e2e = summarize([r.end_to_end_tokens_per_s for r in ours])
    r_e2e = summarize([r.end_to_end_tokens_per_s for r in reference])
    return {
        "decode_tokens_per_s": {"ours": o_dec.as_dict(), "reference": r_dec.as_dict(), "ratio": ratio(o_dec.median, r_dec.median)},
        "ttft_s": {"ours": o_ttft.as_dict(), "reference": r_ttft.as_dict(), "ratio": ratio(o_ttft.median, r_ttft.median)},
        "end_to_end_tokens_per_s": {"ours": o_e2e.as_dict(), "reference": r_e2e.as_dict(), "ratio": ratio(o_e2e.median, r_e2e.median)},
        "per_hop_vs_reference_ms": per_hop_vs_reference_ms(1.0 / o_dec.median, 1.0 / r_dec.median, stages, direct=direct),
        "hops_per_token": hops(stages, direct=direct),
        "links": "direct" if direct else "relay",
    }


def wire_per_stage(before: Sequence[tuple[int, int]], middle: Sequence[tuple[int, int]],
                   after: Sequence[tuple[int, int]], tokens: int) -> dict[str, object]:
    """Coordinator wire bytes per decoded token, per stage and in total, from three snapshots.

    Each snapshot is ``(sent to the volunteer, received from it)`` per stage: before a
    1-token answer, between it and a ``tokens``-token answer of the same prompt, and after.
    """
    per_stage = []
    for i, (b, m, a) in enumerate(zip(before, middle, after, strict=True)):
        per_stage.append({
            "stage": i,
            "to_volunteer": bytes_per_token(a[0] - m[0], m[0] - b[0], tokens, 1),
            "from_volunteer": bytes_per_token(a[1] - m[1], m[1] - b[1], tokens, 1),
        })
    total = sum(float(s["to_volunteer"]) + float(s["from_volunteer"]) for s in per_stage)
    return {"bytes_per_token": total, "per_stage": per_stage}


def prefill_point(prompt_tokens: int, ours_s: Sequence[float], reference_s: Sequence[float]) -> dict[str, float]:
    """Prefill throughput (prompt tokens per second of time to first token) of both, and the ratio."""
    ours = prompt_tokens / summarize(ours_s).median
    reference = prompt_tokens / summarize(reference_s).median
    return {
        "prompt_tokens": prompt_tokens,
        "ours_tokens_per_s": ours,
        "reference_tokens_per_s": reference,
        "ratio": ratio(ours, reference),
        "ours_ttft_s": summarize(ours_s).median,
        "reference_ttft_s": summarize(reference_s).median,
    }


def concurrency_point(sessions: int, tokens: Sequence[int], wall_s: float) -> dict[str, float]:
    """Aggregate decode throughput of ``sessions`` answers streamed at once."""
    if wall_s <= 0:
        raise ConfigError("the concurrent run took no time", hint="generate more tokens per session")
    total = sum(tokens)
    return {"sessions": sessions, "tokens": total, "wall_s": wall_s, "aggregate_tokens_per_s": total / wall_s}


def breakdown(steps: Sequence[Mapping[str, object]], *, generate_step_s: float | None = None) -> dict[str, object]:
    """Median per-step timings of a profiled decode, per stage and at the coordinator.

    Each step is ``{"total_s", "sample_s", "stages": [{"compute_s", "round_trip_s"}, ...]}``.
    A stage's *overhead* is its round trip minus the volunteer's compute: serializing,
    the socket both ways, queuing and deserializing. *Coordinator other* is what the
    step spends outside the stages and the sampler. With ``generate_step_s`` (the step
    time of full requests), *generate extra* is what a request adds to the bare steps:
    result checks, the replay trace, detokenizing and stop strings.
    """
    if not steps:
        raise ConfigError("no profiled steps", hint="profile at least one decode step")
    count = len(steps[0]["stages"])  # type: ignore[arg-type]
    stages = []
    for i in range(count):
        compute = [float(s["stages"][i]["compute_s"]) for s in steps]  # type: ignore[index]
        trip = [float(s["stages"][i]["round_trip_s"]) for s in steps]  # type: ignore[index]
        stages.append({
            "stage": i,
            "compute_ms": statistics.median(compute) * 1000.0,
            "overhead_ms": statistics.median(t - c for t, c in zip(trip, compute)) * 1000.0,
            "round_trip_ms": statistics.median(trip) * 1000.0,
        })
    total = statistics.median(float(s["total_s"]) for s in steps) * 1000.0
    sample = statistics.median(float(s["sample_s"]) for s in steps) * 1000.0
    trips = sum(float(s["round_trip_ms"]) for s in stages)
    extra = _generate_extra(generate_step_s, total)
    return {
        **extra,
        "steps": len(steps),
        "step_ms": total,
        "stages": stages,
        "compute_ms": sum(float(s["compute_ms"]) for s in stages),
        "hop_overhead_ms": sum(float(s["overhead_ms"]) for s in stages),
        "sample_ms": sample,
        "coordinator_other_ms": max(0.0, total - trips - sample),
    }


def _generate_extra(generate_step_s: float | None, step_ms: float) -> dict[str, float]:
    """A full request's step beside the profiled one, and what it adds (nothing without one)."""
    if generate_step_s is None:
        return {}
    return {"generate_step_ms": generate_step_s * 1000.0, "generate_extra_ms": generate_step_s * 1000.0 - step_ms}


def breakdown_direct(steps: Sequence[Mapping[str, object]], *, generate_step_s: float | None = None) -> dict[str, object]:
    """Median per-step timings of a profiled decode with direct links, per stage and at the coordinator.

    Each step is ``{"total_s", "sample_s", "stages": [{"compute_s", "arrival_s", "handed_off"}, ...]}``
    where ``arrival_s`` is when the stage's copy of its output reached the coordinator,
    from the step's start. A stage's *gap* is its arrival minus the previous stage's
    arrival (0 for the first stage) minus its compute: for the first stage the Forward
    out and the copy back, for the others the hand-off from the previous stage and the
    copy back. *Coordinator other* is what the step spends after the last arrival
    besides sampling. ``handed_off_share`` is the share of stage steps (all but the last
    stage's) that were handed over directly rather than relayed.
    """
    if not steps:
        raise ConfigError("no profiled steps", hint="profile at least one decode step")
    count = len(steps[0]["stages"])  # type: ignore[arg-type]
    stages = []
    for i in range(count):
        compute = [float(s["stages"][i]["compute_s"]) for s in steps]  # type: ignore[index]
        arrival = [float(s["stages"][i]["arrival_s"]) for s in steps]  # type: ignore[index]
        previous = [float(s["stages"][i - 1]["arrival_s"]) if i else 0.0 for s in steps]  # type: ignore[index]
        stages.append({
            "stage": i,
            "compute_ms": statistics.median(compute) * 1000.0,
            "gap_ms": statistics.median(a - p - c for a, p, c in zip(arrival, previous, compute)) * 1000.0,
            "arrival_ms": statistics.median(arrival) * 1000.0,
        })
    handing = [bool(s["stages"][i]["handed_off"]) for s in steps for i in range(count - 1)]  # type: ignore[index]
    total = statistics.median(float(s["total_s"]) for s in steps) * 1000.0
    sample = statistics.median(float(s["sample_s"]) for s in steps) * 1000.0
    last = statistics.median(float(s["stages"][-1]["arrival_s"]) for s in steps) * 1000.0  # type: ignore[index]
    extra = _generate_extra(generate_step_s, total)
    return {
        **extra,
        "steps": len(steps),
        "step_ms": total,
        "stages": stages,
        "compute_ms": sum(float(s["compute_ms"]) for s in stages),
        "gap_ms": sum(float(s["gap_ms"]) for s in stages),
        "sample_ms": sample,
        "coordinator_other_ms": max(0.0, total - last - sample),
        "handed_off_share": sum(handing) / len(handing) if handing else 0.0,
    }


def table(report: Mapping[str, object]) -> str:
    """A Markdown table of the headline figures of a ``butterfly bench`` report.

    With a ``decode_relay`` section (the same pool with the coordinator relaying), the
    relay figures get two more columns; prefill rows show the pool's default links.
    """
    d = report["decode"]  # type: ignore[index]
    relay = report.get("decode_relay")
    names = [
        ("decode tokens/s", "decode_tokens_per_s", "{:.1f}", 1.0),
        ("time to first token (ms)", "ttft_s", "{:.0f}", 1000.0),
        ("end-to-end tokens/s", "end_to_end_tokens_per_s", "{:.1f}", 1.0),
    ]
    stages = report["stages"]
    ours_name = f"Butterfly, {stages} stages" + (f", {d.get('links', 'direct')}" if relay else "")  # type: ignore[union-attr]
    header = f"| | transformers `generate`, 1 process | {ours_name} | ratio |"
    rule = "|---|---|---|---|"
    if relay:
        header += f" Butterfly, {stages} stages, relay | ratio |"
        rule += "---|---|"
    lines = [header, rule]
    for name, key, fmt, scale in names:
        cell = d[key]  # type: ignore[index]
        line = (f"| {name} | {fmt.format(cell['reference']['median'] * scale)} | "
                f"{fmt.format(cell['ours']['median'] * scale)} | {cell['ratio']:.2f}× |")
        if relay:
            rcell = relay[key]  # type: ignore[index]
            line += f" {fmt.format(rcell['ours']['median'] * scale)} | {rcell['ratio']:.2f}× |"
        lines.append(line)
    blank = " – | – |" if relay else ""
    for point in report.get("prefill", []):  # type: ignore[union-attr]
        lines.append(
            f"| prefill tokens/s, {point['prompt_tokens']}-token prompt | {point['reference_tokens_per_s']:.0f} | "
            f"{point['ours_tokens_per_s']:.0f} | {point['ratio']:.2f}× |{blank}"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Series:
    """One labelled line or bar group of a plot."""

    label: str
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class PlotSpec:
    """What one chart shows, free of any plotting library: ``kind`` is "bar" or "line"."""

    name: str
    title: str
    kind: str
    x: tuple[str | int, ...]
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]


def plot_specs(report: Mapping[str, object]) -> list[PlotSpec]:
    """The charts of a ``butterfly bench`` report; sections the report lacks are left out."""
    d = report["decode"]  # type: ignore[index]
    relay = report.get("decode_relay")
    stages = report["stages"]
    ref_label, our_label = "transformers (1 process)", f"Butterfly ({stages} stages)"
    bars: list[tuple[str, Mapping[str, object]]] = [(our_label, d)]  # type: ignore[list-item]
    if relay:
        bars = [(f"Butterfly, direct\n{stages} stages", d), (f"Butterfly, relay\n{stages} stages", relay)]  # type: ignore[list-item]

    def medians(key: str, scale: float) -> tuple[float, ...]:
        first = float(d[key]["reference"]["median"]) * scale  # type: ignore[index]
        return (first, *(float(side[key]["ours"]["median"]) * scale for _, side in bars))  # type: ignore[index]

    labels = ("transformers\n1 process" if relay else ref_label, *(label for label, _ in bars))
    specs = [
        PlotSpec("decode", "Decode speed", "bar", labels, "", "tokens/s", (Series("median", medians("decode_tokens_per_s", 1.0)),)),
        PlotSpec("ttft", "Time to first token", "bar", labels, "", "ms", (Series("median", medians("ttft_s", 1000.0)),)),
    ]
    prefill = list(report.get("prefill") or [])  # type: ignore[call-overload]
    if prefill:
        specs.append(PlotSpec(
            "prefill", "Prefill throughput", "line", tuple(p["prompt_tokens"] for p in prefill), "prompt tokens", "prompt tokens/s",
            (Series(ref_label, tuple(p["reference_tokens_per_s"] for p in prefill)),
             Series(our_label, tuple(p["ours_tokens_per_s"] for p in prefill))),
        ))
    concurrency = report.get("concurrency") or {}
    points = list(concurrency.get("points") or [])  # type: ignore[union-attr]
    if points:
        specs.append(PlotSpec(
            "concurrency", "Concurrent sessions", "line", tuple(p["sessions"] for p in points), "sessions at once",
            "aggregate tokens/s", (Series(our_label, tuple(p["aggregate_tokens_per_s"] for p in points)),),
        ))
    sweep = sorted((report.get("hops") or {}).get("sweep") or [], key=lambda p: p["stages"])  # type: ignore[union-attr]
    if len(sweep) > 1:
        relayed = all("ours_relay_step_ms" in p for p in sweep)
        series = [Series("Butterfly, direct" if relayed else "Butterfly", tuple(p["ours_step_ms"] for p in sweep))]
        if relayed:
            series.append(Series("Butterfly, relay", tuple(p["ours_relay_step_ms"] for p in sweep)))
        if all("ours_bare_step_ms" in p for p in sweep):
            series.append(Series("Butterfly, bare relayed steps" if relayed else "Butterfly, bare steps", tuple(p["ours_bare_step_ms"] for p in sweep)))
        if all("ours_bare_direct_step_ms" in p for p in sweep):
            series.append(Series("Butterfly, bare direct steps", tuple(p["ours_bare_direct_step_ms"] for p in sweep)))
        series.append(Series(ref_label, tuple(p["reference_step_ms"] for p in sweep)))
        specs.append(PlotSpec(
            "stages", "Step time by stage count", "line", tuple(p["stages"] for p in sweep), "stages", "ms per token",
            tuple(series),
        ))
    return specs


def compare_with_peer(
    ours: Sequence[Mapping[str, object]],
    peer: Sequence[Mapping[str, object]],
    peer_reference: Sequence[Mapping[str, object]],
    *,
    section: str = "decode",
) -> dict[str, object]:
    """Ours, a peer system and the peer's single-process reference, over alternated rounds.

    ``ours`` are ``butterfly bench`` reports, read from their ``section`` (``decode``, or
    ``decode_relay`` for the coordinator-relayed rounds of the same runs); ``peer`` and ``peer_reference`` are result
    lines with ``median_decode_step_ms_mean``, ``median_first_step_ms`` and
    ``median_tok_per_s`` (tokens over the whole call). Decode speed is tokens per second
    of the mean decode step, the same definition for everyone.
    """
    if not ours or not peer or not peer_reference:
        raise ConfigError("each side needs at least one round", hint="run the comparison again")

    def decode(lines: Sequence[Mapping[str, object]]) -> Summary:
        return summarize([1000.0 / float(line["median_decode_step_ms_mean"]) for line in lines])  # type: ignore[arg-type]

    ours_decode = summarize([float(r[section]["decode_tokens_per_s"]["ours"]["median"]) for r in ours])  # type: ignore[index]
    ours_ref = summarize([float(r[section]["decode_tokens_per_s"]["reference"]["median"]) for r in ours])  # type: ignore[index]
    ours_ttft = summarize([float(r[section]["ttft_s"]["ours"]["median"]) * 1000.0 for r in ours])  # type: ignore[index]
    ours_e2e = summarize([float(r[section]["end_to_end_tokens_per_s"]["ours"]["median"]) for r in ours])  # type: ignore[index]
    peer_decode, peer_ref = decode(peer), decode(peer_reference)
    peer_ttft = summarize([float(line["median_first_step_ms"]) for line in peer])  # type: ignore[arg-type]
    peer_e2e = summarize([float(line["median_tok_per_s"]) for line in peer])  # type: ignore[arg-type]
    return {
        "decode_tokens_per_s": {
            "ours": ours_decode.as_dict(),
            "ours_reference": ours_ref.as_dict(),
            "peer": peer_decode.as_dict(),
            "peer_reference": peer_ref.as_dict(),
        },
        "first_token_ms": {"ours": ours_ttft.as_dict(), "peer": peer_ttft.as_dict()},
        "end_to_end_tokens_per_s": {"ours": ours_e2e.as_dict(), "peer": peer_e2e.as_dict()},
        "ratios": {
            "ours_vs_reference": ratio(ours_decode.median, ours_ref.median),
            "peer_vs_reference": ratio(peer_decode.median, peer_ref.median),
            "ours_vs_peer": ratio(ours_decode.median, peer_decode.median),
            "ours_vs_peer_end_to_end": ratio(ours_e2e.median, peer_e2e.median),
            "ours_vs_peer_reference": ratio(ours_decode.median, peer_ref.median),
        },
    }


__all__ = [
    "DIRECT_HOPS_PER_STAGE",
    "HOPS_PER_STAGE",
    "HopFit",
    "PlotSpec",
    "Run",
    "Series",
    "Summary",
    "breakdown",
    "breakdown_direct",
    "bytes_per_token",
    "compare_runs",
    "compare_with_peer",
    "concurrency_point",
    "fit_hop_overhead",
    "hops",
    "per_hop_vs_reference_ms",
    "plot_specs",
    "prefill_point",
    "ratio",
    "summarize",
    "table",
    "wire_per_stage",
]
