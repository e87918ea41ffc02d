"""Generative NER with LLMs: prompts, training records, data loading and scoring (paper-agnostic;
the financial-NER and LoRA+ studies live in ``ie_helpers.papers``).

A sentence is ``{"tokens": [...], "tags": [...IOB2...]}`` (what ``data.load_split`` returns for
CoNLL files; IO tags are already converted).  The model sees readable type names
(``PER`` → ``person``) and answers with the financial paper's format, a JSON list of
``{"type", "text"}``; predictions are mapped back to the dataset's tags, aligned to tokens and
scored with seqeval strict IOB2 (``ner.score_ner``), exactly like the encoder baseline's tags.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ie_helpers import ner, parsing
from ie_helpers.type_f1 import bootstrap_type_f1, type_f1_counts  # noqa: F401 (re-exported)
from ie_helpers.errors import IEError
from ie_helpers.ner_data import (DATASET_NOTES, data_statement, load_ner_data,  # noqa: F401 (re-exported)
                                 split_holdout, training_sample)
from ie_helpers.tasks import SYSTEM_PROMPT, Example, prompt_messages, to_prompt_completion

# Readable names help zero-shot models; tags not listed here are shown as they are.
DEFAULT_LABEL_NAMES = {"PER": "person", "ORG": "organization", "LOC": "location", "MISC": "miscellaneous",
                       "Disease": "disease", "Chemical": "chemical",
                       "Peop": "person", "Org": "organization", "Loc": "location", "Other": "other"}


# --------------------------------------------------------------------------- labels and records

def entity_types(sentences: Sequence[dict]) -> list[str]:
    """Sorted entity types (tags without B-/I-) that occur in the sentences."""
    return sorted({t for s in sentences for *_, t in ner.spans_from_bio(ner.io_to_bio(s["tags"]))})


def type_counts(sentences: Sequence[dict]) -> dict[str, int]:
    """Number of gold mentions per type."""
    counts: dict[str, int] = {}
    for s in sentences:
        for *_, t in ner.spans_from_bio(ner.io_to_bio(s["tags"])):
            counts[t] = counts.get(t, 0) + 1
    return dict(sorted(counts.items()))


def readable_names(types: Sequence[str], label_names: dict | None = None) -> dict[str, str]:
    """Tag → name shown to the model (``label_names`` over the defaults; unknown tags unchanged); must be 1:1."""
    given = {**DEFAULT_LABEL_NAMES, **(label_names or {})}
    names = {t: str(given.get(t, t)) for t in types}
    folded = [n.casefold() for n in names.values()]
    if len(set(folded)) != len(folded):
        raise IEError(f"label_names map two types to the same name ({names}); give every type its own name")
    return names


def gold_spans(sentence: dict) -> list[ner.Span]:
    """The sentence's gold spans ``(start, end_exclusive, tag type)`` (IO tags converted first)."""
    return ner.spans_from_bio(ner.io_to_bio(sentence["tags"]))


def ner_example(sentence: dict, types: Sequence[str], label_names: dict | None = None,
                instruction: str | None = None) -> Example:
    """Instruction–input–output triple of one sentence; the output names types readably.

    ``instruction`` (with ``{types}``) replaces ``ner.DEFAULT_NER_INSTRUCTION``; the answer format stays the same.
    """
    names = readable_names(types, label_names)
    instruction, text = ner.ner_prompt(sentence["tokens"], [names[t] for t in types], instruction)
    spans = [(s, e, names.get(t, t)) for s, e, t in gold_spans(sentence)]
    return Example("ner", instruction, f"Text: {text}", ner.entities_json(sentence["tokens"], spans))


def ner_records(sentences: Sequence[dict], types: Sequence[str], label_names: dict | None = None,
                instruction: str | None = None) -> list[dict]:
    """Prompt–completion records for ``train.train_sft``; the completion is a JSON list of {"type", "text"}."""
    return [to_prompt_completion(ner_example(s, types, label_names, instruction)) for s in sentences]


def ner_messages(sentence: dict, types: Sequence[str], label_names: dict | None = None,
                 instruction: str | None = None) -> list[dict]:
    """The inference prompt: the same system and user turns the fine-tuned model was trained on."""
    ex = ner_example(sentence, types, label_names, instruction)
    return prompt_messages(ex.instruction, ex.input, SYSTEM_PROMPT)


