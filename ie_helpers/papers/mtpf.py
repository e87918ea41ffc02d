"""MTPF-TPL (arXiv 2510.07566): multi-task pre-finetuning of a small encoder with task-primary LoRA modules.

Pre-finetuning trains one shared backbone on two objectives:
- NER by distillation: a teacher NER encoder embeds every word of a corpus drawn from training splits only;
  mini-batch k-means turns the embeddings into cluster ids (pseudo-labels); the student predicts them.
- classification by contrast: InfoNCE with in-batch negatives on paraphrase pairs (WebNLG texts of one
  triple set).
Each task family has its own LoRA module (a peft named adapter) on the last layers: the backbone receives
both losses, each adapter only its own (``backward_family`` activates one adapter per loss). Downstream, a
family's adapter is merged into the backbone; NER tasks are LoRA-fine-tuned as token classifiers and
classification tasks read by a linear probe on frozen mean-pooled embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ie_helpers import data, engine, ner, verdicts
from ie_helpers.embeddings import linear_probe, payload_key, sentence_embeddings, word_embeddings

__all__ = ["word_embeddings", "sentence_embeddings", "linear_probe", "payload_key"]  # the notebook reads them here
from ie_helpers.errors import IEError
from ie_helpers.report import Claim

FAMILIES = ("ner", "cls")


@dataclass(frozen=True)
class Variant:
    losses: tuple[str, ...]  # pre-finetuning objectives
    adapters: bool  # task-primary LoRA modules, one per objective
    layers: int | None = 2  # last layers carrying the adapters (None = every layer)
    label: str = ""


VARIANTS = {
    "base": Variant((), False, label="base model (no pre-finetuning)"),
    "ner_only": Variant(("ner",), True, label="NER pre-finetuning only"),
    "cls_only": Variant(("cls",), True, label="classification pre-finetuning only"),
    "naive": Variant(("ner", "cls"), False, label="naive multi-task (no task-primary modules)"),
    "tpl": Variant(("ner", "cls"), True, label="MTPF-TPL (adapters on the last 2 layers)"),
    "tpl_1": Variant(("ner", "cls"), True, 1, "MTPF-TPL, adapters on the last layer"),
    "tpl_4": Variant(("ner", "cls"), True, 4, "MTPF-TPL, adapters on the last 4 layers"),
    "tpl_all": Variant(("ner", "cls"), True, None, "MTPF-TPL, adapters on every layer"),
}
# which downstream family each variant is evaluated on (single-task variants only on their own family)
DOWNSTREAM = {"base": FAMILIES, "ner_only": ("ner",), "cls_only": ("cls",), "naive": FAMILIES, "tpl": FAMILIES,
              "tpl_1": ("ner",), "tpl_4": ("ner",), "tpl_all": ("ner",)}


def check_variants(names: Sequence[str]) -> list[str]:
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise IEError(f"unknown variant(s) {', '.join(bad)}: choose from {', '.join(VARIANTS)}")
    return list(names)


# --------------------------------------------------------------------------- data


def with_tags(sentence: dict) -> tuple[dict, int]:
    """A sentence with IOB2 ``tags`` (from its entity spans when it has none) and how many overlapping spans
    were dropped to make the tags (IOB2 cannot nest; the longer-first, leftmost span is kept)."""
    if "tags" in sentence:
        return {"tokens": sentence["tokens"], "tags": ner.io_to_bio(sentence["tags"])}, 0
    kept, taken = [], set()
    for s, e, t in sorted(sentence["entities"], key=lambda x: (x[0], -(x[1] - x[0]))):
        if taken.isdisjoint(range(s, e)):
            kept.append((s, e, str(t).replace(" ", "_")))
            taken.update(range(s, e))
    return ({"tokens": sentence["tokens"], "tags": ner.bio_from_spans(len(sentence["tokens"]), kept)},
            len(sentence["entities"]) - len(kept))


def load_ner_task(name: str, *, allow_synthetic: bool = False, seed: int = 1234) -> dict:
    """Train/dev/test IOB2 sentences of one NER dataset (a dataset without dev holds out 10% of train)."""
    splits, provenance, dropped, notes = {}, [], 0, []
    have = data.DATASETS.get(name, {}).get("splits", {})
    for split in ("train", "dev", "test"):
        if split == "dev" and "dev" not in have:
            continue
        items, prov = data.load_split(name, split, allow_synthetic=allow_synthetic)
        tagged = [with_tags(s) for s in items]
        splits[split] = [s for s, _ in tagged]
        dropped += sum(n for _, n in tagged)
        provenance.append(prov)
    if "dev" not in splits:
        from ie_helpers.ner_data import split_holdout

        splits["train"], splits["dev"] = split_holdout(splits["train"], 0.1, seed)
        notes.append(f"{name}: no dev split, {len(splits['dev'])} training sentences held out as dev")
    if dropped:
        notes.append(f"{name}: {dropped} overlapping entity spans dropped (IOB2 cannot nest)")
    return {**splits, "provenance": provenance, "notes": notes}


def load_cls_task(name: str) -> dict:
    splits, provenance = {}, []
    for split in ("train", "dev", "test"):
        items, prov = data.load_split(name, split)
        splits[split] = items
        provenance.append(prov)
    return {**splits, "provenance": provenance, "notes": []}


def text_key(text_or_tokens) -> str:
    """Normalised sentence text for leakage checks (case, spacing and tokenisation do not matter)."""
    text = text_or_tokens if isinstance(text_or_tokens, str) else " ".join(text_or_tokens)
    return "".join(ch for ch in text.lower() if ch.isalnum())


def held_out_keys(ner_tasks: dict, cls_tasks: dict) -> set[str]:
    """Every dev and test sentence of every downstream task: none may enter pre-finetuning or the teacher."""
    keys = {text_key(s["tokens"]) for t in ner_tasks.values() for sp in ("dev", "test") for s in t[sp]}
    keys |= {text_key(s["text"]) for t in cls_tasks.values() for sp in ("dev", "test") for s in t[sp]}
    return keys


def sample_without_leaks(pool: Sequence, n: int, seed: int, held_out: set[str], key) -> tuple[list, int]:
    """Up to ``n`` items of a seeded permutation of ``pool`` whose text is not held out, and how many were refused."""
    order = np.random.default_rng(seed).permutation(len(pool))
    kept, refused = [], 0
    for i in order:
        if len(kept) >= n:
            break
        if key(pool[i]) in held_out:
            refused += 1
        else:
            kept.append(pool[i])
    return kept, refused


def training_sample(tasks: dict, per_task: int, seed: int, held_out: set[str]) -> tuple[list[dict], int]:
    """``per_task`` training sentences of every task (task k drawn with seed ``seed + k``), none held out."""
    sentences, refused = [], 0
    for k, d in enumerate(tasks.values()):
        kept, n = sample_without_leaks(d["train"], per_task, seed + k, held_out, key=lambda s: text_key(s["tokens"]))
        sentences += kept
        refused += n
    return sentences, refused


def paraphrase_pairs(webnlg_items: Sequence[dict], n: int, seed: int, held_out: set[str]) -> tuple[list, int]:
    """One (text, text, category) pair per WebNLG entry with two different lexicalisations of its triple set:
    in-batch negatives are then other triple sets, never a paraphrase of the anchor."""
    pool = [(e["texts"][0], e["texts"][1], e.get("category") or "") for e in webnlg_items
            if len(e["texts"]) >= 2 and text_key(e["texts"][0]) != text_key(e["texts"][1])]
    return sample_without_leaks(pool, n, seed, held_out,
                                key=lambda p: text_key(p[0]) if text_key(p[0]) in held_out else text_key(p[1]))


# --------------------------------------------------------------------------- teacher and pseudo-labels


def cluster_words(vectors: np.ndarray, k: int, seed: int):
    """Mini-batch k-means over word embeddings (the paper: 200 clusters)."""
    from sklearn.cluster import MiniBatchKMeans

    k = min(k, len(vectors))
    return MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=2048, n_init=3).fit(vectors)


def purity(clusters: Sequence[int], labels: Sequence[str]) -> float:
    """Share of words whose cluster's majority label is their own label."""
    table = pd.crosstab(pd.Series(clusters, name="c"), pd.Series(labels, name="t"))
    return float(table.max(axis=1).sum() / max(1, len(clusters)))


