import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # no packaging config yet

from ie_helpers import stats  # noqa: E402
from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.stats import (  # noqa: E402
    adjust_pvalues,
    bootstrap_ci,
    fit_saturating,
    gain_after,
    paired_bootstrap_diff,
    plateau_point,
    plateau_with_ci,
    saturating_curve,
    wilcoxon_signed_rank,
    win_rate,
)

SIZES = np.array([25, 50, 100, 200, 300, 500, 800, 1000], dtype=float)


# --- bootstrap ----------------------------------------------------------------------


def test_bootstrap_ci_covers_true_mean():
    sample = np.random.default_rng(42).normal(loc=0.7, scale=0.2, size=400)
    point, lo, hi = bootstrap_ci(sample)
    assert point == pytest.approx(sample.mean())
    assert lo < 0.7 < hi
    # Width close to the normal-theory 95% interval 2 * 1.96 * sd / sqrt(n).
    assert hi - lo == pytest.approx(2 * 1.96 * sample.std(ddof=1) / 20, rel=0.15)


def test_bootstrap_ci_is_seeded_drops_nan_and_handles_empty():
    values = [0.1, 0.5, np.nan, 0.9, 0.4]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values)[0] == pytest.approx(0.475)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)


def test_bootstrap_ci_other_statistics():
    values = np.arange(1.0, 12.0)
    point, lo, hi = bootstrap_ci(values, stat=np.median, n_boot=500)
    assert point == 6.0 and lo < 6.0 < hi
    # A statistic without `axis` still works (applied per resample).
    point, lo, hi = bootstrap_ci(values, stat=lambda v: float(np.max(v)), n_boot=200)
    assert point == 11.0 and lo <= hi <= 11.0


def test_bootstrap_ci_rejects_bad_parameters():
    with pytest.raises(IEError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)
    with pytest.raises(IEError):
        bootstrap_ci([1.0, 2.0], n_boot=0)


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 300)
    a = b + 0.05 + rng.normal(0, 0.02, 300)
    diff, lo, hi = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(np.mean(a - b))
    assert 0.04 < lo < diff < hi < 0.06  # tight because the pairing removes b's spread
    with pytest.raises(IEError):
        paired_bootstrap_diff([1.0], [1.0, 2.0])


# --- paired tests -------------------------------------------------------------------


def test_win_rate_sign_test_hand_case():
    result = win_rate([1.0] * 9 + [0.0], [0.0] * 9 + [1.0])
    assert result["wins"] == 9 and result["losses"] == 1 and result["ties"] == 0 and result["n"] == 10
    assert result["win_rate"] == pytest.approx(0.9)
    assert result["p_sign"] == pytest.approx(22 / 1024)  # 2 * P(X <= 1), X ~ Bin(10, 0.5)
    assert result["p_sign"] == pytest.approx(0.0215, abs=1e-4)