def few_shot_messages(sentence: dict, demos: Sequence[dict], types: Sequence[str],
                      label_names: dict | None = None, instruction: str | None = None) -> list[dict]:
    """``ner_messages`` with the demonstrations as earlier user/assistant turns (gold answers)."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for d in demos:
        ex = ner_example(d, types, label_names, instruction)
        msgs += [{"role": "user", "content": f"{ex.instruction}\n\n{ex.input}"},
                 {"role": "assistant", "content": ex.output}]
    return msgs + ner_messages(sentence, types, label_names, instruction)[1:]


def select_demonstrations(sentences: Sequence[dict], k: int, seed: int = 0, max_tokens: int = 40) -> list[dict]:
    """k short training sentences that cover as many types as possible (shortest first, to keep prompts short),
    plus one with no entity when k >= 3."""
    if k <= 0:
        return []
    pool = [s for s in sentences if 0 < len(s["tokens"]) <= max_tokens] or list(sentences)
    random.Random(seed).shuffle(pool)
    empty = [s for s in pool if not gold_spans(s)]
    want_empty = k >= 3 and bool(empty)
    chosen, covered = [], set()
    for _ in range(k - int(want_empty)):
        rest = [s for s in pool if gold_spans(s) and not any(s is c for c in chosen)]
        if not rest:
            break
        best = max(rest, key=lambda s: (len({t for *_, t in gold_spans(s)} - covered), -len(s["tokens"])))
        chosen.append(best)
        covered |= {t for *_, t in gold_spans(best)}
    if want_empty:
        chosen.append(min(empty, key=lambda s: len(s["tokens"])))
    return chosen


def lexicon_tags(train_sentences: Sequence[dict], sentences: Sequence[dict]) -> list[list[str]]:
    """IOB2 tags of a baseline that only memorises: every training mention (its exact tokens) with its most frequent
    training type, matched longest first, left to right. A system below it has not learned more than the list."""
    votes: dict[tuple, Counter] = {}
    for s in train_sentences:
        for a, b, t in gold_spans(s):
            votes.setdefault(tuple(s["tokens"][a:b]), Counter())[t] += 1
    lexicon = {words: c.most_common(1)[0][0] for words, c in votes.items()}
    longest = max(map(len, lexicon), default=0)
    tags = []
    for s in sentences:
        toks, spans, i = s["tokens"], [], 0
        while i < len(toks):
            hit = next(((n, lexicon[tuple(toks[i:i + n])]) for n in range(min(longest, len(toks) - i), 0, -1)
                        if tuple(toks[i:i + n]) in lexicon), None)
            if hit:
                spans.append((i, i + hit[0], hit[1]))
            i += hit[0] if hit else 1
        tags.append(ner.bio_from_spans(len(toks), spans))
    return tags


def record_length(record: dict, tokenizer) -> int:
    """Tokens of a whole prompt–completion record under the model's chat template."""
    ids = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def filter_by_length(sentences: Sequence[dict], types: Sequence[str], tokenizer, max_length: int,
                     label_names: dict | None = None, instruction: str | None = None) -> tuple[list[dict], int]:
    """Sentences whose gold record fits ``max_length`` tokens (no truncated JSON targets), and how many were dropped."""
    kept = [s for s, r in zip(sentences, ner_records(sentences, types, label_names, instruction))
            if record_length(r, tokenizer) <= max_length]
    return kept, len(sentences) - len(kept)


def predict_entities(model, tokenizer, sentences: Sequence[dict], types: Sequence[str], *,
                     label_names: dict | None = None, instruction: str | None = None,
                     demos: Sequence[dict] | None = None, max_new_tokens: int = 96, batch_size: int = 16,
                     stats=None, desc: str = "") -> list[str]:
    """Raw greedy outputs, zero-shot (no demos) or few-shot; score them with :func:`score_generated`."""
    from ie_helpers.generate import generate

    prompts = [few_shot_messages(s, demos, types, label_names, instruction) if demos
               else ner_messages(s, types, label_names, instruction) for s in sentences]
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                    desc=desc or "NER", stats=stats)


def predict_entities_cached(model_name: str, run=None, sentences: Sequence[dict] = (), types: Sequence[str] = (), *,
                            snapshot: int | None = None, label_names: dict | None = None,
                            instruction: str | None = None, demos: Sequence[dict] | None = None,
                            max_new_tokens: int = 96, batch_size: int = 16, stats=None, desc: str = "") -> list[str]:
    """:func:`predict_entities` for a model name and an optional training run (``train.TrainResult``; an
    adapter snapshot by its step), stored on disk under the weights, the run, the prompts and the decoding
    settings: a rerun of a notebook generates nothing it has generated before."""
    from ie_helpers import generate, models, train

    prompts = [few_shot_messages(s, demos, types, label_names, instruction) if demos
               else ner_messages(s, types, label_names, instruction) for s in sentences]
    payload = {"model": models.resolve_model(model_name).fingerprint, "run": run.key if run is not None else None,
               "snapshot": snapshot, "prompts": prompts, "max_new_tokens": max_new_tokens, "batch_size": batch_size}

    def compute():
        model, tokenizer, _ = train.load_for_inference(model_name, run, snapshot=snapshot)
        return generate.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 desc=desc or "NER", stats=stats)

    return generate.cached(payload, compute)


