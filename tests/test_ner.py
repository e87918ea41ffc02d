"""Tests for ie_helpers.ner (tag conversion, alignment, seqeval scoring, bootstrap, errors)."""

import json
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # no packaging config yet

from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.ner import (  # noqa: E402
    align_mentions,
    bio_from_spans,
    bootstrap_f1_ci,
    entities_json,
    error_breakdown,
    io_to_bio,
    ner_prompt,
    paired_bootstrap_f1,
    per_sentence_f1,
    score_ner,
    spans_from_bio,
)


# ------------------------------------------------------------------ tags
def test_io_to_bio_hand_cases():
    assert io_to_bio(["I-ORG", "I-ORG", "O", "I-LOC"]) == ["B-ORG", "I-ORG", "O", "B-LOC"]
    # adjacent entities of different types
    assert io_to_bio(["I-PER", "I-ORG", "I-ORG", "I-PER"]) == ["B-PER", "B-ORG", "I-ORG", "B-PER"]
    # stray I- inside IOB2 is repaired, valid IOB2 untouched
    assert io_to_bio(["O", "I-LOC", "B-PER", "I-LOC"]) == ["O", "B-LOC", "B-PER", "B-LOC"]
    valid = ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert io_to_bio(valid) == valid
    assert io_to_bio([]) == []
    with pytest.raises(IEError):
        io_to_bio(["PER"])


def test_spans_round_trip_and_seqeval_semantics():
    from seqeval.scheme import IOB2, Tokens

    tags = ["B-PER", "I-PER", "O", "B-ORG", "B-ORG", "I-ORG", "I-LOC", "O", "B-LOC"]
    spans = spans_from_bio(tags)
    assert spans == [(0, 2, "PER"), (3, 4, "ORG"), (4, 6, "ORG"), (8, 9, "LOC")]  # stray I-LOC dropped
    assert spans_from_bio(bio_from_spans(len(tags), spans)) == spans
    assert bio_from_spans(3, [(1, 3, "X")]) == ["O", "B-X", "I-X"]
    # matches seqeval strict IOB2 on random (also invalid) sequences
    rng = random.Random(0)
    alphabet = ["O", "B-A", "I-A", "B-B", "I-B"]
    for _ in range(500):
        seq = [rng.choice(alphabet) for _ in range(rng.randint(0, 7))]
        ref = [(e.start, e.end, e.tag) for e in Tokens(seq, IOB2).entities]
        assert spans_from_bio(seq) == ref, seq
        assert io_to_bio(io_to_bio(seq)) == io_to_bio(seq)
    with pytest.raises(IEError):
        bio_from_spans(4, [(0, 2, "A"), (1, 3, "B")])
    with pytest.raises(IEError):
        bio_from_spans(2, [(1, 3, "A")])


def test_entities_json():
    toks = ["Dr.", "José", "Ruiz", "visited", "São", "Paulo"]
    out = entities_json(toks, [(4, 6, "LOC"), (1, 3, "PER")])
    assert out == '[{"type": "PER", "text": "José Ruiz"}, {"type": "LOC", "text": "São Paulo"}]'
    assert json.loads(entities_json(toks, [])) == []


# ------------------------------------------------------------- alignment
def test_align_duplicates_map_to_successive_occurrences():
    toks = "Acme sued Acme and Acme won".split()
    spans, hall = align_mentions(toks, [("ORG", "Acme"), ("ORG", "Acme"), ("ORG", "Acme"), ("ORG", "Acme")])
    assert spans == [(0, 1, "ORG"), (2, 3, "ORG"), (4, 5, "ORG")]
    assert hall == [("ORG", "Acme")]  # a fourth copy has nowhere left to go


