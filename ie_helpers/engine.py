"""The protocol every paper follows, in one place: a plan of runs, hyperparameters chosen on dev, the
chosen point re-run with every seed, and effects whose CIs include seed and item variance.

    grid = engine.grid_plan({"lora": [1e-4, 4e-4], "loraplus": [1e-4, 4e-4]}, seeds=[0])
    dev = <train and score every grid row on the dev split>            # a column ``dev_score`` per row
    chosen = engine.select_on_dev(dev)                                 # one lr per method, from dev only
    final = engine.final_plan(chosen, seeds=[0, 1, 2])                 # re-run on test with every seed
    ev = engine.paired_effect(scores_a, scores_b, tuned_on_dev=True)   # verdicts.Evidence for a claim

A plan is a DataFrame, one row per run; ``distinct_runs`` drops rows that would train the same thing
twice (training itself is cached by content in ``train.train_sft``). Scores are arrays of shape
(seeds, items) for per-item scores, or (seeds, items, 3) of (tp, fp, fn) counts for micro-F1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ie_helpers.errors import IEError
from ie_helpers.stats import check_bootstrap, percentile_interval, resampled_indices
from ie_helpers.verdicts import Evidence

STATS = ("mean", "micro_f1", "macro_f1")
_LAST_AXIS = {"micro_f1": 3, "macro_f1": 2}  # (tp, fp, fn) counts; (gold, predicted) class ids


# --------------------------------------------------------------------------- plans


def grid_plan(lrs: Mapping[str, Sequence[float]], *, seeds: Sequence[int], **fixed) -> pd.DataFrame:
    """The dev grid: every method × learning rate × seed, with the ``fixed`` columns (dataset, size ...)."""
    if not lrs or any(not v for v in lrs.values()):
        raise IEError("the dev grid needs at least one learning rate per method, e.g. {'lora': [1e-4, 4e-4]}")
    if not seeds:
        raise IEError("the dev grid needs at least one seed")
    rows = [{"split": "dev", "method": m, "lr": float(lr), "seed": int(s), **fixed}
            for m, grid in lrs.items() for lr in grid for s in seeds]
    return pd.DataFrame(rows)


def select_on_dev(dev: pd.DataFrame, *, score: str = "dev_score", by: Sequence[str] = ("method",),
                  param: str = "lr", higher_is_better: bool = True) -> pd.DataFrame:
    """One ``param`` value per group of ``by``: the best mean ``score`` over seeds, on dev rows only.

    Ties go to the smaller value (the cheaper, more conservative step). The returned table has every grid
    point with its mean, seed spread and a ``chosen`` flag, so a report can show the whole grid."""
    if "split" in dev and (dev["split"] != "dev").any():
        raise IEError("select_on_dev got rows that are not from the dev split: the test set never selects")
    missing = [c for c in (score, param, *by) if c not in dev]
    if missing:
        raise IEError(f"select_on_dev needs columns {', '.join(missing)}")
    if dev[score].isna().any():
        raise IEError(f"{int(dev[score].isna().sum())} dev scores are missing: score every grid run first")
    table = (dev.groupby([*by, param])[score].agg(["mean", "std", "count"]).reset_index()
             .rename(columns={"mean": f"{score}_mean", "std": f"{score}_std", "count": "seeds"}))
    sign = -1.0 if higher_is_better else 1.0
    table = table.assign(_key=sign * table[f"{score}_mean"]).sort_values([*by, "_key", param])
    table["chosen"] = ~table.duplicated(list(by), keep="first")
    lo, hi = (table.groupby(list(by))[param].transform(f) for f in ("min", "max"))
    table["at_edge"] = table["chosen"] & (lo < hi) & ((table[param] == lo) | (table[param] == hi))
    return table.drop(columns="_key").sort_values([*by, param]).reset_index(drop=True)


def tuning_complete(selection: pd.DataFrame, by: Sequence[str] = ("method",)) -> bool:
    """Whether every group chose among at least two values and its choice is an interior point of its grid: a
    single value chooses nothing, and a choice at the grid's edge says the best value may lie outside it; either
    way the compared systems are not shown to be tuned (their comparison verdicts stay inconclusive)."""
    if not len(selection):
        return False
    sizes = selection.groupby(list(by)).size()
    return bool((sizes >= 2).all()) and not selection.loc[selection["chosen"], "at_edge"].any()


def final_plan(selection: pd.DataFrame, *, seeds: Sequence[int], by: Sequence[str] = ("method",),
               param: str = "lr", **fixed) -> pd.DataFrame:
    """The test runs: each group's chosen ``param`` with every seed."""
    chosen = selection[selection["chosen"]]
    rows = [{"split": "test", **{c: r[c] for c in by}, param: r[param], "seed": int(s), **fixed}
            for _, r in chosen.iterrows() for s in seeds]
    return pd.DataFrame(rows)


