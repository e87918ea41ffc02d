"""Word-level IOB2 tags to sub-token features for token classification: the label list, fast-tokenizer encoding
with word ids, and labels on each word's first sub-token (``IGNORE_INDEX`` elsewhere)."""

from __future__ import annotations

from typing import Sequence

from ie_helpers.errors import IEError
from ie_helpers.ner import _split_tag

IGNORE_INDEX = -100


def label_list(tag_seqs: Sequence[Sequence[str]]) -> list[str]:
    """``["O", "B-A", "I-A", "B-B", "I-B", ...]`` for every entity type seen (sorted)."""
    types = set()
    for seq in tag_seqs:
        for tag in seq:
            prefix, typ = _split_tag(tag)
            if prefix != "O":
                types.add(typ)
    labels = ["O"]
    for typ in sorted(types):
        labels += ["B-" + typ, "I-" + typ]
    return labels


def _check_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise IEError(
            f"{type(tokenizer).__name__} is a slow tokenizer; word alignment needs a fast "
            "one: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def _encode(tokenizer, token_seqs, max_length: int, padding=False):
    """Tokenise pre-split sentences; returns (encoding, word_ids per row, words cut per row)."""
    _check_fast(tokenizer)
    if max_length < 3:
        raise IEError(f"max_length={max_length}; use at least a few sub-tokens (e.g. 128)")
    enc = tokenizer(
        [list(map(str, toks)) for toks in token_seqs],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=padding,
    )
    word_ids, cut = [], []
    for row, toks in enumerate(token_seqs):
        wids = enc.word_ids(row)
        word_ids.append(wids)
        seen = [w for w in wids if w is not None]
        if "attention_mask" in enc:
            n_real = sum(enc["attention_mask"][row])
        else:
            n_real = len(enc["input_ids"][row])
        # only a full row can have been truncated; otherwise trailing words with no
        # sub-tokens (e.g. zero-width characters) are not "cut"
        truncated = n_real >= max_length
        last = max(seen) if seen else -1
        cut.append(len(toks) - (last + 1) if truncated else 0)
    return enc, word_ids, cut


def tokenize_and_align(tokenizer, token_seqs, tag_seqs, label2id: dict, max_length: int = 128):
    """Features for token classification and the number of words lost to truncation.

    Returns ``(features, n_words_truncated)`` where ``features`` is a list of dicts
    (``input_ids``, ``attention_mask``, [``token_type_ids``], ``labels``) ready for
    ``DataCollatorForTokenClassification``.  The first sub-token of each word carries
    the word's label id; other sub-tokens and special tokens get -100.  Words beyond
    ``max_length`` sub-tokens are dropped and counted in ``n_words_truncated``.
    """
    token_seqs, tag_seqs = list(token_seqs), list(tag_seqs)
    if len(token_seqs) != len(tag_seqs):
        raise IEError(
            f"got {len(token_seqs)} token lists and {len(tag_seqs)} tag lists; pass one "
            "tag list per sentence"
        )
    for k, (toks, tags) in enumerate(zip(token_seqs, tag_seqs)):
        if len(toks) != len(tags):
            raise IEError(f"sentence {k}: {len(toks)} tokens but {len(tags)} tags; fix the reader")
    enc, word_ids, cut = _encode(tokenizer, token_seqs, max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = []
    for row, tags in enumerate(tag_seqs):
        labels, prev = [], None
        for w in word_ids[row]:
            if w is None or w == prev:
                labels.append(IGNORE_INDEX)
            else:
                tag = tags[w]
                if tag not in label2id:
                    raise IEError(
                        f"tag {tag!r} is not in label2id; build the labels with "
                        "ie_helpers.encoder.label_list over the training tags"
                    )
                labels.append(label2id[tag])
            prev = w
        feat = {k: enc[k][row] for k in keys}
        feat["labels"] = labels
        features.append(feat)
    return features, int(sum(cut))

