"""Named-entity recognition machinery shared by the generative and encoder notebooks.

Conventions
-----------
* A sentence is a list of tokens; its tags are a same-length list of IOB2 strings
  (``"O"``, ``"B-X"``, ``"I-X"``).  IO data (only ``I-X``) is converted with
  :func:`io_to_bio` before anything else.
* A span is ``(start, end, type)`` over token indices, ``end`` exclusive.
* Scoring is seqeval's strict IOB2 span-level scoring everywhere; the bootstrap
  helpers reproduce it from per-sentence span counts (see :func:`spans_from_bio`)
  so that a thousand resamples cost one pass over the data.

:func:`align_mentions` lives in ``mention_alignment`` and is re-exported here.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from ie_helpers.errors import IEError
from ie_helpers.mention_alignment import align_mentions
from ie_helpers.stats import check_bootstrap, percentile_interval, resampled_indices

Span = tuple[int, int, str]

__all__ = [
    "io_to_bio",
    "spans_from_bio",
    "bio_from_spans",
    "entities_json",
    "align_mentions",
    "score_ner",
    "per_sentence_f1",
    "bootstrap_f1_ci",
    "paired_bootstrap_f1",
    "error_breakdown",
    "ner_prompt",
    "DEFAULT_NER_INSTRUCTION",
]

DEFAULT_NER_INSTRUCTION = (
    "Extract all named entities of these types: {types}. Answer with a JSON list of "
    'objects with keys "type" and "text", in order of appearance; answer [] if there '
    "are none."
)


# --------------------------------------------------------------------------- tags
def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``; else IEError."""
    if tag == "O":
        return "O", ""
    if isinstance(tag, str) and len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return tag[0], tag[2:]
    raise IEError(
        f"unsupported NER tag {tag!r}: tags must be 'O', 'B-<type>' or 'I-<type>' "
        "(convert other schemes to IO/IOB2 first)"
    )


def io_to_bio(tags: Sequence[str]) -> list[str]:
    """IO (or broken IOB2) -> valid IOB2.

    An ``I-X`` that follows ``O``, the sentence start, or a tag of another type becomes
    ``B-X``.  Valid IOB2 is returned unchanged (idempotent).  Note that IO cannot
    express two adjacent entities of the same type; they stay merged.
    """
    out: list[str] = []
    prev_type = ""  # "" = outside
    for tag in tags:
        prefix, typ = _split_tag(tag)
        if prefix == "O":
            out.append("O")
        elif prefix == "I" and typ != prev_type:
            out.append("B-" + typ)
        else:
            out.append(tag)
        prev_type = typ
    return out


def spans_from_bio(tags: Sequence[str]) -> list[Span]:
    """IOB2 tags -> ``[(start, end_exclusive, type), ...]`` with seqeval strict semantics.

    A span starts at ``B-X`` and extends over following ``I-X`` of the same type.
    A stray ``I-X`` (after ``O`` or another type) starts nothing and is ignored, as in
    ``seqeval`` with ``mode="strict", scheme=IOB2``.
    """
    spans: list[Span] = []
    start, cur = -1, ""
    for i, tag in enumerate(tags):
        prefix, typ = _split_tag(tag)
        if prefix == "I" and cur and typ == cur:
            continue
        if cur:
            spans.append((start, i, cur))
            cur = ""
        if prefix == "B":
            start, cur = i, typ
    if cur:
        spans.append((start, len(tags), cur))
    return spans


def bio_from_spans(n_tokens: int, spans: Iterable[Span]) -> list[str]:
    """Spans -> IOB2 tags of length ``n_tokens``; overlapping or out-of-range spans raise."""
    tags = ["O"] * n_tokens
    for start, end, typ in sorted(spans, key=lambda s: (s[0], s[1])):
        if not (0 <= start < end <= n_tokens):
            raise IEError(
                f"span ({start}, {end}, {typ!r}) is outside a sentence of {n_tokens} "
                "tokens; spans are (start, end_exclusive, type) token indices"
            )
        if any(t != "O" for t in tags[start:end]):
            raise IEError(
                f"span ({start}, {end}, {typ!r}) overlaps another span; IOB2 cannot "
                "encode nested entities, drop one of them first"
            )
        if not typ or any(ch.isspace() for ch in typ):
            raise IEError(f"entity type {typ!r} must be a non-empty string without spaces")
        tags[start] = "B-" + typ
        for i in range(start + 1, end):
            tags[i] = "I-" + typ
    return tags