CHECKPOINT_POLICIES = ("last", "best_on_dev")


def check_checkpoint_policy(policy: str, *, has_dev_snapshots: bool = True) -> str:
    """The recipe's ``checkpoint``: ``last`` (the adapter at the end of training) or ``best_on_dev`` (the snapshot
    with the best dev score, :func:`best_step`); refused, in one line, before any training starts."""
    if policy not in CHECKPOINT_POLICIES:
        raise IEError(f"checkpoint '{policy}' is not a policy: use {' or '.join(CHECKPOINT_POLICIES)}")
    if policy == "best_on_dev" and not has_dev_snapshots:
        raise IEError("checkpoint 'best_on_dev' needs dev scores at adapter snapshots, which this run does not "
                      "make: use checkpoint last")
    return policy


def best_step(dev_by_step: Mapping[int, float]) -> int:
    """The snapshot to test under ``best_on_dev``: the step with the highest dev score, the earliest of ties."""
    if not dev_by_step:
        raise IEError("no dev scores at any snapshot: best_on_dev has nothing to choose from")
    top = max(dev_by_step.values())
    return min(step for step, score in dev_by_step.items() if score == top)


def distinct_runs(plan: pd.DataFrame, key: Sequence[str]) -> pd.DataFrame:
    """Rows of ``plan`` that train something different (same ``key`` = same training run)."""
    return plan.drop_duplicates(list(key)).reset_index(drop=True)


# --------------------------------------------------------------------------- seeds × items bootstrap