# --------------------------------------------------------------------------- scoring

@dataclass
class NERScore:
    """Everything measured for one system on one evaluation set."""
    pred_tags: list[list[str]]
    metrics: dict
    per_type: pd.DataFrame
    errors: dict
    per_sentence: pd.DataFrame = field(default_factory=pd.DataFrame)


def _tag_type(raw: str, back: dict[str, str]) -> str:
    """A predicted type → dataset tag: readable or tag name (case-insensitive), else the raw type without spaces."""
    key = " ".join(str(raw).split()).casefold()
    return back.get(key) or re.sub(r"\s+", "_", str(raw).strip()) or "UNKNOWN"


def score_tags(pred_tags: Sequence[Sequence[str]], sentences: Sequence[dict], *,
               hallucinated: Sequence[int] | None = None, per_sentence: pd.DataFrame | None = None,
               rare: Sequence[str] = (), n_boot: int = 1000, seed: int = 0) -> NERScore:
    """seqeval strict scores of word-level IOB2 predictions (generated or encoder), with CIs and error breakdown."""
    gold = [ner.io_to_bio(s["tags"]) for s in sentences]
    pred = [list(p) for p in pred_tags]  # scored as they are: seqeval strict ignores stray I- tags
    if len(pred) != len(gold):
        raise IEError(f"{len(pred)} predictions for {len(gold)} sentences; pass one per sentence")
    res = ner.score_ner(gold, pred)
    micro, lo, hi = ner.bootstrap_f1_ci(gold, pred, n_boot=n_boot, seed=seed)
    typed = bootstrap_type_f1(gold, pred, rare, n_boot=n_boot, seed=seed)
    gold_sp = [ner.spans_from_bio(g) for g in gold]
    pred_sp = [ner.spans_from_bio(p) for p in pred]
    errors = ner.error_breakdown(gold_sp, pred_sp, hallucinated)
    ps = per_sentence.copy() if per_sentence is not None else pd.DataFrame({"sentence": range(len(gold))})
    ps["n_gold"] = [len(g) for g in gold_sp]
    ps["n_pred"] = [len(p) for p in pred_sp]
    ps["f1"] = ner.per_sentence_f1(gold_sp, pred_sp)
    n_halluc = int(sum(hallucinated or []))
    # the collapse a small generative tagger falls into: no mention at all where the gold has one
    silent = [ng > 0 and npred == 0 and not h
              for ng, npred, h in zip(ps["n_gold"], ps["n_pred"], hallucinated or [0] * len(gold))]
    tp, n_pred, n_gold = res["n_correct"], res["n_pred"] + n_halluc, res["n_gold"]
    metrics = {"micro_precision": res["micro_precision"], "micro_recall": res["micro_recall"],
               "micro_f1": micro, "micro_lo": lo, "micro_hi": hi,
               # hallucinated mentions have no span, so seqeval cannot see them; here they count as false positives
               "micro_f1_halluc_fp": 2 * tp / (n_pred + n_gold) if tp else 0.0,
               "macro_f1": typed["macro"], "macro_lo": typed["macro_lo"], "macro_hi": typed["macro_hi"],
               "invented_types": ", ".join(typed["invented_types"]),
               "rare_macro_f1": typed["rare_macro"], "rare_macro_lo": typed["rare_macro_lo"],
               "rare_macro_hi": typed["rare_macro_hi"], "rare_minus_micro": typed["rare_minus_micro"],
               "rare_minus_micro_lo": typed["rare_minus_micro_lo"],
               "rare_minus_micro_hi": typed["rare_minus_micro_hi"], "rare_types": ", ".join(typed["rare_types"]),
               "rare_support": sum(t in set(rare) for g in gold_sp for *_, t in g),
               "n_sentences": len(gold), "n_gold": res["n_gold"], "n_pred": res["n_pred"],
               "n_correct": res["n_correct"], "hallucinated": n_halluc,
               "entity_sentences": int((ps["n_gold"] > 0).sum()), "silent_on_entity_sentences": int(sum(silent)),
               "parse_fail_strict": int((ps["parse_strict"] == 0).sum()) if "parse_strict" in ps else 0,
               "parse_fail_lenient": int((ps["parse_lenient"] == 0).sum()) if "parse_lenient" in ps else 0,
               "unknown_type": int(ps["unknown_type"].sum()) if "unknown_type" in ps else 0}
    return NERScore(pred, metrics, res["per_type"], errors, ps)


