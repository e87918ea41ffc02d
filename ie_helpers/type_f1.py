"""Per-type strict span F1 (seqeval's arithmetic): counts per sentence and type, macro averages, and CIs over
sentences from the kit's one bootstrap (``stats.resampled_indices``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ie_helpers import ner, stats


def type_f1_counts(gold_tags, pred_tags) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Per-sentence, per-type strict span counts: (types, tp, fp, fn), each array of shape (sentences, types)."""
    gold_sets = [set(ner.spans_from_bio(g)) for g in gold_tags]
    pred_sets = [set(ner.spans_from_bio(p)) for p in pred_tags]
    types = sorted({t for s in gold_sets + pred_sets for *_, t in s})
    idx = {t: i for i, t in enumerate(types)}
    shape = (len(gold_sets), len(types))
    tp, fp, fn = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for k, (g, p) in enumerate(zip(gold_sets, pred_sets)):
        for *_, t in g & p:
            tp[k, idx[t]] += 1
        for *_, t in p - g:
            fp[k, idx[t]] += 1
        for *_, t in g - p:
            fn[k, idx[t]] += 1
    return types, tp, fp, fn


def _f1(tp, fp, fn) -> np.ndarray:
    """seqeval's F1 arithmetic (zero_division = 0), elementwise."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    denom = np.where(p + r == 0, 1.0, p + r)
    return 2 * p * r / denom


def _macro(tp, fp, fn, cols) -> np.ndarray:
    """Mean F1 over the ``cols`` types present (gold or predicted) in each row; nan where none is."""
    tp, fp, fn = tp[..., cols], fp[..., cols], fn[..., cols]
    present = (tp + fp + fn) > 0
    f1 = np.where(present, _f1(tp, fp, fn), 0.0)
    n = present.sum(axis=-1)
    return np.divide(f1.sum(axis=-1), n, out=np.full(n.shape, np.nan), where=n > 0)


def bootstrap_type_f1(gold_tags, pred_tags, rare: Sequence[str] = (), n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> dict:
    """Macro-F1, macro-F1 over the ``rare`` types and (rare macro − micro), with percentile CIs over sentences.

    Macro averages run over the gold types of the evaluation set: a type only the system predicts (invented) is
    listed in ``invented_types`` instead of dividing the average (seqeval's macro average counts it with F1 0).
    All three quantities come from the same resamples, so the difference's CI is paired.
    """
    types, tp, fp, fn = type_f1_counts(gold_tags, pred_tags)
    n = tp.shape[0]
    all_cols = [i for i in range(len(types)) if tp[:, i].sum() + fn[:, i].sum() > 0]
    rare_cols = [i for i, t in enumerate(types) if t in set(rare)]

    def measure(a, b, c):
        micro = _f1(a.sum(-1), b.sum(-1), c.sum(-1))
        macro = _macro(a, b, c, all_cols) if all_cols else np.zeros(a.shape[:-1])
        rmacro = _macro(a, b, c, rare_cols) if rare_cols else np.full(a.shape[:-1], np.nan)
        return micro, macro, rmacro, rmacro - micro

    point = measure(tp.sum(0), fp.sum(0), fn.sum(0))
    stats.check_bootstrap(n_boot, alpha)
    rng = np.random.default_rng(seed)
    if n and len(types):
        sums = [(tp[idx].sum(1), fp[idx].sum(1), fn[idx].sum(1))  # one chunk of resamples at a time
                for idx in stats.resampled_indices(rng, n, n_boot, rows_per_chunk=256)]
        boot = measure(*(np.concatenate(parts) for parts in zip(*sums)))
    else:
        boot = [np.zeros(n_boot)] * 3 + [np.full(n_boot, np.nan)]
    out = {"rare_types": [types[i] for i in rare_cols],
           "invented_types": [t for i, t in enumerate(types) if i not in set(all_cols)]}
    for name, pt, b in zip(("micro", "macro", "rare_macro", "rare_minus_micro"), point, boot):
        b = b[np.isfinite(b)]
        lo, hi = stats.percentile_interval(b, alpha) if b.size else (np.nan, np.nan)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = float(pt), float(lo), float(hi)
    return out
