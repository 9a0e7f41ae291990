#!/usr/bin/env bash
# bench_petals.sh -- Butterfly vs Petals vs single-process transformers, in one run, on the same model.
#
# Usage:   PETALS_RECIPE=/path/to/run_peer.sh bash scripts/bench_petals.sh
#
# The recipe (a separate script, not part of this repository) installs Petals 2.2.0.post1 into its
# own venv under $ROOT, makes a random-weight 8-layer Llama (hidden 512, fp32, HF format) at
# $ROOT/model/tiny-llama, and benchmarks a private loopback swarm of 2 servers (blocks 0:4 and 4:8)
# against single-process transformers. This script alternates that with `butterfly bench` on the
# same folder, the same split (2 volunteers, layers [0, 4) and [4, 8)), the same threads, fp32, the
# same raw prompt and 64 greedy tokens, ALTERNATIONS times, so drift on a shared machine hits both
# sides. Each of our runs times the same pool both ways, round for round: volunteers handing hidden
# states to each other (direct links, the default) and the coordinator relaying them. Then writes the
# comparison for both ways (and our per-step breakdown) to $OUT.
#
# Knobs (env): ROOT (work dir, default ${TMPDIR:-/tmp}/butterfly-petals), ALTERNATIONS=3, REPS=5
# (timed answers per side per alternation), THREADS (default: all cores; Petals servers and client
# use torch's default, which is the same), OUT=docs/benchmarks/petals.json, PYTHON (default: the
# repository's .venv, else python3). Nothing here needs the internet once the recipe's setup is done.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${PETALS_RECIPE:?set PETALS_RECIPE to the Petals recipe script (run_peer.sh)}"
export ROOT=${ROOT:-${TMPDIR:-/tmp}/butterfly-petals}
ALTERNATIONS=${ALTERNATIONS:-3}
REPS=${REPS:-5}
THREADS=${THREADS:-$(nproc)}
OUT=${OUT:-$REPO/docs/benchmarks/petals.json}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
PROMPT="Once upon a time there was"
MODEL=$ROOT/model/tiny-llama
WORK=$(mktemp -d "${TMPDIR:-/tmp}/butterfly-petals-run.XXXXXX")
log() { echo "[bench_petals $(date +%T)] $*" >&2; }

log "setting up Petals (once) in $ROOT"
timeout 1800 bash "$PETALS_RECIPE" setup

for i in $(seq "$ALTERNATIONS"); do
  log "alternation $i/$ALTERNATIONS: Petals (and its transformers baseline)"
  # a fresh bootstrap port per alternation, so no swarm meets the previous one's leftovers
  if ! PORT=$((31337 + i)) ROUNDS=1 REPS=$REPS timeout 1200 bash "$PETALS_RECIPE" bench > "$WORK/petals-$i.out" 2> "$WORK/petals-$i.err"; then
    log "the Petals round failed (its client or servers timed out); see $WORK/petals-$i.err"
  fi
  run_dir=$(sed -n 's/.*logs in \(.*\)$/\1/p' "$WORK/petals-$i.err" | tail -1)
  { grep TOKENS "$run_dir/client.log" 2>/dev/null || true; } | tail -1 > "$WORK/petals-$i.tokens"
  for variant in default unchecked; do
    log "alternation $i/$ALTERNATIONS: Butterfly, $variant settings (and our transformers baseline)"
    settings=()
    [ "$variant" = unchecked ] && settings=(--set verify_share=0 --set probation_steps=0)
    (cd "$REPO" && OMP_WAIT_POLICY=PASSIVE timeout 1200 "$PYTHON" -m cli bench --model "$MODEL" --stages 2 \
      --threads "$THREADS" --dtype float32 --tokens 64 --rounds "$REPS" --raw --prompt "$PROMPT" \
      --prefill "" --concurrency "" --sweep "" "${settings[@]}" --out "$WORK/ours-$variant-$i") > "$WORK/ours-$variant-$i.out"
  done
done

log "merging into $OUT"
(cd "$REPO" && "$PYTHON" - "$WORK" "$ALTERNATIONS" "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

from cli.bench_report import compare_with_peer

work, alternations, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])


def results(path: Path) -> dict[str, dict]:
    lines = [json.loads(l[len("RESULT "):]) for l in path.read_text().splitlines() if l.startswith("RESULT ")]
    return {line["name"]: line for line in lines}


