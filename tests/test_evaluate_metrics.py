"""The kit's metrics as local Hugging Face `evaluate` modules: loaded offline by path, equal to the library calls."""

from __future__ import annotations

import json

import pytest

from ie_helpers import metrics, ner
from ie_helpers.errors import IEError

pytest.importorskip("evaluate")

GOLD = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "B-LOC", "O"], ["O", "O"]]
PRED = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "O"], ["B-PER", "O"]]


def test_span_f1_is_seqeval_strict_and_counts_hallucinations():
    m = metrics.evaluate_metric("span_f1")
    out = m.compute(predictions=PRED, references=GOLD, hallucinated=[0, 2, 0])
    direct = ner.score_ner(GOLD, PRED)
    assert out["micro_f1"] == pytest.approx(direct["micro_f1"]) == pytest.approx(2 * 2 / (4 + 3))
    assert out["micro_f1_halluc_fp"] == pytest.approx(2 * 2 / (4 + 2 + 3))
    assert out["micro_f1_halluc_fp"] < out["micro_f1"]
    assert out["hallucinated"] == 2


def test_set_f1_scores_meaning_not_format():
    m = metrics.evaluate_metric("set_f1")
    gold = json.dumps([{"type": "person", "text": "Ada Lovelace"}, {"type": "location", "text": "London"}])
    pred = 'Here you go:\n```json\n[{"type": "Person", "text": "ada  lovelace"}]\n```'
    out = m.compute(predictions=[pred, "[]"], references=[gold, "[]"], task="ner")
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 1) and out["f1"] == pytest.approx(2 / 3)
    triples = m.compute(predictions=['[["Ada", "lives in", "London"]]'], references=['[["Ada", "Lives_In", "London"]]'],
                        task="kge")
    assert triples["f1"] == 1.0


def test_set_f1_exact_mode_folds_only_case_and_spacing():
    m = metrics.evaluate_metric("set_f1")
    gold = ['[["aspirin", "adverse-effect", "rash"]]']
    loose = ['[["Aspirin.", "adverse-effect", "severe  RASH"]]']
    assert m.compute(predictions=loose, references=gold, task="kge")["tp"] == 0  # "severe rash" is another mention
    dotted = ['[["Aspirin.", "Adverse-Effect", "rash"]]']
    assert m.compute(predictions=dotted, references=gold, task="kge")["f1"] == 1.0  # punctuation stripped
    exact = m.compute(predictions=dotted, references=gold, task="kge", exact=True)
    assert (exact["tp"], exact["fp"], exact["fn"]) == (0, 1, 1)  # "aspirin." is not "aspirin"
    spaced = ['[["ASPIRIN", "adverse-effect", " rash "]]']
    assert m.compute(predictions=spaced, references=gold, task="kge", exact=True)["f1"] == 1.0
    with pytest.raises(ValueError, match="exact=True compares triples"):
        m.compute(predictions=gold, references=gold, task="ner", exact=True)


def test_parse_rate_and_content_rouge():
    rates = metrics.evaluate_metric("json_parse_rate").compute(
        predictions=['{"a": 1}', 'Sure: {"a": 1}', "no json", '{"a": NaN}'])
    assert (rates["n_strict"], rates["n_lenient"], rates["n"]) == (1, 3, 4)
    rouge = metrics.evaluate_metric("content_rouge")
    skeleton = '{"entities": {"person": [], "location": []}, "relations": []}'
    gold = '{"entities": {"person": ["Ada"], "location": ["London"]}, "relations": [["Ada", "live_in", "London"]]}'
    assert rouge.compute(predictions=[skeleton], references=[gold])["content_rouge_l"] == 0.0
    assert rouge.compute(predictions=[skeleton], references=[skeleton])["content_rouge_l"] == 1.0
    assert rouge.compute(predictions=[gold], references=[gold])["content_rouge_l"] == 1.0
    # raw ROUGE-L rewards the skeleton for repeating the gold's key names
    assert metrics.rouge_l([skeleton], [gold])[0] > 0.4


def test_content_text_drops_keys_and_punctuation():
    assert metrics.content_text('{"entities": [{"type": "PER", "text": "Ada"}]}') == "PER Ada"
    assert metrics.content_text('not json: {"a": ') == "not json a"
    assert metrics.content_text(None) == ""


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(IEError, match="content_rouge, json_parse_rate, set_f1, span_f1"):
        metrics.evaluate_metric("bleu")