def test_win_rate_ties_use_tolerance_and_count_half():
    a = [0.5, 0.1 + 0.2, 0.9, 0.2]
    b = [0.5, 0.3, 0.1, 0.4]  # 0.1 + 0.2 != 0.3 in floating point, but it is a tie
    result = win_rate(a, b)
    assert (result["wins"], result["losses"], result["ties"]) == (1, 1, 2)
    assert result["win_rate"] == 0.5
    assert result["win_rate_ties_half"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert result["p_sign"] == 1.0


def test_win_rate_all_ties_and_nan_pairs():
    result = win_rate([0.2, 0.4, np.nan], [0.2, 0.4, 0.1])
    assert result["n"] == 2 and result["ties"] == 2
    assert math.isnan(result["win_rate"]) and result["win_rate_ties_half"] == 0.5
    assert result["p_sign"] == 1.0


def test_wilcoxon_agrees_with_scipy():
    rng = np.random.default_rng(7)
    a = rng.normal(0.6, 0.1, 40)
    b = a - rng.normal(0.03, 0.05, 40)
    expected = scipy_stats.wilcoxon(a, b, zero_method="wilcox")
    result = wilcoxon_signed_rank(a, b)
    assert result["statistic"] == pytest.approx(expected.statistic)
    assert result["p"] == pytest.approx(expected.pvalue)
    assert result["n_nonzero"] == 40
    assert result["p"] < 0.05


@pytest.mark.parametrize(
    "a, b",
    [([0.5, 0.5], [0.5, 0.5]), ([0.1 + 0.2], [0.3]), ([], []), ([np.nan], [1.0])],
)
def test_wilcoxon_no_differences(a, b):
    result = wilcoxon_signed_rank(a, b)
    assert math.isnan(result["statistic"]) and result["p"] == 1.0 and result["n_nonzero"] == 0


def test_wilcoxon_tiny_samples_do_not_raise():
    assert wilcoxon_signed_rank([1.0], [0.0])["p"] == 1.0
    result = wilcoxon_signed_rank([1.0, 2.0, 3.0], [0.0, 0.0, 3.0])
    assert result["n_nonzero"] == 2 and 0 < result["p"] <= 1


def test_adjust_pvalues_holm_hand_case():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max.
    adjusted = adjust_pvalues([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_adjust_pvalues_other_method_nan_and_bad_method():
    np.testing.assert_allclose(adjust_pvalues([0.01, 0.02], method="bonferroni"), [0.02, 0.04])
    adjusted = adjust_pvalues([0.01, np.nan, 0.02], method="bonferroni")
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.04])
    assert adjust_pvalues([]).shape == (0,)
    with pytest.raises(IEError):
        adjust_pvalues([0.1], method="no-such-method")


# --- plateau ------------------------------------------------------------------------


def test_saturating_curve_and_plateau_point():
    assert saturating_curve(0.0, 0.8, 0.5, 100.0) == pytest.approx(0.3)
    c = 150.0
    x95 = plateau_point(c)
    assert x95 == pytest.approx(c * math.log(20))
    gain = saturating_curve(x95, 0.8, 0.5, c) - saturating_curve(0.0, 0.8, 0.5, c)
    assert gain == pytest.approx(0.95 * 0.5)
    with pytest.raises(IEError):
        plateau_point(c, frac=1.0)


@pytest.mark.parametrize("a, b, c", [(0.8, 0.5, 150.0), (0.6, 0.2, 60.0), (0.9, 0.7, 400.0)])
def test_fit_recovers_noiseless_curve(a, b, c):
    fit = fit_saturating(SIZES, saturating_curve(SIZES, a, b, c))
    assert fit["ok"] and fit["reason"] is None
    assert fit["c"] == pytest.approx(c, rel=0.2)
    assert (fit["a"], fit["b"]) == pytest.approx((a, b), rel=0.05)


@pytest.mark.parametrize(
    "sizes, scores",
    [
        (SIZES, np.full(SIZES.size, 0.42)),
        (SIZES, SIZES * 1e-4),  # linear: no plateau inside the data
        ([100, 200], [0.1, 0.2]),
        ([100, 100, 100, 200], [0.1, 0.2, 0.3, 0.4]),
        (SIZES, [np.nan] * SIZES.size),
        ([1, 2, 3], [0.1, 0.2]),
    ],
)
def test_fit_fails_softly(sizes, scores):
    fit = fit_saturating(sizes, scores)
    assert fit["ok"] is False and isinstance(fit["reason"], str)
    assert math.isnan(fit["c"])


def test_plateau_with_ci_on_noisy_examples():
    rng = np.random.default_rng(0)
    a, b, c = 0.8, 0.5, 150.0
    per_example = [saturating_curve(s, a, b, c) + rng.normal(0, 0.1, 80) for s in SIZES]
    result = plateau_with_ci(SIZES, per_example, n_boot=150)
    assert result["ok"]
    assert result["lo"] <= result["point"] <= result["hi"]
    assert result["lo"] < c * math.log(20) < result["hi"]
    assert result["n_failed_fits"] < 15
    assert result["c"] == pytest.approx(c, rel=0.3)


def test_plateau_with_ci_flat_scores_reports_failure():
    per_example = [np.full(10, 0.5) for _ in SIZES]
    result = plateau_with_ci(SIZES, per_example, n_boot=20)
    assert result["ok"] is False and math.isnan(result["point"])
    assert math.isnan(result["lo"]) and math.isnan(result["hi"])
    assert result["n_failed_fits"] == 20


def test_plateau_with_ci_input_errors():
    with pytest.raises(IEError):
        plateau_with_ci(SIZES, [np.ones(3)])
    with pytest.raises(IEError):
        plateau_with_ci([1, 2, 3], [np.ones(3), np.array([np.nan]), np.ones(3)])


def test_gain_after():
    sizes = [100, 300, 1000, 500]
    means = [0.50, 0.70, 0.73, 0.72]
    assert gain_after(sizes, means, 300) == pytest.approx(0.03)
    assert gain_after(sizes, means, 1000) == 0.0
    with pytest.raises(IEError, match="pick one"):
        gain_after(sizes, means, 250)


# --------------------------------------------------------------------------- one bootstrap for the whole kit


def test_resampled_indices_chunks_and_draws_with_replacement():
    rng = np.random.default_rng(0)
    chunks = list(stats.resampled_indices(rng, 7, 10, rows_per_chunk=4))
    assert [c.shape for c in chunks] == [(4, 7), (4, 7), (2, 7)]
    allrows = np.concatenate(chunks)
    assert allrows.min() >= 0 and allrows.max() < 7
    assert any(len(set(r)) < 7 for r in allrows)  # with replacement: repeats occur


def test_percentile_interval_and_argument_checks():
    boots = np.arange(1001, dtype=float)
    assert stats.percentile_interval(boots, 0.05) == (25.0, 975.0)
    assert stats.percentile_interval(boots, 0.2) == (100.0, 900.0)
    with pytest.raises(IEError, match="n_boot"):
        stats.check_bootstrap(0, 0.05)
    with pytest.raises(IEError, match="alpha"):
        stats.check_bootstrap(100, 1.0)


def test_no_module_draws_its_own_bootstrap():
    """Every bootstrap resamples through stats.resampled_indices and reads stats.percentile_interval."""
    import re
    from pathlib import Path

    root = Path(stats.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name in ("stats.py",) or path.name.startswith("bench"):
            continue
        text = path.read_text(encoding="utf-8")
        for pattern in (r"\.multinomial\(", r"np\.percentile\(", r"np\.quantile\([^)]*alpha"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(root)}: {pattern}")
    assert not offenders, offenders