def test_align_punctuation_spacing_variants():
    toks = ["The", "U.S.", "firm", "of", "Smith", "'s", "son", "(", "AIDS", ")"]
    spans, hall = align_mentions(toks, [("LOC", "U.S ."), ("PER", "Smith's"), ("DIS", "(AIDS)")])
    assert hall == []
    assert spans == [(1, 2, "LOC"), (4, 6, "PER"), (7, 10, "DIS")]
    # and the other way round: tokens split, mention glued / mention split, tokens glued
    spans, hall = align_mentions(["Smith's", "U.S", "."], [("PER", "Smith 's"), ("LOC", "U.S.")])
    assert hall == [] and spans == [(0, 1, "PER"), (1, 3, "LOC")]


def test_align_hallucinated_and_case_fallback():
    toks = "apple bought Apple shares in PARIS".split()
    spans, hall = align_mentions(toks, [("ORG", "Apple"), ("LOC", "Paris"), ("ORG", "Microsoft"), ("X", "  ")])
    # case-sensitive match preferred over an earlier case-insensitive one
    assert (2, 3, "ORG") in spans
    assert (5, 6, "LOC") in spans  # case-insensitive fallback
    assert hall == [("ORG", "Microsoft"), ("X", "  ")]


def test_align_skips_overlapping_claims():
    toks = "New York Times in New York".split()
    spans, hall = align_mentions(toks, [("ORG", "New York Times"), ("LOC", "New York")])
    assert spans == [(0, 3, "ORG"), (4, 6, "LOC")] and hall == []


# ---------------------------------------------------------------- scoring
GOLD = [
    ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC"],
    ["B-ORG", "I-ORG", "O"],
    ["O", "O"],
]
PRED = [
    ["B-PER", "O", "O", "B-LOC", "O", "B-LOC"],  # PER boundary error, ORG->LOC type error, LOC ok
    ["B-ORG", "I-ORG", "O"],  # correct
    ["B-PER", "O"],  # spurious
]


def test_score_ner_matches_seqeval_and_hand_computation():
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    perfect = score_ner(GOLD, GOLD)
    assert perfect["micro_f1"] == 1.0 and perfect["macro_f1"] == 1.0

    res = score_ner(GOLD, PRED)
    # by hand: 4 gold spans, 5 predicted, 2 correct
    p, r = 2 / 5, 2 / 4
    assert res["micro_precision"] == pytest.approx(p)
    assert res["micro_recall"] == pytest.approx(r)
    assert res["micro_f1"] == pytest.approx(2 * p * r / (p + r))
    kw = dict(mode="strict", scheme=IOB2)
    assert res["micro_f1"] == f1_score(GOLD, PRED, **kw)
    assert res["micro_precision"] == precision_score(GOLD, PRED, **kw)
    assert res["micro_recall"] == recall_score(GOLD, PRED, **kw)
    assert res["macro_f1"] == pytest.approx(f1_score(GOLD, PRED, average="macro", **kw))
    assert (res["n_gold"], res["n_pred"], res["n_correct"]) == (4, 5, 2)

    pt = res["per_type"].set_index("type")
    assert list(res["per_type"].columns) == ["type", "precision", "recall", "f1", "support"]
    assert pt.loc["PER", "f1"] == 0.0 and pt.loc["PER", "support"] == 1
    assert pt.loc["ORG", "precision"] == 1.0 and pt.loc["ORG", "recall"] == 0.5
    assert pt.loc["LOC", "f1"] == pytest.approx(2 / 3)
    assert res["macro_f1"] == pytest.approx((0 + 2 / 3 + 2 / 3) / 3)


def test_score_ner_zero_predictions_is_quiet_and_guards_input():
    empty = [["O"] * len(g) for g in GOLD]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = score_ner(GOLD, empty)
        assert res["micro_f1"] == 0.0 and res["micro_precision"] == 0.0
        assert score_ner([["O"]], [["O"]])["micro_f1"] == 0.0
    with pytest.raises(IEError, match="io_to_bio"):
        score_ner([["I-ORG", "O"]], [["O", "O"]])
    with pytest.raises(IEError):
        score_ner(GOLD, PRED[:2])
    with pytest.raises(IEError):
        score_ner([["O", "O"]], [["O"]])