def _as_scores(x, stat: str) -> np.ndarray:
    if stat not in STATS:
        raise IEError(f"unknown statistic '{stat}': use one of {', '.join(STATS)}")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    want = 3 if stat in _LAST_AXIS else 2
    if stat in _LAST_AXIS and (a.ndim != 3 or a.shape[-1] != _LAST_AXIS[stat]):
        what = "tp/fp/fn counts" if stat == "micro_f1" else "(gold, predicted) class ids"
        raise IEError(f"{stat} needs (seeds, items, {_LAST_AXIS[stat]}) {what}, got shape {a.shape}")
    if a.ndim != want:
        raise IEError(f"scores must be (seeds, items) for the mean, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise IEError("no seeds or no items to score")
    return a


def _stat(a: np.ndarray, stat: str) -> np.ndarray:
    """The statistic over the items axis (1) of each seed: shape (seeds,)."""
    if stat == "mean":
        return a.mean(axis=1)
    if stat == "macro_f1":
        return np.array([_macro_f1(g, p) for g, p in zip(a[..., 0], a[..., 1])])
    tp, fp, fn = a.sum(axis=1).T
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
    return 2 * p * r / np.where(p + r == 0, 1.0, p + r)  # seqeval's arithmetic (ner._micro_f1)


def _macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in gold or predictions (sklearn's default)."""
    f1s = []
    for c in np.union1d(gold, pred):
        tp = np.sum((gold == c) & (pred == c))
        denom = np.sum(gold == c) + np.sum(pred == c)
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def seed_item_bootstrap(scores, *, stat: str = "mean", n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> tuple[float, float, float]:
    """``(point, lo, hi)``: the statistic averaged over seeds, with a percentile CI from a two-stage
    bootstrap that resamples seeds and, independently, test items (the same items for every seed)."""
    return _bootstrap([_as_scores(scores, stat)], lambda s: s[0], stat, n_boot, seed, alpha)[:3]


def paired_effect(a, b, *, stat: str = "mean", n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                  tuned_on_dev: bool = False, stand_in: bool = True) -> Evidence:
    """``a − b`` on the same test items as a ``verdicts.Evidence``: CI over seeds and items, and the effect
    in each seed alone. Seeds are paired when both systems have the same number of seeds (seed s of each was
    trained on the same sample); a system with one row (zero-shot, no training seed) is compared with each."""
    a, b = _as_scores(a, stat), _as_scores(b, stat)
    if a.shape[1:] != b.shape[1:]:
        raise IEError(f"a and b are scored on different items ({a.shape[1]} vs {b.shape[1]}): pair them first")
    point, lo, hi, seed_effects = _bootstrap([a, b], lambda s: s[0] - s[1], stat, n_boot, seed, alpha)
    return Evidence(effect=point, lo=lo, hi=hi, seed_effects=tuple(seed_effects), tuned_on_dev=tuned_on_dev,
                    stand_in=stand_in, level=1 - alpha)


def parts_minus_whole(parts: Sequence, whole, *, stat: str = "micro_f1", n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05, tuned_on_dev: bool = False, stand_in: bool = True) -> Evidence:
    """The statistic averaged over ``parts`` minus the statistic of ``whole``, all scored on the same seeds and
    items (e.g. the macro-F1 over a few entity types minus the micro-F1 over all): CI from one bootstrap that
    resamples seeds and items for every part and the whole together, and the effect in each seed alone."""
    arrays = [_as_scores(x, stat) for x in [*parts, whole]]
    if not parts or len({x.shape[:2] for x in arrays}) != 1:
        raise IEError("parts_minus_whole needs at least one part, every part scored on the whole's seeds and items")
    point, lo, hi, seed_effects = _bootstrap(arrays, lambda s: float(np.mean(s[:-1])) - s[-1], stat, n_boot, seed,
                                             alpha)
    return Evidence(effect=point, lo=lo, hi=hi, seed_effects=tuple(seed_effects), tuned_on_dev=tuned_on_dev,
                    stand_in=stand_in, level=1 - alpha)


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """One bootstrap resample of ``n`` indices (``stats.resampled_indices``, one row)."""
    return next(resampled_indices(rng, n, 1, rows_per_chunk=1))[0]


def _bootstrap(arrays: list[np.ndarray], combine, stat: str, n_boot: int, seed: int, alpha: float):
    check_bootstrap(n_boot, alpha)
    n_items = arrays[0].shape[1]
    paired_seeds = len({x.shape[0] for x in arrays}) == 1
    per_seed = [_stat(x, stat) for x in arrays]
    point = float(combine([s.mean() for s in per_seed]))
    n_seeds = max(x.shape[0] for x in arrays)
    seed_effects = [float(combine([s[k if len(s) > 1 else 0] for s in per_seed])) for k in range(n_seeds)]
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        items = _draw(rng, n_items)
        shared = _draw(rng, arrays[0].shape[0])
        means = []
        for x in arrays:
            rows = shared if paired_seeds else _draw(rng, x.shape[0])
            means.append(_stat(x[rows][:, items], stat).mean())
        boots[i] = combine(means)
    lo, hi = percentile_interval(boots, alpha)
    return point, float(min(lo, hi)), float(max(lo, hi)), seed_effects


def task_average_effect(a_by_task: Sequence, b_by_task: Sequence | None = None, *, stat: str = "mean",
                        n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, tuned_on_dev: bool = False,
                        stand_in: bool = True) -> Evidence:
    """The statistic averaged over tasks (each task weighs the same, as a paper's "average over tasks" does), or
    the difference of two systems' averages when ``b_by_task`` is given, with a CI from one bootstrap that
    resamples seeds (shared by every task: seed s of each task is one downstream run) and each task's items."""
    a = [_as_scores(x, stat) for x in a_by_task]
    b = None if b_by_task is None else [_as_scores(x, stat) for x in b_by_task]
    if not a or (b is not None and len(b) != len(a)):
        raise IEError("task_average_effect needs one score array per task for each system, the same tasks")
    for k, x in enumerate(a):
        if b is not None and x.shape[1:] != b[k].shape[1:]:
            raise IEError(f"task {k}: the systems are scored on different items ({x.shape[1]} vs {b[k].shape[1]})")
    n_seeds = {x.shape[0] for x in a + (b or [])}
    if len(n_seeds) != 1:
        raise IEError(f"every task and system needs the same seeds (got {sorted(n_seeds)} seed counts)")
    n = n_seeds.pop()

    def effect(seed_rows, item_rows) -> np.ndarray:  # per-seed effect, averaged over tasks
        per_task = []
        for k, x in enumerate(a):
            value = _stat(x[seed_rows][:, item_rows[k]], stat)
            if b is not None:
                value = value - _stat(b[k][seed_rows][:, item_rows[k]], stat)
            per_task.append(value)
        return np.mean(per_task, axis=0)

    full_items = [np.arange(x.shape[1]) for x in a]
    seed_effects = effect(np.arange(n), full_items)
    check_bootstrap(n_boot, alpha)
    rng = np.random.default_rng(seed)
    boots = np.array([effect(_draw(rng, n), [_draw(rng, x.shape[1]) for x in a]).mean() for _ in range(n_boot)])
    lo, hi = percentile_interval(boots, alpha)
    return Evidence(effect=float(seed_effects.mean()), lo=float(min(lo, hi)), hi=float(max(lo, hi)),
                    seed_effects=tuple(float(v) for v in seed_effects), tuned_on_dev=tuned_on_dev,
                    stand_in=stand_in, level=1 - alpha)


def counts_from_spans(gold: Sequence[Sequence], pred: Sequence[Sequence]) -> np.ndarray:
    """(items, 3) tp/fp/fn counts of exact-match sets, for ``stat='micro_f1'``."""
    if len(gold) != len(pred):
        raise IEError(f"{len(pred)} predictions for {len(gold)} items; pass one per item")
    out = np.zeros((len(gold), 3))
    for k, (g, p) in enumerate(zip(gold, pred)):
        g, p = set(map(tuple, g)), set(map(tuple, p))
        out[k] = len(g & p), len(p - g), len(g - p)
    return out


def steps_to_peak(counts: np.ndarray, steps: Sequence[int], *, tol: float = 0.01, min_peak: float = 0.01) -> float:
    """The first step at which the seed-averaged micro-F1 curve comes within ``tol`` of its peak; nan when the
    curve never reaches ``min_peak`` (nothing learned, no peak to time). ``counts``: (seeds, snapshots, items, 3)
    tp/fp/fn, one snapshot per entry of ``steps``."""
    tp, fp, fn = np.moveaxis(counts.sum(axis=2), -1, 0)  # each (seeds, snapshots)
    denom = 2 * tp + fp + fn
    curve = np.divide(2 * tp, denom, out=np.zeros_like(denom, dtype=float), where=denom > 0).mean(axis=0)
    if not len(curve) or curve.max() < min_peak:
        return float("nan")
    return float(np.asarray(steps)[np.argmax(curve >= curve.max() - tol)])


def steps_to_peak_ratio(a: np.ndarray, b: np.ndarray, steps: Sequence[int], *, tol: float = 0.01,
                        min_peak: float = 0.01, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                        tuned_on_dev: bool = False, stand_in: bool = True) -> Evidence | None:
    """Steps to the peak of ``a``'s seed-averaged dev curve over ``b``'s, as a ``verdicts.Evidence`` with a CI from
    the bootstrap of seeds (paired: seed s of both) and dev items (shared); None when either curve never learns.
    ``a``, ``b``: (seeds, snapshots, items, 3) counts at the same ``steps``. Resamples in which a curve learns
    nothing are dropped; the per-seed ratios come from each seed's own curves."""
    if a.shape != b.shape or a.shape[1] != len(steps):
        raise IEError(f"curves of shape {a.shape} and {b.shape} at {len(steps)} steps: score both at every step")

    def ratio(rows, items) -> float:
        return steps_to_peak(a[rows][:, :, items], steps, tol=tol, min_peak=min_peak) / steps_to_peak(
            b[rows][:, :, items], steps, tol=tol, min_peak=min_peak)

    n_seeds, n_items = a.shape[0], a.shape[2]
    point = ratio(np.arange(n_seeds), np.arange(n_items))
    if point != point:
        return None
    check_bootstrap(n_boot, alpha)
    rng = np.random.default_rng(seed)
    boots = np.array([ratio(_draw(rng, n_seeds), _draw(rng, n_items)) for _ in range(n_boot)])
    finite = boots[np.isfinite(boots)]
    lo, hi = percentile_interval(finite, alpha) if finite.size else (point, point)
    per_seed = [ratio(np.array([k]), np.arange(n_items)) for k in range(n_seeds)]
    return Evidence(effect=point, lo=lo, hi=hi, seed_effects=tuple(x for x in per_seed if x == x),
                    tuned_on_dev=tuned_on_dev, stand_in=stand_in, level=1 - alpha)


DEV_CHOICE = "the one the notebook chose on dev (the `chosen` row of its dev_grid.csv)"


def launch_rate(grid: Sequence[float], lr: float | None, name: str, chosen: str = DEV_CHOICE) -> float:
    """The learning rate of a run launched outside its notebook: ``lr`` (the notebook's dev choice), or the grid's
    only rate; a grid of several rates needs ``lr``, refused in one line before anything loads."""
    if lr is not None:
        return float(lr)
    if len(grid) != 1:
        raise IEError(f"pass --lr: the {name} grid has {len(grid)} rates {list(grid)}; use {chosen}")
    return float(grid[0])

