"""Generated ``(type, text)`` mentions mapped back onto token spans of their sentence (first free occurrence,
exact before punctuation-normalised, case-sensitive before case-folded); unmatched ones are hallucinated."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

Span = tuple[int, int, str]

# whitespace touching a character that is neither a word character nor whitespace
_PUNCT_SPACE = re.compile(r"\s*([^\w\s])\s*")


def _punct_norm(text: str) -> str:
    """Collapse whitespace and drop it around punctuation: 'U.S .' -> 'U.S.'."""
    return _PUNCT_SPACE.sub(r"\1", " ".join(text.split()))


def align_mentions(
    tokens: Sequence[str], mentions: Iterable[tuple[str, str]]
) -> tuple[list[Span], list[tuple[str, str]]]:
    """Map predicted ``(type, text)`` mentions onto token spans of ``tokens``.

    Each mention is looked up with four matchers, in order, and the first matcher
    that finds a usable occurrence wins:

    1. whitespace tokens of the mention == a token window (case-sensitive);
    2. same after punctuation-spacing normalisation of both sides ("U.S ." ==
       "U.S.", "Smith 's" == "Smith's"), case-sensitive;
    3. as 1, case-insensitive;  4. as 2, case-insensitive.

    Within a matcher the FIRST occurrence (leftmost) that does not overlap a span
    already claimed by an earlier mention is taken, so two identical mentions map to
    two successive occurrences.  Mentions that find nothing (or are empty) are
    returned unchanged in the second list ("hallucinated").

    Returns ``(spans sorted by start, hallucinated mentions in input order)``; types
    are kept exactly as given.
    """
    tokens = [str(t) for t in tokens]
    n = len(tokens)
    folded = [t.casefold() for t in tokens]
    raw_heads = [t.strip()[:1] for t in tokens]
    folded_heads = [h.casefold()[:1] for h in raw_heads]
    claimed: list[tuple[int, int]] = []
    spans: list[Span] = []
    hallucinated: list[tuple[str, str]] = []

    def free(i: int, j: int) -> bool:
        return all(j <= s or e <= i for s, e in claimed)

    def exact(words: list[str], toks: list[str]) -> tuple[int, int] | None:
        k = len(words)
        for i in range(n - k + 1):
            if toks[i : i + k] == words and free(i, i + k):
                return i, i + k
        return None

    def normed(target: str, fold: bool) -> tuple[int, int] | None:
        if not target:
            return None
        heads = folded_heads if fold else raw_heads
        for i in range(n):
            if heads[i] != target[0]:  # a window starts with its first token's first char
                continue
            for j in range(i + 1, n + 1):
                window = _punct_norm(" ".join(tokens[i:j]))
                if fold:
                    window = window.casefold()
                if window == target and free(i, j):
                    return i, j
                # windows only grow (by >= 1 char) as j grows: stop once too long
                if len(window.replace(" ", "")) > len(target.replace(" ", "")):
                    break
        return None

    for mention in mentions:
        typ, raw = mention
        text = "" if raw is None else str(raw)
        words = text.split()
        hit = None
        if words:
            hit = (
                exact(words, tokens)
                or normed(_punct_norm(text), fold=False)
                or exact([w.casefold() for w in words], folded)
                or normed(_punct_norm(text).casefold(), fold=True)
            )
        if hit is None:
            hallucinated.append((typ, raw))
            continue
        claimed.append(hit)
        spans.append((hit[0], hit[1], typ))
    spans.sort(key=lambda s: (s[0], s[1]))
    return spans, hallucinated

