"""Uncertainty and paired comparisons for per-example scores, plus plateau fits.

Bootstrap intervals are percentile intervals over resampled examples. NaN scores
are dropped (pairs are dropped whole when either side is NaN). Every bootstrap of the
kit (here, ``ner``, ``nerexp``, ``engine``) draws its resamples with ``resampled_indices``
and reads its interval with ``percentile_interval``, after ``check_bootstrap``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

from ie_helpers.errors import IEError

TIE_EPS = 1e-9
# Resampled values per chunk, so big samples do not build one huge index matrix.
_BOOT_CHUNK_ELEMENTS = 2_000_000
_NAN3 = (float("nan"), float("nan"), float("nan"))


def check_bootstrap(n_boot: int, alpha: float = 0.05) -> None:
    """Refuse a resample count below 1 and a level outside (0, 1), naming the fix."""
    _check_n_boot(n_boot)
    _check_alpha(alpha)


def resampled_indices(rng: np.random.Generator, n_items: int, n_boot: int, *, rows_per_chunk: int):
    """Bootstrap resamples of ``n_items`` item indices (drawn with replacement), yielded as arrays of
    ``rows_per_chunk`` resamples (the last one shorter), so large samples never build one huge matrix."""
    for rows in _chunk_sizes(n_boot, max(1, rows_per_chunk)):
        yield rng.integers(0, n_items, size=(rows, n_items))


def percentile_interval(boots: Any, alpha: float = 0.05) -> tuple[float, float]:
    """The ``alpha/2`` and ``1 - alpha/2`` quantiles of bootstrap values (a plain percentile interval)."""
    lo, hi = np.quantile(np.asarray(boots, dtype=float), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, lo, hi): `stat` of the values and its percentile bootstrap interval.

    `stat` is called as stat(matrix, axis=1) when it accepts `axis` (np.mean,
    np.median, ...), otherwise once per resample.
    """
    check_bootstrap(n_boot, alpha)
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        return _NAN3
    rng = np.random.default_rng(seed)
    chunks = resampled_indices(rng, x.size, n_boot, rows_per_chunk=_BOOT_CHUNK_ELEMENTS // x.size)
    boot = np.concatenate([_stat_per_row(x[idx], stat) for idx in chunks])
    lo, hi = percentile_interval(boot, alpha)
    return float(stat(x)), lo, hi


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of a - b, lo, hi), resampling examples so the pairing is kept."""
    diff = _paired_diff(a, b)
    return bootstrap_ci(diff, np.mean, n_boot=n_boot, alpha=alpha, seed=seed)


def win_rate(a: Sequence[float], b: Sequence[float], eps: float = TIE_EPS) -> dict:
    """Per-example wins/losses/ties of a over b, win rates and a two-sided sign test.

    win_rate excludes ties (nan when every pair ties); win_rate_ties_half counts
    a tie as half a win; p_sign is 1.0 when there are no untied pairs.
    """
    diff = _paired_diff(a, b)
    wins, losses = int(np.sum(diff > eps)), int(np.sum(diff < -eps))
    n = int(diff.size)
    ties = n - wins - losses
    decided = wins + losses
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": wins / decided if decided else float("nan"),
        "win_rate_ties_half": (wins + 0.5 * ties) / n if n else float("nan"),
        "p_sign": float(stats.binomtest(wins, decided, 0.5).pvalue) if decided else 1.0,
    }


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float], eps: float = TIE_EPS) -> dict:
    """Two-sided Wilcoxon signed-rank test of a vs b; zero differences (|d| <= eps) dropped.

    When no difference is left: statistic nan, p 1.0. n_nonzero = pairs used.
    """
    diff = _paired_diff(a, b)
    diff = np.where(np.abs(diff) <= eps, 0.0, diff)
    n_nonzero = int(np.count_nonzero(diff))
    if n_nonzero == 0:
        return {"statistic": float("nan"), "p": 1.0, "n_nonzero": 0}
    result = stats.wilcoxon(diff, zero_method="wilcox")
    return {"statistic": float(result.statistic), "p": float(result.pvalue), "n_nonzero": n_nonzero}


def adjust_pvalues(pvals: Sequence[float], method: str = "holm") -> np.ndarray:
    """Multiple-comparison adjusted p-values (statsmodels `multipletests`); NaNs stay NaN."""
    p = np.asarray(pvals, dtype=float).ravel()
    adjusted = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        try:
            adjusted[finite] = multipletests(p[finite], method=method)[1]
        except ValueError as err:
            raise IEError(f"cannot adjust p-values with method={method!r} ({err}); try 'holm' or 'fdr_bh'") from err
    return adjusted


def saturating_curve(x: Any, a: float, b: float, c: float) -> Any:
    """a - b * exp(-x / c): score a at saturation, gain b from size 0, scale c."""
    return a - b * np.exp(-np.asarray(x, dtype=float) / c)


def fit_saturating(
    sizes: Sequence[float], scores: Sequence[float], p0: Sequence[float] | None = None
) -> dict:
    """Least-squares fit of `saturating_curve`; never raises.

    Returns {a, b, c, ok, reason}. ok is False (params nan, reason set) with fewer
    than 3 distinct sizes, flat scores, a failed fit, or c pinned at a bound (the
    scale is then not identified by the data).
    """
    x, y = np.asarray(sizes, dtype=float).ravel(), np.asarray(scores, dtype=float).ravel()
    if x.size != y.size:
        return _failed_fit("sizes and scores differ in length")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 3:
        return _failed_fit("need at least 3 distinct sizes")
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.max(np.abs(y)))):
        return _failed_fit("scores are flat")

    c_bounds = (1e-6 * float(np.max(np.abs(x))), 10 * float(np.max(np.abs(x))))
    if p0 is None:
        p0 = _initial_guess(x, y)
    p0 = [p0[0], p0[1], float(np.clip(p0[2], c_bounds[0] * 1.01, c_bounds[1] * 0.99))]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            (a, b, c), _cov = optimize.curve_fit(
                saturating_curve,
                x,
                y,
                p0=p0,
                bounds=([-np.inf, -np.inf, c_bounds[0]], [np.inf, np.inf, c_bounds[1]]),
                maxfev=10_000,
            )
    except (RuntimeError, ValueError) as err:
        return _failed_fit(f"curve_fit failed: {err}")
    if not np.all(np.isfinite([a, b, c])):
        return _failed_fit("non-finite parameters")
    if c <= c_bounds[0] * 1.01 or c >= c_bounds[1] * 0.99:
        return _failed_fit("scale c hit a bound; no plateau visible in the data")
    return {"a": float(a), "b": float(b), "c": float(c), "ok": True, "reason": None}


def plateau_point(c: float, frac: float = 0.95) -> float:
    """Training size at which `frac` of the fitted gain from size 0 is reached."""
    if not 0 < frac < 1:
        raise IEError(f"frac={frac} must be strictly between 0 and 1, e.g. 0.95")
    return float(c * np.log(1 / (1 - frac)))


def plateau_with_ci(
    sizes: Sequence[float],
    per_example_scores: Sequence[Sequence[float]],
    frac: float = 0.95,
    n_boot: int = 500,
    seed: int = 0,
) -> dict:
    """Plateau point from the fit on mean scores, with a bootstrap percentile CI.

    Each bootstrap resamples examples within every size, refits, and keeps the
    plateau point of successful fits; lo/hi (95%) are nan when no refit succeeds.
    Returns {point, lo, hi, n_failed_fits, a, b, c, ok}.
    """
    _check_n_boot(n_boot)
    if len(sizes) != len(per_example_scores):
        raise IEError(f"{len(sizes)} sizes but {len(per_example_scores)} score arrays; give one array per size")
    clean = [_finite(scores) for scores in per_example_scores]
    if any(s.size == 0 for s in clean):
        raise IEError("a training size has no finite per-example scores; drop that size or rescore it")
    means = np.array([s.mean() for s in clean])
    fit = fit_saturating(sizes, means)
    point = plateau_point(fit["c"], frac) if fit["ok"] else float("nan")

    rng = np.random.default_rng(seed)
    boot_means = np.column_stack(
        [s[next(resampled_indices(rng, s.size, n_boot, rows_per_chunk=n_boot))].mean(axis=1) for s in clean]
    )
    warm_start = (fit["a"], fit["b"], fit["c"]) if fit["ok"] else None
    boot_points = []
    for row in boot_means:
        refit = fit_saturating(sizes, row, p0=warm_start)
        if refit["ok"]:
            boot_points.append(plateau_point(refit["c"], frac))
    n_failed = n_boot - len(boot_points)
    lo, hi = percentile_interval(boot_points, 0.05) if boot_points else (np.nan, np.nan)
    return {
        "point": point,
        "lo": float(lo),
        "hi": float(hi),
        "n_failed_fits": n_failed,
        "a": fit["a"],
        "b": fit["b"],
        "c": fit["c"],
        "ok": fit["ok"],
    }


def gain_after(sizes: Sequence[float], means: Sequence[float], at: float) -> float:
    """Mean score at the largest size minus the mean score at size `at`."""
    x, y = np.asarray(sizes, dtype=float).ravel(), np.asarray(means, dtype=float).ravel()
    if x.size != y.size or x.size == 0:
        raise IEError(f"{x.size} sizes but {y.size} means; give one mean per size")
    matches = np.flatnonzero(x == at)
    if matches.size == 0:
        raise IEError(f"size {at} is not among the sizes {sorted(x.tolist())}; pick one of them")
    return float(y[np.argmax(x)] - y[matches[0]])


def _initial_guess(x: np.ndarray, y: np.ndarray) -> list[float]:
    order = np.argsort(x)
    x, y = x[order], y[order]
    c0 = float(np.median(x)) or 1.0
    a0 = float(y[-1])
    b0 = float((a0 - y[0]) * np.exp(min(x[0] / c0, 50.0)))
    return [a0, b0 if b0 != 0 else 1e-3, c0]


def _failed_fit(reason: str) -> dict:
    return {"a": float("nan"), "b": float("nan"), "c": float("nan"), "ok": False, "reason": reason}


def _stat_per_row(matrix: np.ndarray, stat: Callable[..., Any]) -> np.ndarray:
    try:
        per_row = np.asarray(stat(matrix, axis=1), dtype=float)
        if per_row.shape == (matrix.shape[0],):
            return per_row
    except TypeError:
        pass
    return np.array([stat(row) for row in matrix], dtype=float)


def _chunk_sizes(total: int, chunk: int) -> list[int]:
    return [min(chunk, total - start) for start in range(0, total, chunk)]


def _paired_diff(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if x.size != y.size:
        raise IEError(f"{x.size} scores in a but {y.size} in b; pair them one to one")
    diff = x - y
    return diff[~np.isnan(diff)]


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) < 1:
        raise IEError(f"n_boot={n_boot} must be at least 1, e.g. 2000")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise IEError(f"alpha={alpha} must be strictly between 0 and 1, e.g. 0.05")