rounds, ours, unchecked, petals, petals_ref, same_tokens, failed = [], [], [], [], [], [], []
for i in range(1, alternations + 1):
    report = json.loads((work / f"ours-default-{i}" / "bench.json").read_text())
    plain = json.loads((work / f"ours-unchecked-{i}" / "bench.json").read_text())
    peer = results(work / f"petals-{i}.out")
    swarm = next((v for k, v in peer.items() if k.startswith("petals_")), None)
    ref = peer.get("hf_single_process_swarm_idle_in_background")
    ours.append(report)
    unchecked.append(plain)
    if swarm is None or ref is None:
        failed.append(i)
        continue
    petals.append(swarm)
    petals_ref.append(ref)
    tokens_line = (work / f"petals-{i}.tokens").read_text().strip()
    if tokens_line:
        petals_ids = json.loads(tokens_line[len("TOKENS "):])
        same_tokens.append(petals_ids == report["prompt_ids"] + report["decode"]["tokens"])
    rounds.append({
        "ours": {k: report["decode"][k] for k in ("decode_tokens_per_s", "ttft_s", "end_to_end_tokens_per_s")},
        "ours_relay": {k: report["decode_relay"][k] for k in ("decode_tokens_per_s", "ttft_s", "end_to_end_tokens_per_s")},
    "ours_unchecked": {k: plain["decode"][k] for k in ("decode_tokens_per_s", "ttft_s", "end_to_end_tokens_per_s")},
    "ours_unchecked_relay": {k: plain["decode_relay"][k] for k in ("decode_tokens_per_s", "ttft_s", "end_to_end_tokens_per_s")},
    "handed_off_steps": {"direct": report["decode"]["handed_off_steps"], "relay": report["decode_relay"]["handed_off_steps"]},
        "petals": swarm,
        "petals_transformers": ref,
        "petals_transformers_swarm_off": peer.get("hf_single_process_swarm_off"),
        "load_average": report["machine"]["load_average"],
    })

comparison = compare_with_peer(ours, petals, petals_ref)
comparison_unchecked = compare_with_peer(unchecked, petals, petals_ref)
comparison_relay = compare_with_peer(ours, petals, petals_ref, section="decode_relay")
comparison_unchecked_relay = compare_with_peer(unchecked, petals, petals_ref, section="decode_relay")
last = ours[-1]
result = {
    "benchmark": "Butterfly vs Petals vs single-process transformers, loopback, same model and split",
    "machine": last["machine"],
    "model": {**last["model"], "params_millions": 58.1, "note": "random weights, 8 layers, hidden 512, vocab 32000, fp32"},
    "split": last["split"],
    "threads_per_process": last["threads_per_process"],
    "prompt": last["prompt"],
    "prompt_tokens": last["prompt_tokens"],
    "new_tokens": last["new_tokens"],
    "alternations": alternations,
    "reps_per_side": last["rounds"],
    "versions": {
        "petals": petals[-1].get("petals"),
        "transformers_with_petals": petals[-1].get("transformers"),
        "transformers_with_butterfly": "see our reference",
        "torch": last["machine"]["torch"],
    },
    "definitions": {
        "decode_tokens_per_s": "1 / mean time per token after the first, every side alike",
        "links": "comparison*: our stages hand hidden states to each other (direct links, the default); "
                 "*_relay: the same runs' alternated rounds with the coordinator relaying every hidden state",
        "reference": "single-process transformers generate: 'ours_reference' measured by butterfly bench "
                     "(our transformers), 'peer_reference' by the Petals recipe (its transformers), each "
                     "with the other side's processes idle in the background",
    },
    "comparison": comparison,
    "comparison_relay": comparison_relay,
    "comparison_without_result_checks": {
        "settings": unchecked[-1].get("coordinator_settings"),
        "note": "the same runs with the coordinator's re-checking of volunteers' results off (Petals has none)",
        **comparison_unchecked,
    },
    "comparison_without_result_checks_relay": comparison_unchecked_relay,
    "handed_off_steps": {"direct": sum(r["decode"]["handed_off_steps"] for r in ours),
                         "relay": sum(r["decode_relay"]["handed_off_steps"] for r in ours),
                         "direct_timed_steps": sum(len(r["decode"]["rounds"]["ours"]) * (r["new_tokens"] + 1) for r in ours)},
    "our_settings": ours[-1].get("coordinator_settings"),
    "target_ours_vs_peer": 1.8,
    "target_met": comparison["ratios"]["ours_vs_peer"] >= 1.8,
    "petals_alternations_failed": failed,
    "same_greedy_tokens_as_petals": all(same_tokens) if same_tokens else None,
    "same_greedy_tokens_as_transformers": all(r[k]["same_tokens_as_reference"] for r in ours + unchecked
                                              for k in ("decode", "decode_relay")),
    "our_wire_bytes_per_token": {"direct": [r["wire"] for r in ours], "relay": [r["wire_relay"] for r in ours]},
    "our_breakdown": [r["breakdown"] for r in ours],
    "our_breakdown_without_result_checks": [r["breakdown"] for r in unchecked],
    "our_breakdown_direct": [r.get("breakdown_direct") for r in ours],
    "our_breakdown_direct_without_result_checks": [r.get("breakdown_direct") for r in unchecked],
    "rounds": rounds,
}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({"ratios": comparison["ratios"], "ratios_relay": comparison_relay["ratios"],
                  "ratios_without_checks": comparison_unchecked["ratios"],
                  "ratios_without_checks_relay": comparison_unchecked_relay["ratios"],
                  "decode_tokens_per_s_medians": {
    k: v["median"] for k, v in comparison["decode_tokens_per_s"].items()}}, indent=2))
EOF
)
log "done; raw outputs in $WORK"