def _random_corpus(n, seed, noise):
    rng = random.Random(seed)
    gold = [
        io_to_bio([rng.choice(["O", "O", "O", "I-A", "I-B"]) for _ in range(rng.randint(1, 10))])
        for _ in range(n)
    ]
    return gold, _noisy(gold, seed + 100, noise)


def _noisy(gold, seed, noise):
    rng = random.Random(seed)
    return [[t if rng.random() > noise else rng.choice(["O", "B-A", "I-A", "B-B"]) for t in g] for g in gold]


def test_bootstrap_point_equals_score_ner_and_brackets_it():
    gold, pred = _random_corpus(60, seed=1, noise=0.25)
    f1, lo, hi = bootstrap_f1_ci(gold, pred, n_boot=300, seed=0)
    assert f1 == score_ner(gold, pred)["micro_f1"]
    assert 0.0 <= lo <= f1 <= hi <= 1.0 and lo < hi
    assert bootstrap_f1_ci(gold, pred, n_boot=300, seed=0) == (f1, lo, hi)  # seeded
    assert bootstrap_f1_ci(gold, gold, n_boot=50) == (1.0, 1.0, 1.0)


def test_paired_bootstrap():
    gold, good = _random_corpus(60, seed=2, noise=0.05)
    bad = _noisy(gold, seed=3, noise=0.6)
    res = paired_bootstrap_f1(gold, good, bad, n_boot=300, seed=0)
    assert res["diff"] == pytest.approx(score_ner(gold, good)["micro_f1"] - score_ner(gold, bad)["micro_f1"])
    assert res["diff"] > 0 and res["lo"] > 0 and res["p_value"] < 0.05
    # a finite bootstrap never claims p = 0: the floor is 2 / (n_boot + 1)
    assert res["p_value"] >= 2 / 301
    same = paired_bootstrap_f1(gold, good, good, n_boot=50)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    rev = paired_bootstrap_f1(gold, bad, good, n_boot=300, seed=0)
    assert rev["diff"] == pytest.approx(-res["diff"]) and rev["p_value"] == res["p_value"]


def test_per_sentence_f1():
    gold = [[(0, 1, "A")], [], [(0, 2, "A"), (3, 4, "B")], []]
    pred = [[(0, 1, "A")], [], [(0, 2, "A")], [(1, 2, "A")]]
    np.testing.assert_allclose(per_sentence_f1(gold, pred), [1.0, 1.0, 2 / 3, 0.0])


def test_error_breakdown_each_category():
    gold = [
        [(0, 2, "PER"), (3, 4, "ORG"), (5, 7, "LOC"), (8, 10, "ORG"), (11, 12, "PER"), (14, 15, "LOC")],
        [(0, 1, "PER")],
    ]
    pred = [
        [
            (0, 2, "PER"),  # correct
            (3, 4, "LOC"),  # type (exact span, wrong type)
            (5, 6, "LOC"),  # boundary (overlap, same type)
            (9, 11, "PER"),  # boundary+type (overlaps ORG 8-10 only)
            (12, 13, "ORG"),  # spurious
        ],  # gold PER 11-12 and LOC 14-15 untouched -> missed x2
        [],  # gold PER 0-1 missed
    ]
    out = error_breakdown(gold, pred, hallucinated_counts=[2, 1])
    assert out == {
        "correct": 1,
        "type": 1,
        "boundary": 1,
        "boundary+type": 1,
        "spurious": 1,
        "hallucinated": 3,
        "missed": 3,
    }
    assert error_breakdown(gold, pred)["hallucinated"] == 0
    with pytest.raises(IEError):
        error_breakdown(gold, pred, hallucinated_counts=[1])


def test_ner_prompt():
    instr, inp = ner_prompt(["EU", "rejects", "German", "call"], ["PER", "ORG"])
    assert inp == "EU rejects German call"
    assert instr.startswith("Extract all named entities of these types: PER, ORG. Answer with a JSON list")
    assert instr.endswith("answer [] if there are none.")
    assert ner_prompt(["x"], ["A"], instruction="Find {types} as {json}")[0] == "Find A as {json}"
    with pytest.raises(IEError):
        ner_prompt(["x"], [])
