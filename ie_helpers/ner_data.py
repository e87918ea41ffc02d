"""NER corpora for the generative-NER notebooks: loading a registered dataset or a user's CoNLL file with its
provenance, the paragraph a report prints about it, and the training samples drawn from it."""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from ie_helpers import data, ner
from ie_helpers.errors import IEError

DATASET_NOTES = {
    "fin-sec": ("fin-sec: SEC filings (loan agreements) annotated for NER by Alvarado et al. (2015), public, "
                "CC-BY 3.0; 4 types PER/ORG/LOC/MISC (MISC is near-empty) with IO tags converted to IOB2. "
                "The paper's own corpus (1,693 sentences, 7 types: Company, Date, Location, Money, Person, "
                "Product, Quantity) is private, so this public financial corpus stands in for it."),
    "wnut17": ("wnut17: WNUT-17 emerging entities in social-media text, 6 types, BIO, CC-BY 4.0. Much harder than "
               "news NER: absolute F1 is far below CoNLL-2003 figures."),
    "conll04": ("conll04: CoNLL04 (Roth & Yih 2004; news sentences, 4 types Peop/Org/Loc/Other, every sentence "
                "holds an entity), from the unified JSON of the mirror with IOB2 tags made from its spans. It stands "
                "in for CoNLL-2003 (the paper's general-domain set, not in the offline mirror): the same news domain "
                "and three of its four types."),
    "ncbi-disease": ("ncbi-disease: NCBI-disease (PubMed abstracts, 1 type Disease), BIO, CC-BY 4.0. The paper does "
                     "not name its biomedical set."),
}


def _has_entity(sentence: dict) -> bool:
    return bool(ner.spans_from_bio(ner.io_to_bio(sentence["tags"])))


def training_sample(sentences: Sequence[dict], n: int, seed: int, *, entity_share: float | None = None,
                    what: str = "training sentences") -> list[dict]:
    """``n`` training sentences, a seeded nested sample. ``entity_share`` is the least share of them that holds a
    gold entity: a corpus with fewer is resampled so that this share (rounded) has one and the rest none, each
    part nested on its own, so growing ``n`` stays nested; a corpus with more, or None, keeps its own mix.
    Why: where most sentences are empty, the one token that decides between ``[]`` and a first entity is a small
    part of the token-averaged loss, and a small model learns to answer ``[]`` to everything."""
    if entity_share is not None and not 0 < entity_share <= 1:
        raise IEError(f"train_entity_share must be in (0, 1], got {entity_share}; or 'all' for the corpus's own mix")
    with_entity = [s for s in sentences if _has_entity(s)]
    without = [s for s in sentences if not _has_entity(s)]
    if entity_share is None or len(with_entity) >= entity_share * len(sentences):
        return data.nested_sample(list(sentences), n, seed, what=what)
    n_with = round(n * entity_share)
    return (data.nested_sample(with_entity, n_with, seed, what=f"{what} with an entity")
            + data.nested_sample(without, n - n_with, seed, what=f"{what} without an entity"))


def split_holdout(items: Sequence, frac: float, seed: int = 1234) -> tuple[list, list]:
    """(rest, held out): a seeded ``frac`` share (at least 1 item) held out."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_out = max(1, round(frac * len(items))) if len(items) > 1 else 0
    out = set(order[:n_out])
    return [x for i, x in enumerate(items) if i not in out], [items[i] for i in sorted(out)]


def load_ner_data(dataset: str, *, eval_dataset: str | None = None, eval_split: str = "test",
                  need_dev: bool = False, allow_synthetic: bool = False, holdout: float = 0.2,
                  seed: int = 1234) -> dict:
    """Train/test (and dev) sentences of a registered dataset or a user's CoNLL file, with provenance and notes.

    A user file with no ``eval_dataset`` is split: a seeded ``holdout`` share becomes the test set.
    Without a dev split, 10% of train is held out as dev when ``need_dev``.
    """
    train, p_train = data.load_split(dataset, "train", allow_synthetic=allow_synthetic)
    notes, provenance = [], [p_train]
    if eval_dataset is not None:
        test, p_test = data.load_split(eval_dataset, eval_split, allow_synthetic=allow_synthetic)
    elif p_train.source == "user-file":
        train, test = split_holdout(train, holdout, seed)
        p_test = dataclasses.replace(p_train, split=f"test (held out {holdout:.0%})", n_items=len(test))
        p_train.split, p_train.n_items = f"train ({1 - holdout:.0%})", len(train)
        notes.append(f"{dataset} has no separate test file: {len(test)} sentences ({holdout:.0%}, seed {seed}) "
                     "were held out as the test set")
    else:
        test, p_test = data.load_split(dataset, eval_split, allow_synthetic=allow_synthetic)
    provenance.append(p_test)
    dev = None
    if need_dev:
        if p_train.source != "user-file" and "dev" in data.DATASETS.get(dataset, {}).get("splits", {}):
            dev, p_dev = data.load_split(dataset, "dev", allow_synthetic=allow_synthetic)
            provenance.append(p_dev)
        else:
            train, dev = split_holdout(train, 0.1, seed + 1)
            notes.append(f"{len(dev)} training sentences held out as dev (no dev split)")
    train, test, dev = (_tagged(part, notes) for part in (train, test, dev))
    for name, part in (("train", train), ("test", test), ("dev", dev)):
        if part is not None and not part:
            raise IEError(f"{dataset}: the {name} split is empty; give a file with more sentences")
        for k, s in enumerate(part or []):
            if "tags" not in s:
                raise IEError(f"{dataset}: item {k} of {name} has no NER tags; give a CoNLL file (token<TAB>tag)")
    return {"train": train, "dev": dev, "test": test, "provenance": provenance, "notes": notes}


def _tagged(sentences: list[dict] | None, notes: list[str]) -> list[dict] | None:
    """Sentence items that carry entity spans (unified JSON, e.g. CoNLL04) given IOB2 tags; CoNLL items as they are."""
    from ie_helpers.sentence_items import with_bio_tags

    if not sentences or "tags" in sentences[0] or "entities" not in sentences[0]:
        return sentences
    tagged, omitted = with_bio_tags(sentences)
    if omitted:
        notes.append(f"{omitted} nested entity spans left out of the IOB2 tags")
    return tagged


def data_statement(dataset: str, provenance: Sequence, notes: Sequence[str] = ()) -> str:
    """One paragraph for the report: which data this run used and how it relates to the paper's."""
    parts = []
    p0 = provenance[0]
    if p0.source == "user-file":
        parts.append(f"Data: the user's own file `{p0.path}` (sha256 {p0.sha256[:16]}…).")
    elif p0.source == "synthetic":
        parts.append(f"Data: SYNTHETIC template sentences standing in for {dataset} (real files unavailable); "
                     "results say nothing about the paper.")
    else:
        parts.append(f"Data: {DATASET_NOTES.get(dataset, dataset)}")
    parts.append("Splits: " + ", ".join(f"{p.split} {p.n_items} sentences ({p.source})" for p in provenance) + ".")
    parts += [n[:1].upper() + n[1:] + "." for n in notes]
    return " ".join(parts)
