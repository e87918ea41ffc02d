"""Do the package's bootstrap intervals cover what they claim (95%), with the right width?

A unit test on one data set cannot tell a 95% percentile interval from a 90% one: both look like
"lo < point < hi". These tests simulate many data sets with a KNOWN true value and check

(a) coverage: the share of replications whose nominal 95% interval contains the truth, and
(b) width: where a closed form exists, the mean ratio of the bootstrap width to 2·z₀.₉₇₅·SE
    (normal mean, Bernoulli proportion, paired mean difference; for the F1 statistics the
    delta-method SE, F1 being a ratio of sentence-level sums).

Tolerances (R = replications, n = 80 examples per data set, n_boot = 400):

* Coverage must lie in [0.915, 0.975]. A plain percentile bootstrap at n = 80 under-covers a
  little: the true coverage of these 95% intervals is ~0.935-0.95 (observed here 0.928-0.952),
  and the same code run at 90% gives ~0.89 (observed 0.880-0.892; 0.911 for the Bernoulli
  proportion, whose discreteness adds coverage). Binomial SD of the observed share: sqrt(p(1-p)/R).
  - R = 2000 (stats.bootstrap_ci, paired_bootstrap_diff, etlch_claims.summarise): SD 0.0053 at p = 0.94,
    so the lower bound is 4.7 SD below a correct interval; a 90% interval (p ≈ 0.89, SD 0.0070)
    sits 3.6 SD below it. The upper bound is 6.6 SD above 0.94; a 99% interval (p ≈ 0.985,
    SD 0.0027) is 3.7 SD above it.
  - R = 1000 (the NER F1 intervals, ~3 ms a replication): SD 0.0075 at 0.94 → 3.3 SD margin; a
    90% interval (SD 0.0099) is 2.5 SD below the bound.
  Coverage alone is therefore a fair but not overwhelming test; the width check is the sharp one.
* Width ratio must lie in [0.95, 1.05]. Measured 0.985-1.035 at 95% (the Monte Carlo SD of each
  mean ratio is <= 0.002; the delta method is only asymptotic, hence up to 1.035 for the rare-type
  F1). A 90% interval gives ~1.645/1.960 = 0.839 of that (>= 11 points outside the band), a 99%
  interval 2.576/1.960 = 1.31.

Every simulation is seeded; nothing depends on timing. The whole file runs in ~13 s (most of it the NER F1 studies).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from ie_helpers import ner, nerexp, stats
from ie_helpers.papers import etlch, etlch_claims

Z95 = float(norm.ppf(0.975))  # 1.95996...
N = 80  # examples (sentences, documents) per simulated data set
N_BOOT = 400
R_CHEAP = 2000  # replications for the plain-mean intervals (~0.3 ms each)
R_NER = 1000  # replications for the NER F1 intervals (~2-3 ms each)
COVER_LO, COVER_HI = 0.915, 0.975
WIDTH_LO, WIDTH_HI = 0.95, 1.05


def _check(name: str, covered, width_ratio=None) -> None:
    cover = float(np.mean(covered))
    assert COVER_LO <= cover <= COVER_HI, (
        f"{name}: nominal 95% interval covered the true value in {cover:.3f} of {len(covered)} "
        f"replications; expected [{COVER_LO}, {COVER_HI}] (~0.90 means a 90% interval, ~0.99 a 99% one)")
    if width_ratio is not None:
        ratio = float(np.mean(width_ratio))
        assert WIDTH_LO <= ratio <= WIDTH_HI, (
            f"{name}: mean width / (2·1.96·SE) = {ratio:.3f}; expected [{WIDTH_LO}, {WIDTH_HI}] "
            f"(0.84 is a 90% interval, 1.31 a 99% one)")


# --------------------------------------------------------------------------- ie_helpers.stats


def test_bootstrap_ci_mean_of_normal_covers_95_with_closed_form_width():
    mu, sigma = 1.0, 2.0
    covered, ratio = [], []
    for r in range(R_CHEAP):
        x = np.random.default_rng(10_000 + r).normal(mu, sigma, N)
        point, lo, hi = stats.bootstrap_ci(x, n_boot=N_BOOT, seed=r)
        assert point == pytest.approx(x.mean())
        covered.append(lo <= mu <= hi)
        ratio.append((hi - lo) / (2 * Z95 * x.std() / np.sqrt(N)))  # plug-in SD: what the bootstrap sees
    _check("bootstrap_ci (normal mean)", covered, ratio)


def test_bootstrap_ci_bernoulli_proportion_covers_95_with_closed_form_width():
    p_true = 0.3
    covered, ratio = [], []
    for r in range(R_CHEAP):
        x = (np.random.default_rng(20_000 + r).random(N) < p_true).astype(float)
        p_hat, lo, hi = stats.bootstrap_ci(x, n_boot=N_BOOT, seed=r)
        covered.append(lo <= p_true <= hi)
        ratio.append((hi - lo) / (2 * Z95 * np.sqrt(p_hat * (1 - p_hat) / N)))  # Wald width
    _check("bootstrap_ci (Bernoulli proportion)", covered, ratio)


def test_paired_bootstrap_diff_covers_95_with_closed_form_width():
    # a and b share a large per-example component: an unpaired interval would be ~3x too wide.
    delta = 0.3
    covered, ratio = [], []
    for r in range(R_CHEAP):
        rng = np.random.default_rng(30_000 + r)
        base = rng.normal(0.0, 1.0, N)
        a, b = base + rng.normal(delta, 0.5, N), base + rng.normal(0.0, 0.5, N)
        diff, lo, hi = stats.paired_bootstrap_diff(a, b, n_boot=N_BOOT, seed=r)
        assert diff == pytest.approx(np.mean(a - b))
        covered.append(lo <= delta <= hi)
        ratio.append((hi - lo) / (2 * Z95 * np.std(a - b) / np.sqrt(N)))
    _check("paired_bootstrap_diff", covered, ratio)


def test_plateau_with_ci_reports_the_2_5_and_97_5_percentiles_of_its_refits(monkeypatch):
    # A coverage study would need R x n_boot curve fits (minutes), so check the label directly:
    # record every plateau point the function computes (the first is the point estimate, the rest
    # come from the bootstrap refits) and require lo/hi to be their 2.5th/97.5th percentiles.
    seen = []
    real = stats.plateau_point

    def spy(c, frac=0.95):
        value = real(c, frac)
        seen.append(value)
        return value

    monkeypatch.setattr(stats, "plateau_point", spy)
    sizes = [50, 100, 200, 400, 800]
    rng = np.random.default_rng(1)
    scores = [np.clip(rng.normal(0.8 - 0.5 * np.exp(-s / 150), 0.15, 60), 0, 1) for s in sizes]
    res = stats.plateau_with_ci(sizes, scores, n_boot=200, seed=0)
    assert res["ok"] and seen[0] == res["point"]
    boot = np.array(seen[1:])
    assert boot.size == 200 - res["n_failed_fits"] and boot.size >= 150
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert (res["lo"], res["hi"]) == pytest.approx((lo, hi), rel=1e-12)
    # and not a 90% interval, which would be visibly narrower on these refits
    lo90, hi90 = np.percentile(boot, [5, 95])
    assert res["hi"] - res["lo"] > 1.05 * (hi90 - lo90)


# --------------------------------------------------------------------------- ie_helpers.papers.etlch


def test_etlch_summarise_covers_95_with_closed_form_width():
    # R_CHEAP groups (systems) of N documents in one frame; rouge_l ~ Beta(2, 3) (mean 0.4),
    # parse_strict ~ Bernoulli(0.7). summarise uses bootstrap_ci's default seed for every group,
    # so coverage here is over the independent data of the groups.
    rng = np.random.default_rng(70_000)
    frame = pd.DataFrame({
        "system": np.repeat(np.arange(R_CHEAP), N),
        "rouge_l": rng.beta(2, 3, R_CHEAP * N),
        "parse_strict": (rng.random(R_CHEAP * N) < 0.7).astype(float),
    })
    summary = etlch_claims.summarise(frame, ["system"], metric_names=("rouge_l", "parse_strict"), n_boot=N_BOOT)
    for metric, truth in (("rouge_l", 0.4), ("parse_strict", 0.7)):
        rows = summary[summary["metric"] == metric].set_index("system").sort_index()
        assert len(rows) == R_CHEAP and (rows["n"] == N).all()
        sd = frame.groupby("system")[metric].std(ddof=0).sort_index()
        covered = ((rows["lo"] <= truth) & (truth <= rows["hi"])).to_numpy()
        ratio = ((rows["hi"] - rows["lo"]) / (2 * Z95 * sd / np.sqrt(N))).to_numpy()
        _check(f"etlch_claims.summarise ({metric})", covered, ratio)


# --------------------------------------------------------------------------- NER F1 intervals
#
# A fixed population of 60 ten-token sentences with gold spans and two systems' predictions
# (correct, mistyped, missed and spurious spans). A data set is N sentences drawn uniformly with
# replacement, so the true micro-F1 is the population's 2·TP / (2·TP + FP + FN) over all 60
# sentences, and the true per-type F1s likewise. SE for the width check: F1 = mean(u)/mean(v) with
# u = 2·tp, v = 2·tp + fp + fn per sentence, influence (u - F·v)/mean(v) (delta method).

TYPES = ("LOC", "ORG", "PER")  # sorted, as nerexp.type_f1_counts orders them
LEN = 10


def _population(seed: int = 10, size: int = 60):
    rng = np.random.default_rng(seed)
    gold, sys_a, sys_b = [], [], []
    for _ in range(size):
        starts = sorted(rng.choice(np.arange(0, LEN, 2), size=int(rng.integers(0, 4)), replace=False))
        spans = [(int(s), int(s) + int(rng.integers(1, 3)), str(rng.choice(TYPES, p=[0.15, 0.4, 0.45])))
                 for s in starts]  # starts 2 apart, length <= 2: never overlapping

        def predict(p_ok: float, p_mistype: float, p_spurious: float) -> list:
            pred = []
            for s, e, typ in spans:
                u = rng.random()
                if u < p_ok:
                    pred.append((s, e, typ))
                elif u < p_ok + p_mistype:
                    pred.append((s, e, str(rng.choice([t for t in TYPES if t != typ]))))
            free = [i for i in range(LEN) if not any(s <= i < e for s, e, _ in spans + pred)]
            if free and rng.random() < p_spurious:
                i = int(rng.choice(free))
                pred.append((i, i + 1, str(rng.choice(TYPES))))
            return pred

        gold.append(spans)
        sys_a.append(predict(0.75, 0.10, 0.3))
        sys_b.append(predict(0.60, 0.15, 0.4))
    return gold, sys_a, sys_b


def _counts(gold_spans, pred_spans, typ=None) -> np.ndarray:
    """(sentences, 3) array of tp, fp, fn, computed from the span sets (not by the package)."""
    out = []
    for g, p in zip(gold_spans, pred_spans):
        g = {s for s in g if typ is None or s[2] == typ}
        p = {s for s in p if typ is None or s[2] == typ}
        out.append((len(g & p), len(p - g), len(g - p)))
    return np.array(out, dtype=float)


def _f1(c: np.ndarray) -> float:
    tp, fp, fn = c.sum(axis=0)
    return 2 * tp / (2 * tp + fp + fn)


def _influence(c: np.ndarray) -> np.ndarray:
    u, v = 2 * c[:, 0], 2 * c[:, 0] + c[:, 1] + c[:, 2]
    return (u - u.sum() / v.sum() * v) / v.mean()


def _se(psi: np.ndarray) -> float:
    return float(psi.std() / np.sqrt(psi.size))


@pytest.fixture(scope="module")
def pop():
    gold, sys_a, sys_b = _population()
    tags = {name: [ner.bio_from_spans(LEN, s) for s in spans]
            for name, spans in (("gold", gold), ("a", sys_a), ("b", sys_b))}
    counts = {"a": _counts(gold, sys_a), "b": _counts(gold, sys_b),
              **{t: _counts(gold, sys_a, t) for t in TYPES}}  # per-type counts are for system a
    truth = {"a": _f1(counts["a"]), "b": _f1(counts["b"]), **{t: _f1(counts[t]) for t in TYPES}}
    # The population must be non-trivial and its truth must be what seqeval computes on it.
    assert all(counts[t][:, [0, 2]].sum() >= 10 for t in TYPES)  # every type has gold support
    assert 0.1 < truth["a"] - truth["b"] < 0.2
    full = ner.score_ner(tags["gold"], tags["a"])
    assert full["micro_f1"] == pytest.approx(truth["a"], abs=1e-12)
    per_type = full["per_type"].set_index("type")["f1"]
    assert [per_type[t] for t in TYPES] == pytest.approx([truth[t] for t in TYPES], abs=1e-12)
    assert ner.score_ner(tags["gold"], tags["b"])["micro_f1"] == pytest.approx(truth["b"], abs=1e-12)
    return tags, counts, truth


def _draw(r: int, base: int) -> np.ndarray:
    return np.random.default_rng(base + r).integers(0, 60, N)


def test_bootstrap_f1_ci_covers_population_micro_f1(pop):
    tags, counts, truth = pop
    covered, ratio = [], []
    for r in range(R_NER):
        idx = _draw(r, 40_000)
        f1, lo, hi = ner.bootstrap_f1_ci([tags["gold"][i] for i in idx], [tags["a"][i] for i in idx],
                                         n_boot=N_BOOT, seed=r)
        assert f1 == pytest.approx(_f1(counts["a"][idx]), abs=1e-12)
        covered.append(lo <= truth["a"] <= hi)
        ratio.append((hi - lo) / (2 * Z95 * _se(_influence(counts["a"][idx]))))
    _check("ner.bootstrap_f1_ci", covered, ratio)


def test_paired_bootstrap_f1_covers_population_difference(pop):
    tags, counts, truth = pop
    delta = truth["a"] - truth["b"]
    covered, ratio = [], []
    for r in range(R_NER):
        idx = _draw(r, 50_000)
        res = ner.paired_bootstrap_f1([tags["gold"][i] for i in idx], [tags["a"][i] for i in idx],
                                      [tags["b"][i] for i in idx], n_boot=N_BOOT, seed=r)
        covered.append(res["lo"] <= delta <= res["hi"])
        psi = _influence(counts["a"][idx]) - _influence(counts["b"][idx])  # paired: same sentences
        ratio.append((res["hi"] - res["lo"]) / (2 * Z95 * _se(psi)))
    _check("ner.paired_bootstrap_f1", covered, ratio)


def test_bootstrap_type_f1_covers_micro_macro_and_rare(pop):
    tags, counts, truth = pop
    macro = float(np.mean([truth[t] for t in TYPES]))
    targets = {"micro": truth["a"], "macro": macro, "rare_macro": truth["LOC"],
               "rare_minus_micro": truth["LOC"] - truth["a"]}
    covered = {k: [] for k in targets}
    ratio = {k: [] for k in targets}
    for r in range(R_NER):
        idx = _draw(r, 60_000)
        res = nerexp.bootstrap_type_f1([tags["gold"][i] for i in idx], [tags["a"][i] for i in idx],
                                       rare=["LOC"], n_boot=N_BOOT, seed=r)
        assert res["rare_types"] == ["LOC"]
        psi_type = {t: _influence(counts[t][idx]) for t in TYPES}
        psi = {"micro": _influence(counts["a"][idx]), "macro": np.mean([psi_type[t] for t in TYPES], axis=0),
               "rare_macro": psi_type["LOC"], "rare_minus_micro": psi_type["LOC"] - _influence(counts["a"][idx])}
        for k, target in targets.items():
            covered[k].append(res[f"{k}_lo"] <= target <= res[f"{k}_hi"])
            ratio[k].append((res[f"{k}_hi"] - res[f"{k}_lo"]) / (2 * Z95 * _se(psi[k])))
    for k in targets:
        _check(f"nerexp.bootstrap_type_f1 ({k})", covered[k], ratio[k])