def outputs_to_tags(outputs: Sequence, sentences: Sequence[dict], types: Sequence[str],
                    label_names: dict | None = None) -> tuple[list[list[str]], pd.DataFrame]:
    """Parse each output leniently, map types back to tags, align mentions to tokens; never raises on bad output.

    Returns the predicted IOB2 tags and one row per sentence with parse_strict, parse_lenient,
    parse_error, n_mentions, n_hallucinated (mentions not found in the sentence) and unknown_type
    (mentions whose type is none of ``types``; kept, so they count as errors).
    """
    names = readable_names(types, label_names)
    back = {**{t.casefold(): t for t in types}, **{n.casefold(): t for t, n in names.items()}}
    tags, rows = [], []
    for k, (out, sent) in enumerate(zip(outputs, sentences)):
        pairs, result = parsing.parse_entities(out)
        mentions = [(_tag_type(t, back), text) for t, text in pairs]
        spans, missing = ner.align_mentions(sent["tokens"], mentions)
        tags.append(ner.bio_from_spans(len(sent["tokens"]), spans))
        rows.append({"sentence": k, "parse_strict": float(result.strict), "parse_lenient": float(result.lenient),
                     "parse_error": result.error or "", "n_mentions": len(pairs), "n_hallucinated": len(missing),
                     "unknown_type": sum(t not in types for t, _ in mentions)})
    return tags, pd.DataFrame(rows)


def score_generated(outputs: Sequence, sentences: Sequence[dict], types: Sequence[str] | None = None, *,
                    label_names: dict | None = None, rare: Sequence[str] = (), n_boot: int = 1000,
                    seed: int = 0) -> NERScore:
    """Score raw model outputs against the sentences' gold tags (see :func:`outputs_to_tags`, :func:`score_tags`).

    ``types`` defaults to the gold types of ``sentences``. Malformed, truncated or None outputs parse
    to no entity (counted as parse failures); mentions absent from the sentence are counted as
    hallucinated and do not become spans.
    """
    if len(outputs) != len(sentences):
        raise IEError(f"{len(outputs)} outputs for {len(sentences)} sentences; pass one output per sentence")
    types = list(types) if types is not None else entity_types(sentences)
    tags, rows = outputs_to_tags(outputs, sentences, types, label_names)
    return score_tags(tags, sentences, hallucinated=rows["n_hallucinated"].tolist(), per_sentence=rows,
                      rare=rare, n_boot=n_boot, seed=seed)


def sentence_counts(score: NERScore, sentences: Sequence[dict], *, etype: str | None = None,
                    hallucinated_fp: bool = True) -> np.ndarray:
    """(sentences, 3) strict-span tp / fp / fn of one scored system: the input of ``engine`` statistics over seeds
    and sentences. Hallucinated mentions (no span in the sentence) count as false positives unless
    ``hallucinated_fp`` is off; with ``etype``, only spans of that type count (hallucinated ones have no span)."""
    gold = [ner.spans_from_bio(ner.io_to_bio(s["tags"])) for s in sentences]
    pred = [ner.spans_from_bio(p) for p in score.pred_tags]
    counts = np.zeros((len(gold), 3))
    halluc = (score.per_sentence["n_hallucinated"].to_numpy()
              if hallucinated_fp and etype is None and "n_hallucinated" in score.per_sentence else np.zeros(len(gold)))
    for k, (g, p) in enumerate(zip(gold, pred)):
        g, p = set(g), set(p)
        if etype is not None:
            g, p = {sp for sp in g if sp[-1] == etype}, {sp for sp in p if sp[-1] == etype}
        counts[k] = len(g & p), len(p - g) + halluc[k], len(g - p)
    return counts


def pooled_micro_f1(systems: Sequence[NERScore], sentences: Sequence[dict], *, hallucinated_fp: bool = True,
                    n_boot: int = 1000) -> tuple[float, float, float]:
    """(mean, lo, hi): micro-F1 of one system over its seeds (one scored run per seed), mean over seeds with a 95%
    CI over seeds and test sentences (``engine.seed_item_bootstrap`` on ``sentence_counts``)."""
    from ie_helpers import engine

    counts = np.stack([sentence_counts(s, sentences, hallucinated_fp=hallucinated_fp) for s in systems])
    return engine.seed_item_bootstrap(counts, stat="micro_f1", n_boot=n_boot)