def entities_json(tokens: Sequence[str], spans: Iterable[Span]) -> str:
    """Target text for generative NER: a JSON list of ``{"type", "text"}`` in span order."""
    ents = [
        {"type": typ, "text": " ".join(tokens[s:e])}
        for s, e, typ in sorted(spans, key=lambda s: (s[0], s[1]))
    ]
    return json.dumps(ents, ensure_ascii=False)


# --------------------------------------------------------------------- scoring
def _check_seqs(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> None:
    if len(gold) != len(pred):
        raise IEError(
            f"got {len(gold)} gold and {len(pred)} predicted sentences; pass one "
            "predicted tag list per gold sentence"
        )
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise IEError(
                f"sentence {k}: {len(g)} gold tags but {len(p)} predicted tags; "
                "predict exactly one tag per input token"
            )


def _check_gold_iob2(gold: Sequence[Sequence[str]]) -> None:
    for k, g in enumerate(gold):
        if io_to_bio(g) != list(g):
            raise IEError(
                f"gold sentence {k} is not valid IOB2 (an I- tag without a preceding "
                "B-/I- of the same type, e.g. IO data); convert it with "
                "ie_helpers.ner.io_to_bio first"
            )


def score_ner(gold_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]]) -> dict:
    """seqeval strict IOB2 span-level scores.

    Returns ``micro_precision, micro_recall, micro_f1, macro_f1`` (floats), ``per_type``
    (DataFrame with columns type, precision, recall, f1, support) and the counts
    ``n_gold, n_pred, n_correct``.  Gold must be valid IOB2 (IEError otherwise: run
    :func:`io_to_bio`); predictions are scored as they are (stray ``I-`` tags count
    for nothing, as in seqeval strict mode).  With no entity anywhere all scores are 0.
    """
    import pandas as pd
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    gold = [list(g) for g in gold_tag_seqs]
    pred = [list(p) for p in pred_tag_seqs]
    _check_seqs(gold, pred)
    _check_gold_iob2(gold)
    for p in pred:  # raise our message, not seqeval's, on malformed tags
        for t in p:
            _split_tag(t)

    tp, fp, fn = _span_counts(gold, pred)
    counts = {"n_gold": int(tp.sum() + fn.sum()), "n_pred": int(tp.sum() + fp.sum()),
              "n_correct": int(tp.sum())}
    columns = ["type", "precision", "recall", "f1", "support"]
    if counts["n_gold"] == 0 and counts["n_pred"] == 0:
        return {"micro_precision": 0.0, "micro_recall": 0.0, "micro_f1": 0.0,
                "macro_f1": 0.0, "per_type": pd.DataFrame(columns=columns), **counts}

    rep = classification_report(
        gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    rows = [
        {"type": name, "precision": float(v["precision"]), "recall": float(v["recall"]),
         "f1": float(v["f1-score"]), "support": int(v["support"])}
        for name, v in rep.items()
        if not name.endswith(" avg")
    ]
    micro, macro = rep["micro avg"], rep["macro avg"]
    return {
        "micro_precision": float(micro["precision"]),
        "micro_recall": float(micro["recall"]),
        "micro_f1": float(micro["f1-score"]),
        "macro_f1": float(macro["f1-score"]),
        "per_type": pd.DataFrame(rows, columns=columns),
        **counts,
    }


def _span_counts(gold_tag_seqs, pred_tag_seqs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sentence (tp, fp, fn) arrays from strict IOB2 spans."""
    n = len(gold_tag_seqs)
    tp, fp, fn = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for k, (g, p) in enumerate(zip(gold_tag_seqs, pred_tag_seqs)):
        gs, ps = set(spans_from_bio(g)), set(spans_from_bio(p))
        c = len(gs & ps)
        tp[k], fp[k], fn[k] = c, len(ps) - c, len(gs) - c
    return tp, fp, fn


def _micro_f1(tp, fp, fn) -> np.ndarray:
    """Micro F1 from summed counts, with seqeval's arithmetic (bit-identical results)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    pred, true = tp + fp, tp + fn
    p = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    r = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    denom = 1.0 * p + r
    denom = np.where(denom == 0.0, 1.0, denom)
    return 2 * p * r / denom


def per_sentence_f1(gold_spans_list: Sequence[Iterable[Span]], pred_spans_list: Sequence[Iterable[Span]]) -> np.ndarray:
    """Span-set F1 per sentence (exact span and type); 1.0 where both sets are empty."""
    if len(gold_spans_list) != len(pred_spans_list):
        raise IEError(
            f"got {len(gold_spans_list)} gold and {len(pred_spans_list)} predicted span "
            "lists; pass one list per sentence"
        )
    out = np.empty(len(gold_spans_list), dtype=np.float64)
    for k, (g, p) in enumerate(zip(gold_spans_list, pred_spans_list)):
        gs, ps = set(map(tuple, g)), set(map(tuple, p))
        denom = len(gs) + len(ps)
        out[k] = 1.0 if denom == 0 else 2.0 * len(gs & ps) / denom
    return out


def _resample_f1(counts_list, n: int, n_boot: int, seed: int, chunk: int = 256) -> list[np.ndarray]:
    """Micro-F1 over ``n_boot`` sentence resamples for each (tp, fp, fn) triple."""
    rng = np.random.default_rng(seed)
    outs: list[list[np.ndarray]] = [[] for _ in counts_list]
    stacked = [np.stack(c) for c in counts_list]  # each (3, n)
    for idx in resampled_indices(rng, n, n_boot, rows_per_chunk=chunk):
        for k, st in enumerate(stacked):
            sums = st[:, idx].sum(axis=2)  # (3, b)
            outs[k].append(_micro_f1(*sums))
    return [np.concatenate(o) for o in outs]


def _check_boot_args(n_sent: int, n_boot: int, alpha: float) -> None:
    if n_sent == 0:
        raise IEError("no sentences to bootstrap; pass at least one gold/pred pair")
    check_bootstrap(n_boot, alpha)


def bootstrap_f1_ci(
    gold_tag_seqs: Sequence[Sequence[str]],
    pred_tag_seqs: Sequence[Sequence[str]],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(micro_f1, lo, hi)``: percentile bootstrap CI resampling sentences.

    Point estimate equals :func:`score_ner`'s ``micro_f1`` exactly.  Per-sentence
    tp/fp/fn are computed once; resamples just sum them.  ``lo``/``hi`` are the
    ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled micro-F1s (plain
    percentile interval: on tiny or very skewed data the point can fall outside it).
    """
    gold, pred = list(gold_tag_seqs), list(pred_tag_seqs)
    _check_seqs(gold, pred)
    _check_boot_args(len(gold), n_boot, alpha)
    _check_gold_iob2(gold)
    counts = _span_counts(gold, pred)
    f1 = float(_micro_f1(*(np.array([c.sum()]) for c in counts))[0])
    (boots,) = _resample_f1([counts], len(gold), n_boot, seed)
    lo, hi = percentile_interval(boots, alpha)
    return f1, lo, hi


def paired_bootstrap_f1(
    gold_tag_seqs: Sequence[Sequence[str]],
    pred_a: Sequence[Sequence[str]],
    pred_b: Sequence[Sequence[str]],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Paired bootstrap of ``micro_f1(a) - micro_f1(b)`` over the same sentence resamples.

    Returns ``diff, lo, hi, p_value`` plus ``f1_a, f1_b, n_boot``.  ``p_value`` is the
    share of resamples whose difference does not have the sign of the observed one
    (zero counts as a flip), counted as (flips + 1) / (n_boot + 1) so that a finite
    bootstrap never reports p = 0, times 2 (two-sided), capped at 1; 1.0 if diff == 0.
    """
    gold, a, b = list(gold_tag_seqs), list(pred_a), list(pred_b)
    _check_seqs(gold, a)
    _check_seqs(gold, b)
    _check_boot_args(len(gold), n_boot, alpha)
    _check_gold_iob2(gold)
    ca, cb = _span_counts(gold, a), _span_counts(gold, b)
    f1_a = float(_micro_f1(*(np.array([c.sum()]) for c in ca))[0])
    f1_b = float(_micro_f1(*(np.array([c.sum()]) for c in cb))[0])
    diff = f1_a - f1_b
    boot_a, boot_b = _resample_f1([ca, cb], len(gold), n_boot, seed)
    d = boot_a - boot_b
    lo, hi = percentile_interval(d, alpha)
    if diff > 0:
        flips = (float(np.sum(d <= 0)) + 1) / (n_boot + 1)
    elif diff < 0:
        flips = (float(np.sum(d >= 0)) + 1) / (n_boot + 1)
    else:
        flips = 0.5
    return {
        "diff": float(diff),
        "lo": float(lo),
        "hi": float(hi),
        "p_value": min(1.0, 2.0 * flips),
        "f1_a": f1_a,
        "f1_b": f1_b,
        "n_boot": int(n_boot),
    }


# ------------------------------------------------------------- error analysis
ERROR_CATEGORIES = ("correct", "type", "boundary", "boundary+type", "spurious", "hallucinated", "missed")


def error_breakdown(
    gold_spans_list: Sequence[Iterable[Span]],
    pred_spans_list: Sequence[Iterable[Span]],
    hallucinated_counts: Sequence[int] | None = None,
) -> dict:
    """Count prediction errors by category over all sentences.

    Every predicted span gets exactly one category, by this precedence:

    1. ``correct``        same start, end and type as a gold span;
    2. ``type``           same start and end as a gold span, other type;
    3. ``boundary``       overlaps a gold span of the same type (not exactly);
    4. ``boundary+type``  overlaps gold spans, none of its type;
    5. ``spurious``       overlaps no gold span.

    ``hallucinated`` is the sum of ``hallucinated_counts`` (mentions per sentence that
    :func:`align_mentions` could not find in the text; they have no span).  Each gold
    span no predicted span overlaps counts once as ``missed``.  Keys are returned in
    ``ERROR_CATEGORIES`` order.
    """
    if len(gold_spans_list) != len(pred_spans_list):
        raise IEError(
            f"got {len(gold_spans_list)} gold and {len(pred_spans_list)} predicted span "
            "lists; pass one list per sentence"
        )
    out = dict.fromkeys(ERROR_CATEGORIES, 0)
    for gold, pred in zip(gold_spans_list, pred_spans_list):
        gold = sorted(set(map(tuple, gold)))
        pred = sorted(set(map(tuple, pred)))
        touched = [False] * len(gold)
        for ps, pe, pt in pred:
            exact_types, overlap_types = set(), set()
            for k, (gs, ge, gt) in enumerate(gold):
                if ps < ge and gs < pe:
                    touched[k] = True
                    overlap_types.add(gt)
                    if (ps, pe) == (gs, ge):
                        exact_types.add(gt)
            if pt in exact_types:
                out["correct"] += 1
            elif exact_types:
                out["type"] += 1
            elif pt in overlap_types:
                out["boundary"] += 1
            elif overlap_types:
                out["boundary+type"] += 1
            else:
                out["spurious"] += 1
        out["missed"] += touched.count(False)
    if hallucinated_counts is not None:
        if len(hallucinated_counts) != len(gold_spans_list):
            raise IEError(
                f"hallucinated_counts has {len(hallucinated_counts)} entries for "
                f"{len(gold_spans_list)} sentences; pass one count per sentence"
            )
        out["hallucinated"] = int(sum(int(c) for c in hallucinated_counts))
    return out


# -------------------------------------------------------------------- prompts
def ner_prompt(
    tokens: Sequence[str], types: Sequence[str], instruction: str | None = None
) -> tuple[str, str]:
    """``(instruction, input)`` for an instruction-input-output NER triple.

    ``{types}`` in the instruction (default :data:`DEFAULT_NER_INSTRUCTION`) is replaced
    by the types joined with ", " (plain replacement, so other braces are safe).
    """
    types = [str(t) for t in types]
    if not types:
        raise IEError("ner_prompt needs at least one entity type; pass e.g. ['PER', 'ORG', 'LOC']")
    template = DEFAULT_NER_INSTRUCTION if instruction is None else instruction
    return template.replace("{types}", ", ".join(types)), " ".join(tokens)
