"""`butterfly bench`: the forced split is the one the real planner must choose, and a quick run writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.bench import coordinator_settings, even_split, memory_caps
from core.errors import ConfigError
from core.model.config import ModelConfig
from core.types import HardwareProfile, LayerRange, NodeId
from server.planner import plan
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)


def test_even_split_covers_every_layer_with_sizes_one_apart() -> None:
    assert [(r.start, r.end) for r in even_split(8, 2)] == [(0, 4), (4, 8)]
    assert [(r.start, r.end) for r in even_split(30, 4)] == [(0, 8), (8, 16), (16, 23), (23, 30)]
    assert even_split(5, 1) == [LayerRange(0, 5, 5)]
    for bad in (0, 6):
        with pytest.raises(ConfigError):
            even_split(5, bad)


def test_coordinator_settings_take_the_type_of_the_default() -> None:
    assert coordinator_settings(["verify_share=0", "probation-steps=0", "open_pool=true", "api_key=none"]) == {
        "verify_share": 0.0, "probation_steps": 0, "open_pool": True, "api_key": None,
    }
    for bad in ("verify_share", "no_such_setting=1", "probation_steps=many", "open_pool=maybe", "port=1"):
        with pytest.raises(ConfigError):
            coordinator_settings([bad])


def _spec(layers: int, *, vocab: int):  # noqa: ANN202 - ModelSpec
    config = ModelConfig.from_hf({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 512,
        "intermediate_size": 1376, "num_hidden_layers": layers, "num_attention_heads": 8, "num_key_value_heads": 8,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    })
    return config.model_spec(name="m", dtype=torch.float32, context_tokens=2048, concurrency=8)


@pytest.mark.parametrize(("layers", "stages", "vocab"), [(8, 2, 32000), (8, 3, 32000), (30, 3, 49152), (12, 4, 320)])
def test_memory_caps_force_the_planner_onto_that_many_stages(layers: int, stages: int, vocab: int) -> None:
    spec = _spec(layers, vocab=vocab)
    split = even_split(layers, stages)
    caps = memory_caps(spec, split)
    # Equal speeds, volunteers listed in any order: the planner still needs every one of them.
    profiles = [HardwareProfile(node_id=NodeId(f"n{i}"), memory_bytes=cap, seconds_per_layer=0.001)
                for i, cap in reversed(list(enumerate(caps)))]
    chosen = plan(spec, profiles).pipelines[0]
    assert len(chosen.stages) == stages
    if stages == 2:  # the split of the comparison with other systems must be exact
        assert [(s.layers.start, s.layers.end) for s in chosen.stages] == [(r.start, r.end) for r in split]



def test_quick_bench_on_a_tiny_model_writes_the_report_and_charts(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(
        os.environ,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        PYTHONPATH=str(ROOT),
        OMP_WAIT_POLICY="PASSIVE",
    )
    result = subprocess.run(
        [sys.executable, "-m", "cli", "bench", "--quick", "--model", str(tiny_llama_dir), "--stages", "2",
         "--threads", "1", "--tokens", "6", "--prefill", "16,100000", "--concurrency", "1,2", "--sweep", "",
         "--raw", "--prompt", "t5 t6 t7 t8", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["stages"] == 2 and [s[1:] for s in report["split"]] == [[0, 3], [3, 6]]
    decode = report["decode"]
    assert decode["decode_tokens_per_s"]["ours"]["median"] > 0 and decode["decode_tokens_per_s"]["reference"]["median"] > 0
    assert decode["same_tokens_as_reference"] is True  # same weights, fp32, greedy
    assert decode["hops_per_token"] == 3 and decode["links"] == "direct"  # 2 stages: coordinator, v1, v2, coordinator
    relay = report["decode_relay"]
    assert relay["hops_per_token"] == 4 and relay["links"] == "relay"
    assert relay["same_tokens_as_reference"] is True and relay["decode_tokens_per_s"]["ours"]["median"] > 0
    assert relay["handed_off_steps"] == 0 and report["wire_relay"]["handed_off_steps"] == 0
    assert decode["handed_off_steps"] > 0 and report["wire"]["handed_off_steps"] > 0  # the direct rounds handed off
    assert [p["prompt_tokens"] for p in report["prefill"]] == [16] and report["prefill_skipped"] == [100000]
    assert [p["sessions"] for p in report["concurrency"]["points"]] == [1, 2]
    assert len(report["breakdown"]["stages"]) == 2
    assert report["breakdown_direct"]["handed_off_share"] > 0 and len(report["breakdown_direct"]["stages"]) == 2
    assert report["wire"]["bytes_per_token"] > 0 and report["wire_relay"]["bytes_per_token"] > 0
    assert len(report["wire"]["per_stage"]) == 2
    assert {"cpu", "logical_cpus", "memory_gib", "os", "python", "torch", "date"} <= set(report["machine"])
    charts = sorted(p.name for p in out.glob("*.png"))
    assert charts == ["bench_concurrency.png", "bench_decode.png", "bench_prefill.png", "bench_ttft.png"]
    assert all(0 < (out / c).stat().st_size < 200_000 for c in charts)
    assert "| decode tokens/s |" in result.stdout and "relay" in result.stdout