def rare_types(train_sentences: Sequence[dict], share: float = 0.15) -> list[str]:
    """Types with less than ``share`` of the training mentions (the paper's rare Product/Location are ~7%)."""
    counts = type_counts(train_sentences)
    total = sum(counts.values())
    return [t for t, c in counts.items() if total and c / total < share]


def systems_table(scores: dict[str, NERScore]) -> pd.DataFrame:
    """One row per system: micro/macro P/R/F1 with CIs, counts, parse failures, hallucinations."""
    cols = ["micro_precision", "micro_recall", "micro_f1", "micro_lo", "micro_hi", "micro_f1_halluc_fp", "macro_f1",
            "macro_lo", "macro_hi", "invented_types", "n_sentences", "n_gold", "n_pred", "n_correct", "hallucinated",
            "entity_sentences", "silent_on_entity_sentences", "parse_fail_strict", "parse_fail_lenient", "unknown_type",
            "rare_types", "rare_support", "rare_macro_f1", "rare_macro_lo", "rare_macro_hi", "rare_minus_micro", "rare_minus_micro_lo",
            "rare_minus_micro_hi"]
    return pd.DataFrame([{"system": name, **{c: s.metrics[c] for c in cols}} for name, s in scores.items()])


def per_type_table(scores: dict[str, NERScore], train_counts: dict[str, int], rare: Sequence[str]) -> pd.DataFrame:
    """Per-type P/R/F1 of every system over the gold types, with support, training-mention counts and the rare
    flag (F3)."""
    frames = [s.per_type.assign(system=name) for name, s in scores.items() if len(s.per_type)]
    if not frames:
        return pd.DataFrame(columns=["system", "type", "precision", "recall", "f1", "support", "train_mentions",
                                     "rare"])
    df = pd.concat(frames, ignore_index=True)
    df = df[df["support"] > 0]  # gold types only: invented ones are listed in systems_table's invented_types
    df["train_mentions"] = df["type"].map(train_counts).fillna(0).astype(int)
    df["rare"] = df["type"].isin(list(rare))
    return df[["system", "type", "precision", "recall", "f1", "support", "train_mentions", "rare"]]


def errors_table(scores: dict[str, NERScore]) -> pd.DataFrame:
    """Error categories per system (``ner.error_breakdown``): boundary, type, spurious, hallucinated, missed."""
    return pd.DataFrame([{"system": name, **s.errors} for name, s in scores.items()])


def paired_tests(sentences: Sequence[dict], scores: dict[str, NERScore], system: str, baselines: Sequence[str],
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired bootstrap of micro-F1(system) − micro-F1(baseline) over the same sentences; Holm-adjusted p."""
    from ie_helpers.stats import adjust_pvalues

    gold = [ner.io_to_bio(s["tags"]) for s in sentences]
    rows = []
    for base in baselines:
        if base == system or base not in scores or system not in scores:
            continue
        r = ner.paired_bootstrap_f1(gold, scores[system].pred_tags, scores[base].pred_tags, n_boot=n_boot, seed=seed)
        rows.append({"system": system, "baseline": base, "f1_system": r["f1_a"], "f1_baseline": r["f1_b"],
                     "diff": r["diff"], "lo": r["lo"], "hi": r["hi"], "p_value": r["p_value"]})
    out = pd.DataFrame(rows, columns=["system", "baseline", "f1_system", "f1_baseline", "diff", "lo", "hi",
                                      "p_value"])
    out["p_holm"] = adjust_pvalues(out["p_value"].to_numpy()) if len(out) else []
    return out


def evaluate_module_check(scores: dict, sentences_of) -> pd.DataFrame:
    """Every system's strict span micro-F1 recomputed by the kit's local ``evaluate`` module ``span_f1`` (the one a
    user loads with ``evaluate.load``), beside the figure the report uses; an IEError if any differs.
    ``sentences_of(name)``: the sentences a system was scored on."""
    from ie_helpers.metrics import evaluate_metric

    span_f1 = evaluate_metric("span_f1")
    rows = []
    for name, score in scores.items():
        gold = [ner.io_to_bio(s["tags"]) for s in sentences_of(name)]
        via = span_f1.compute(predictions=score.pred_tags, references=gold)
        rows.append({"system": str(name), "micro_f1 (report)": score.metrics["micro_f1"],
                     "micro_f1 (evaluate span_f1)": via["micro_f1"]})
        if abs(via["micro_f1"] - score.metrics["micro_f1"]) > 1e-12:
            raise IEError(f"{name}: span_f1 module gives {via['micro_f1']}, the report {score.metrics['micro_f1']}")
    return pd.DataFrame(rows)