def purity_table(clusters: Sequence[int], tags: Sequence[str]) -> dict:
    """Purity of clusters against gold entity types: over all words, and over words inside entities only."""
    types = [t.split("-", 1)[-1] if t != "O" else "O" for t in tags]
    inside = [(c, t) for c, t in zip(clusters, types) if t != "O"]
    return {"words": len(types), "entity_words": len(inside), "purity_all_words": purity(clusters, types),
            "purity_entity_words": purity([c for c, _ in inside], [t for _, t in inside]) if inside else float("nan"),
            "majority_baseline_entity_words": (pd.Series([t for _, t in inside]).value_counts().iloc[0] / len(inside)
                                               if inside else float("nan"))}


# --------------------------------------------------------------------------- downstream


def class_ids(gold: Sequence[str], pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(items, 2) gold and predicted class ids for ``engine``'s macro_f1 statistic."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([[index[g], index.get(p, -1)] for g, p in zip(gold, pred)], dtype=float)


def ner_counts(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> np.ndarray:
    """(sentences, 3) exact-span tp/fp/fn counts (seqeval's strict IOB2 spans) for ``engine``'s micro_f1."""
    return engine.counts_from_spans([ner.spans_from_bio(g) for g in gold_tags],
                                    [ner.spans_from_bio(p) for p in pred_tags])


def ten_percent(n: int) -> int:
    return max(1, math.ceil(0.1 * n))


# --------------------------------------------------------------------------- claims


def claims(evidence: dict[str, verdicts.Evidence], *, n_ner_tasks: int, n_cls_tasks: int,
           floor_beaten: dict[str, bool], random_weights: bool, tuned_on_dev: bool, margin: float,
           backbone: str) -> list[Claim]:
    """M1-M5 from the task-averaged effects in ``evidence`` (keys like 'M1 ner'); Bonferroni inside each claim is
    applied by the caller through the CI level of each comparison."""
    def comp(key, **kw):
        if key not in evidence:
            return verdicts.Verdict(verdicts.NOT_TESTABLE, f"{key}: not run in this profile")
        fam = key.split()[-1]
        return verdicts.comparison(evidence[key], random_weights=random_weights,
                                   floor_beaten=floor_beaten.get(fam, True), **kw)

    def text(key, v):
        e = evidence.get(key)
        where = f"{e.effect:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]" if e else "—"
        return where, f"{key}: {v.verdict} ({v.reason})"

    out = []
    stand = f"stand-in backbone {backbone}, {n_ner_tasks} NER and {n_cls_tasks} classification tasks of the mirror"
    for cid, paper, parts in (
        ("M1", "+0.8 NER, +8.8 classification points over the base model (average over tasks)",
         [("M1 ner", {"magnitude": 0.008}), ("M1 cls", {"magnitude": 0.088})]),
        ("M2", "MTPF-TPL matches individually pre-finetuned models with one shared backbone",
         [("M2 ner", {"decision": -margin}), ("M2 cls", {"decision": -margin})]),
        ("M3", "naive multi-task pre-finetuning suffers interference (below individual pre-finetuning)",
         [("M3 ner", {"claimed": "below"}), ("M3 cls", {"claimed": "below"})]),
        ("M4", "LoRA modules on the last 2 layers are best for downstream NER (vs 1, 4, all layers)",
         [("M4 vs 1 ner", {}), ("M4 vs 4 ner", {}), ("M4 vs all ner", {})]),
        ("M5", "+8.4 F1 from NER pre-finetuning with 10% of the downstream training data",
         [("M5 ner", {"magnitude": 0.084})]),
    ):
        judged = [(k, comp(k, **kw)) for k, kw in parts]
        if cid == "M3":  # interference in either family is the claim; it fails only if neither shows it
            found = {v.verdict for _, v in judged}
            verdict = (verdicts.all_of([v for _, v in judged]) if verdicts.NOT_REPLICATED in found and len(found) == 1
                       else max(found, key=_M3_ORDER.index))
        else:
            verdict = verdicts.all_of([v for _, v in judged])
        measured = "; ".join(f"{k}: {text(k, v)[0]}" for k, v in judged)
        note = " | ".join(text(k, v)[1] for k, v in judged) + f". {stand}."
        out.append(Claim(cid, paper, measured, verdict, note))
    return out


_M3_ORDER = [verdicts.NOT_TESTABLE, verdicts.NOT_REPLICATED, verdicts.INCONCLUSIVE, verdicts.DIRECTION_ONLY,
             verdicts.REPLICATED]
