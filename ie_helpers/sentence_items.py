"""Char-offset documents → token-offset sentence items (regex tokens and sentences unless the document has its own),
with counts of what the mapping changed or dropped, and IOB2 ``tags`` from the items' entities."""

from __future__ import annotations

import bisect
import re

Span = tuple[int, int]

_TOKEN = re.compile(r"\w+|[^\w\s]")
# A sentence ends after . ! or ? followed by whitespace and a capital letter, or at a line break.
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z])|\n")

COUNT_KEYS = ("documents", "sentences", "entities_total", "entities_kept", "entities_cross_sentence",
              "entities_without_token", "entities_expanded_to_tokens", "discontinuous_merged",
              "entities_duplicate", "relations_total", "relations_kept", "relations_cross_sentence",
              "relations_entity_dropped", "relations_duplicate")


def regex_token_spans(text: str) -> list[Span]:
    """Tokens are runs of word characters or single other non-space characters (``\\w+|[^\\w\\s]``)."""
    return [m.span() for m in _TOKEN.finditer(text)]


def regex_sentence_spans(text: str) -> list[Span]:
    """Consecutive char ranges covering the text, cut after [.!?] + whitespace + capital, and at each newline."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    bounds = [0] + cuts + [len(text)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _locate_entity(spans: list[Span], starts: list[int], ends: list[int]) -> tuple[int, int, bool] | None:
    """Covering token range [first, last] of the entity's outer char span, and whether it is token-aligned."""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    first = bisect.bisect_right(ends, start)  # first token ending after the entity starts
    last = bisect.bisect_left(starts, end) - 1  # last token starting before the entity ends
    if first > last:
        return None
    return first, last, starts[first] == start and ends[last] == end


def _document_sentences(doc: dict, tokenize, split_sentences, counts: dict) -> list[dict]:
    text = doc["text"]
    token_spans = doc.get("token_spans") or tokenize(text)
    sentence_spans = doc.get("sentence_spans") or split_sentences(text)
    starts, ends = [s for s, _ in token_spans], [e for _, e in token_spans]
    sentence_starts = [s for s, _ in sentence_spans]
    sentence_of = [bisect.bisect_right(sentence_starts, s) - 1 for s in starts]
    first_token = {}
    for k, sid in enumerate(sentence_of):
        first_token.setdefault(sid, k)
    items = {sid: {"doc_id": doc["id"], "tokens": [], "entities": [], "relations": []} for sid in first_token}
    for k, sid in enumerate(sentence_of):
        items[sid]["tokens"].append(text[starts[k]:ends[k]])

    placed = {}  # entity id → (sentence, start, end) in sentence token offsets
    for ent in doc["entities"]:
        counts["entities_total"] += 1
        found = _locate_entity(ent["spans"], starts, ends)
        if found is None:
            counts["entities_without_token"] += 1
            continue
        first, last, aligned = found
        sid = sentence_of[first]
        if sentence_of[last] != sid:
            counts["entities_cross_sentence"] += 1
            continue
        counts["entities_expanded_to_tokens"] += not aligned
        counts["discontinuous_merged"] += len(ent["spans"]) > 1
        entity = (first - first_token[sid], last + 1 - first_token[sid], ent["type"])
        placed[ent["id"]] = (sid, entity)
        if entity in items[sid]["entities"]:
            counts["entities_duplicate"] += 1
        else:
            items[sid]["entities"].append(entity)
    for rel in doc["relations"]:
        counts["relations_total"] += 1
        if rel["head"] not in placed or rel["tail"] not in placed:
            counts["relations_entity_dropped"] += 1
            continue
        (h_sid, (hs, he, _)), (t_sid, (ts, te, _)) = placed[rel["head"]], placed[rel["tail"]]
        if h_sid != t_sid:
            counts["relations_cross_sentence"] += 1
            continue
        relation = (hs, he, ts, te, rel["type"])
        if relation in items[h_sid]["relations"]:
            counts["relations_duplicate"] += 1
        else:
            items[h_sid]["relations"].append(relation)
    out = [items[sid] for sid in sorted(items)]
    for item in out:
        item["entities"].sort()
        item["relations"].sort()
        counts["entities_kept"] += len(item["entities"])
        counts["relations_kept"] += len(item["relations"])
    return out


def documents_to_sentences(docs: list[dict], *, tokenize=regex_token_spans,
                           split_sentences=regex_sentence_spans) -> tuple[list[dict], dict]:
    """Char-offset documents → sentence items ``{"doc_id", "tokens", "entities", "relations"}`` and counts.

    Rules: sentences and tokens come from the document's own ``sentence_spans``/``token_spans`` when
    it has them, else from ``split_sentences``/``tokenize`` (defaults: :func:`regex_sentence_spans`,
    :func:`regex_token_spans`). An entity becomes the tokens covering its outer char span: one not on
    token boundaries is expanded (``entities_expanded_to_tokens``), a discontinuous one becomes its
    covering span (``discontinuous_merged``). An entity over two sentences, or over no token, is
    dropped and counted; so is a relation whose entities were dropped or lie in two sentences.
    Entities or relations identical after the mapping are kept once (``*_duplicate``).
    Sentences without tokens are skipped; sentences without entities are kept.
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    sentences = []
    for doc in docs:
        counts["documents"] += 1
        sentences += _document_sentences(doc, tokenize, split_sentences, counts)
    counts["sentences"] = len(sentences)
    return sentences, counts


def with_bio_tags(sentences: list[dict]) -> tuple[list[dict], int]:
    """Copies of the sentence items with IOB2 ``tags`` from their entities, and how many entities the tags omit.

    IOB2 cannot hold nested entities: where entities overlap, the tags keep the shortest (then the
    leftmost) and omit the others. In DDI the overlaps are mostly a merged discontinuous entity
    ("nonheme or heme iron") around a contiguous one ("heme iron"), so the contiguous one is kept.
    ``entities`` stay complete; only ``tags`` lose the omitted ones.
    """
    from ie_helpers.ner import bio_from_spans

    out, omitted = [], 0
    for s in sentences:
        kept = []
        for start, end, etype in sorted(s["entities"], key=lambda x: (x[1] - x[0], x[0])):
            if all(end <= a or start >= b for a, b, _ in kept):
                kept.append((start, end, etype))
        omitted += len(s["entities"]) - len(kept)
        out.append({**s, "tags": bio_from_spans(len(s["tokens"]), kept)})
    return out, omitted

