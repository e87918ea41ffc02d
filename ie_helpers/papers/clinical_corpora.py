"""Clinical IE corpora (arXiv 2509.04753): registered stand-ins and user corpora (brat, i2b2, RadGraph, BIO TSV)
as tagged sentence items with provenance, and which datasets each part of the study uses."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

from ie_helpers.errors import IEError
from ie_helpers.relations import HEAD_CLOSE, HEAD_OPEN, TAIL_CLOSE, TAIL_OPEN


def marked_pair_item(text: str, label: str) -> dict | None:
    """A ChemProt-style item (``<< a >>`` and ``[[ b ]]`` in the text) as a sentence item with the two entities
    (types ARG1, ARG2) and one relation ARG1 -> ARG2; None when the markers are not both found once."""
    tokens, spans, open_at = [], {}, {}
    for word in text.split():
        if word in (HEAD_OPEN, TAIL_OPEN):
            open_at[word] = len(tokens)
        elif word in (HEAD_CLOSE, TAIL_CLOSE):
            opener = HEAD_OPEN if word == HEAD_CLOSE else TAIL_OPEN
            if opener not in open_at or opener in spans:
                return None
            spans[opener] = (open_at[opener], len(tokens))
        else:
            tokens.append(word)
    if len(spans) != 2 or any(s >= e for s, e in spans.values()):
        return None
    (hs, he), (ts, te) = spans[HEAD_OPEN], spans[TAIL_OPEN]
    entities = sorted([(hs, he, "ARG1"), (ts, te, "ARG2")])
    return {"tokens": tokens, "entities": entities, "relations": [(hs, he, ts, te, label)]}


def with_tags(items: Sequence[dict]) -> tuple[list[dict], int]:
    """Items with IOB2 ``tags`` (nested entities left out of the tags and counted; ``entities`` stay whole)."""
    from ie_helpers import formats

    return formats.with_bio_tags([{**s, "relations": s.get("relations", [])} for s in items])


def as_items(raw: Sequence[dict]) -> tuple[list[dict], int]:
    """Registered-dataset items of any shape (BIO sentences, span items, marked pairs) as tagged sentence items,
    and how many could not be converted (a marked pair without both markers)."""
    from ie_helpers import formats

    if not raw:
        return [], 0
    if "text" in raw[0]:
        items = [marked_pair_item(x["text"], x["label"]) for x in raw]
        kept = [x for x in items if x is not None]
        return with_tags(kept)[0], len(items) - len(kept)
    if "entities" not in raw[0]:
        return formats.bio_sentences_to_items(raw), 0
    return with_tags(raw)[0], 0


def split_user_items(items: Sequence[dict], seed: int = 1234, test_share: float = 0.2,
                     dev_share: float = 0.1) -> dict[str, list[dict]]:
    """train / dev / test of a user corpus without separate files: a seeded shuffle; test and train get at least
    one item, dev one when at least two remain for training (a tiny corpus may have no dev: nothing is tuned)."""
    if len(items) < 2:
        raise IEError(f"a corpus needs at least 2 sentences to split into train and test, got {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_share * len(items)))
    rest = len(items) - n_test
    n_dev = max(1, round(dev_share * rest)) if rest >= 2 else 0
    pick = lambda idx: [items[i] for i in sorted(idx)]  # noqa: E731 - document order inside each split
    return {"test": pick(order[:n_test]), "dev": pick(order[n_test:n_test + n_dev]),
            "train": pick(order[n_test + n_dev:])}


def path_sha256(path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in path order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def load_registered(name: str, *, allow_synthetic: bool = False) -> dict:
    """train/dev/test items of a mirror dataset with provenance and conversion notes."""
    from ie_helpers import data

    out, provenance, notes = {}, [], []
    for split in ("train", "dev", "test"):
        raw, prov = data.load_split(name, split, allow_synthetic=allow_synthetic)
        out[split], dropped = as_items(raw)
        provenance.append(dict(prov.__dict__))
        notes += list(getattr(prov, "warnings", []) or [])
        if dropped:
            notes.append(f"{name} {split}: {dropped} items without both pair markers dropped")
    return {**out, "provenance": provenance, "notes": notes, "source": "mirror"}


def load_user(name: str, spec: dict) -> dict:
    """A user corpus: ``{"path", "format"}`` (held-out test 20%, dev 10% of the rest) or with ``"test"`` (and
    optionally ``"dev"``) paths in the same format."""
    from ie_helpers import formats

    if not isinstance(spec, dict) or "path" not in spec or "format" not in spec:
        raise IEError(f"corpora.{name} must be a mapping like {{path: /data/n2c2/train, format: brat}} "
                      f"(formats: {', '.join(formats.USER_FORMATS)}; optional test: and dev: paths)")
    unknown = sorted(set(spec) - {"path", "format", "test", "dev"})
    if unknown:
        raise IEError(f"corpora.{name}: unknown key(s) {', '.join(unknown)}; valid: path, format, test, dev")
    parts, counts, provenance = {}, {}, []
    for part in ("path", "test", "dev"):
        if spec.get(part):
            parts[part], counts[part] = formats.load_user_corpus(spec[part], spec["format"])
            provenance.append({"dataset": name, "split": "train" if part == "path" else part, "source": "user-corpus",
                               "path": str(spec[part]), "sha256": path_sha256(spec[part]),
                               "n_items": len(parts[part]), "format": spec["format"]})
    notes = [f"{name} ({'train' if p == 'path' else p}): {_count_note(c)}" for p, c in counts.items()]
    if "test" in parts:
        train, dev = parts["path"], parts.get("dev")
        if dev is None:
            n_dev = max(1, round(0.1 * len(train))) if len(train) >= 2 else 0
            order = list(range(len(train)))
            random.Random(1234).shuffle(order)
            dev_idx = set(order[:n_dev])
            train, dev = ([s for k, s in enumerate(train) if k not in dev_idx],
                          [s for k, s in enumerate(train) if k in dev_idx])
            notes.append(f"{name}: {len(dev)} training sentences (10%, seed 1234) held out as dev")
        split = {"train": train, "dev": dev, "test": parts["test"]}
    else:
        split = split_user_items(parts["path"])
        notes.append(f"{name}: no test files given, so 20% of the sentences (seed 1234) are the test set and 10% "
                     "of the rest dev")
    return {**split, "provenance": provenance, "notes": notes, "source": "user"}


def _count_note(c: dict) -> str:
    return (f"{c.get('documents', 0)} documents, {c.get('sentences', 0)} sentences; "
            f"{c.get('entities_total', 0) - c.get('entities_kept', 0)} of {c.get('entities_total', 0)} entities and "
            f"{c.get('relations_total', 0) - c.get('relations_kept', 0)} of {c.get('relations_total', 0)} relations "
            f"dropped (across a sentence boundary: {c.get('entities_cross_sentence', 0)} entities, "
            f"{c.get('relations_cross_sentence', 0)} relations); {c.get('discontinuous_merged', 0)} discontinuous "
            f"entities merged to their covering span; {c.get('entities_untagged_overlap', 0)} nested entities left "
            "out of the CE tags")


def task_lists(cfg: dict) -> dict:
    """Which datasets each part of the study uses: the stand-ins of the recipe, or every corpus of ``corpora``
    (CE on each, RE on those with relations, leave-one-dataset-out over the CE corpora) when it is given."""
    corpora = cfg.get("corpora") or {}
    if corpora:
        names = list(corpora)
        return {"ce": names, "re": names, "lodo": names, "user": True}
    return {"ce": list(cfg["ce_tasks"]), "re": list(cfg["re_tasks"]),
            "lodo": list(cfg["lodo"]["datasets"]), "user": False}


def load_datasets(cfg: dict) -> dict[str, dict]:
    """Every dataset the run needs, by name: registered stand-ins from the mirror or the user's corpora."""
    lists = task_lists(cfg)
    names = list(dict.fromkeys(lists["ce"] + lists["re"] + lists["lodo"]))
    corpora = cfg.get("corpora") or {}
    return {n: load_user(n, corpora[n]) if n in corpora else load_registered(n, allow_synthetic=cfg["allow_synthetic"])
            for n in names}

