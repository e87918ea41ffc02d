"""Every verdict rule tested just below, at and just above its threshold, and Holm against statsmodels.

The claim functions take small hand-made tables here, so each test moves one figure across one decision
point and checks that the verdict flips exactly there (a rule written `.any()` for `.all()`, or 0.5 for
0.7, fails one of these).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from ie_helpers import nerexp, stats
from ie_helpers.papers import etlch_claims as EC
from ie_helpers.papers import finner, loraplus
from ie_helpers.verdicts import Evidence
from ie_helpers.config import load_config

FT, BASE = "LoRA n=300", "zero-shot smollm2-135m-instruct"
QWEN = load_config("etlch", "paper")["paper_baselines"][0]
EPS = 1e-6

# --------------------------------------------------------------------------- Holm


@pytest.mark.parametrize("seed", range(5))
def test_holm_adjustment_equals_statsmodels(seed):
    p = np.random.default_rng(seed).uniform(0, 0.2, size=7)
    p[2] = np.nan
    adjusted = stats.adjust_pvalues(p)
    finite = ~np.isnan(p)
    assert np.allclose(adjusted[finite], multipletests(p[finite], method="holm")[1])
    assert np.isnan(adjusted[2])
    assert (adjusted[finite] > p[finite] - 1e-15).all() and (adjusted[finite] > p[finite]).any()


def test_etlch_paired_comparisons_holm_adjusts_over_all_rows():
    rng = np.random.default_rng(0)
    rows = []
    for system, level in ((FT, 0.55), (BASE, 0.5), ("other", 0.45)):
        for task in ("ner", "kge", "json"):
            for doc in range(30):
                rows.append({"system": system, "task": task, "doc": doc, "rouge_l": level + rng.normal(0, 0.1)})
    comp = EC.paired_comparisons(pd.DataFrame(rows), FT, [BASE, "other"])
    assert len(comp) == 6 and not np.allclose(comp.p_sign, comp.p_sign_holm)
    assert np.allclose(comp.p_sign_holm, multipletests(comp.p_sign, method="holm")[1])


def test_finner_paired_tests_holm_adjusts_over_baselines():
    from ie_helpers import ner

    rng = np.random.default_rng(1)
    sentences, preds = [], {"ft": [], "a": [], "b": []}
    for i in range(40):
        tags = ["B-PER", "O", "B-ORG", "O"]
        sentences.append({"tokens": ["w"] * 4, "tags": tags})
        for name, keep in (("ft", 0.8), ("a", 0.6), ("b", 0.7)):
            preds[name].append([t if rng.random() < keep else "O" for t in tags])
    scores = {k: nerexp.NERScore(pred_tags=v, metrics={}, per_type=pd.DataFrame(), errors={})
              for k, v in preds.items()}
    out = nerexp.paired_tests(sentences, scores, "ft", ["a", "b"], n_boot=400)
    assert len(out) == 2 and np.allclose(out.p_holm, multipletests(out.p_value, method="holm")[1])
    gold = [ner.io_to_bio(s["tags"]) for s in sentences]
    assert out.f1_system.iloc[0] == pytest.approx(ner.score_ner(gold, preds["ft"])["micro_f1"])


# --------------------------------------------------------------------------- ETLCH E1–E5


def _summary(ft_mean: dict, base_mean: dict, json_parse: dict | None = None) -> pd.DataFrame:
    rows = []
    for system, means in ((FT, ft_mean), (BASE, base_mean)):
        for (task, metric), m in means.items():
            rows.append({"system": system, "task": task, "metric": metric, "mean": m, "lo": m, "hi": m, "n": 64})
    for system, rate in (json_parse or {}).items():
        rows.append({"system": system, "task": "json", "metric": "parse_strict", "mean": rate, "lo": rate,
                     "hi": rate, "n": 64})
    return pd.DataFrame(rows)


def _comparisons(win_rates: dict, p_holm: dict, p_wilcoxon: float = 0.5, baseline: str = BASE) -> pd.DataFrame:
    return pd.DataFrame([{"task": t, "system": FT, "baseline": baseline, "metric": "set_f1", "wins": 0,
                          "losses": 0, "ties": 0, "win_rate": w, "win_rate_ties_half": w, "p_sign": p_holm[t] / 3,
                          "p_wilcoxon": p_wilcoxon, "p_sign_holm": p_holm[t]} for t, w in win_rates.items()])


CELLS = {(t, m): 0.5 for t in ("ner", "kge", "json") for m in ("set_f1", "content_rouge_l")}  # 6 content cells


def _ev(effect, lo, hi, seeds=(None, None, None), tuned=True):
    return Evidence(effect=effect, lo=lo, hi=hi, seed_effects=tuple(effect if s is None else s for s in seeds),
                    tuned_on_dev=tuned)


def _win(rate, lo, hi, **kw):  # E2 evidence is the win rate minus the paper's 70%
    return _ev(rate - EC.WIN_BAR, lo - EC.WIN_BAR, hi - EC.WIN_BAR, **kw)


def _etlch(summary=None, comparisons=None, *, baselines=(BASE,), json_300=None, plateaus=None,
           train_sizes=(25, 50, 100, 300), e1=None, e2=None):
    evidence = {"E1": e1 if e1 is not None else {}, "E2": e2 if e2 is not None else {}}
    claims = EC.etlch_claims(summary=summary if summary is not None else _summary(CELLS, CELLS),
                             comparisons=comparisons if comparisons is not None else pd.DataFrame(),
                             plateaus=plateaus or {}, final_system=FT, baselines=list(baselines),
                             paper_baselines=load_config("etlch", "paper")["paper_baselines"],
                             train_sizes=list(train_sizes), json_parse_at_300=json_300, evidence=evidence,
                             curve_seeds=3, compare_seeds=3, tuned_on_dev=True)
    return {c.claim_id: c.verdict for c in claims}


@pytest.mark.parametrize("lo, hi, verdict", [(EPS, 0.2, "direction only"), (0.0, 0.2, "inconclusive"),
                                             (-0.1, 0.1, "inconclusive"), (-0.2, -EPS, "not replicated")])
def test_e1_needs_the_ci_above_zero(lo, hi, verdict):
    assert _etlch(e1={BASE: _ev((lo + hi) / 2, lo, hi)})["E1"] == verdict


def test_e1_must_beat_every_baseline():
    e1 = {BASE: _ev(0.3, 0.2, 0.4), "other": _ev(0.0, -0.1, 0.1)}
    assert _etlch(e1=e1, baselines=(BASE, "other"))["E1"] == "inconclusive"
    e1["other"] = _ev(0.2, 0.1, 0.3)
    assert _etlch(e1=e1, baselines=(BASE, "other"))["E1"] == "direction only"


@pytest.mark.parametrize("lo, verdict", [(0.7 - EPS, "inconclusive"), (0.7, "inconclusive"),
                                         (0.7 + EPS, "direction only")])
def test_e2_win_rate_ci_must_lie_above_70_percent(lo, verdict):
    e2 = {("kge", BASE): _win(0.9, lo, 0.95), ("json", BASE): _win(0.9, 0.8, 0.95)}
    assert _etlch(e2=e2)["E2"] == verdict


def test_e2_needs_both_tasks():
    e2 = {("kge", BASE): _win(0.9, 0.8, 0.95), ("json", BASE): _win(0.5, 0.4, 0.6)}
    assert _etlch(e2=e2)["E2"] == "not replicated"


def test_e2_seeds_that_disagree_or_untuned_rates_stay_inconclusive():
    split = {("kge", BASE): _win(0.9, 0.8, 0.95, seeds=(0.3, 0.2, -0.1)), ("json", BASE): _win(0.9, 0.8, 0.95)}
    assert _etlch(e2=split)["E2"] == "inconclusive"
    untuned = {("kge", BASE): _win(0.9, 0.8, 0.95, tuned=False), ("json", BASE): _win(0.9, 0.8, 0.95)}
    assert _etlch(e2=untuned)["E2"] == "inconclusive"


def test_e2_win_scores_count_ties_as_half():
    a = np.array([[1.0, 0.5, 0.2, 0.0]])
    b = np.array([[0.0, 0.5, 0.4, 0.0]])
    assert EC.win_scores(a, b).tolist() == [[1.0, 0.5, 0.0, 0.5]]


def test_e3_is_an_absolute_figure_and_not_testable_without_the_papers_model_and_data():
    assert _etlch(json_300=(0.9, 0.85, 0.95))["E3"] == "not testable"
    assert _etlch(json_300=(0.5, 0.4, 0.6))["E3"] == "not testable"


@pytest.mark.parametrize("lo, hi, status", [
    (100, EC.PLATEAU_BY, "plateaus"), (100, EC.PLATEAU_BY + 1, "indeterminate"),
    (EC.PLATEAU_BY, 900, "indeterminate"), (EC.PLATEAU_BY + 1, 900, "still rising")])
def test_plateau_status_at_the_boundary(lo, hi, status):
    assert EC.plateau_status({"ok": True, "point": (lo + hi) / 2, "lo": lo, "hi": hi}) == status


@pytest.mark.parametrize("statuses, verdict", [
    (("plateaus", "plateaus", "still rising"), "replicated"),
    (("plateaus", "still rising", "indeterminate"), "not testable"),
    (("still rising", "still rising", "plateaus"), "not replicated")])
def test_e4_verdict_by_majority_of_tasks(statuses, verdict):
    ci = {"plateaus": (100, 300), "still rising": (500, 900), "indeterminate": (200, 900)}
    plateaus = {t: {"ok": True, "point": 250, "lo": ci[s][0], "hi": ci[s][1], "n_failed_fits": 0}
                for t, s in zip(("ner", "kge", "json"), statuses)}
    assert _etlch(plateaus=plateaus)["E4"] == verdict


@pytest.mark.parametrize("p, verdict", [(0.05 - EPS, "not replicated"), (0.05, "replicated")])
def test_e5_not_significant_at_005(p, verdict):
    comp = _comparisons({"ner": 0.6}, {"ner": 0.5}, p_wilcoxon=p, baseline=QWEN)
    assert _etlch(comparisons=comp, baselines=(QWEN,))["E5"] == verdict


# --------------------------------------------------------------------------- FinNER F1–F3


def _finner(*, f1=0.5, hi=0.55, diffs=(0.1, 0.1), p_value=(0.001, 0.001), p_holm=(0.001, 0.001),
            rare_hi=-0.01, rare_support=40, model="smollm2-135m-instruct"):
    systems = pd.DataFrame([{"system": "ft", "micro_f1": f1, "micro_lo": f1 - 0.05, "micro_hi": hi,
                             "rare_types": "LOC", "rare_macro_f1": f1 - 0.2, "rare_minus_micro": -0.2,
                             "rare_minus_micro_lo": -0.3, "rare_minus_micro_hi": rare_hi}])
    comparisons = pd.DataFrame([{"system": "ft", "baseline": b, "f1_system": f1, "f1_baseline": f1 - d, "diff": d,
                                 "lo": d - 0.05, "hi": d + 0.05, "p_value": pv, "p_holm": ph}
                                for b, d, pv, ph in zip(("zero-shot a", "zero-shot b"), diffs, p_value, p_holm)])
    claims = finner.finner_claims(systems=systems, comparisons=comparisons, final_system="ft",
                                  llm_baselines={"a": ["zero-shot a"], "b": ["zero-shot b"]},
                                  paper_baselines=load_config("finner", "paper")["paper_baselines"], model=model,
                                  data_label="fin-sec", seed_f1=[f1] * 3, tuned_on_dev=True,
                                  paper_data=model != "smollm2-135m-instruct",
                                  rare=(Evidence(-0.2, -0.3, rare_hi, seed_effects=(-0.2,) * 3, tuned_on_dev=True),
                                        rare_support))
    return {c.claim_id: c.verdict for c in claims}


@pytest.mark.parametrize("hi, verdict", [(0.894 - EPS, "not replicated"), (0.894, "replicated")])
def test_f1_paper_scale_ci_must_reach_0894(hi, verdict):
    assert _finner(f1=0.85, hi=hi, model="meta-llama/Meta-Llama-3-8B-Instruct")["F1"] == verdict


def test_f1_stand_in_model_is_not_testable_whatever_the_figure():
    assert _finner(f1=0.9, hi=0.95)["F1"] == "not testable"


def test_f2_uses_the_holm_p_not_the_raw_p():
    assert _finner(p_value=(0.01, 0.03), p_holm=(0.02, 0.049))["F2"] == "direction only"
    assert _finner(p_value=(0.01, 0.03), p_holm=(0.02, 0.06))["F2"] == "not replicated"


@pytest.mark.parametrize("diff, verdict", [(-EPS, "not replicated"), (0.0, "not replicated"), (EPS, "direction only")])
def test_f2_every_baseline_must_be_beaten(diff, verdict):
    assert _finner(diffs=(0.2, diff))["F2"] == verdict


@pytest.mark.parametrize("rare_hi, verdict", [(-EPS, "direction only"), (0.0, "inconclusive")])
def test_f3_rare_macro_significantly_below_micro(rare_hi, verdict):
    assert _finner(rare_hi=rare_hi)["F3"] == verdict


@pytest.mark.parametrize("support, verdict", [(finner.MIN_RARE_SUPPORT - 1, "inconclusive"),
                                              (finner.MIN_RARE_SUPPORT, "direction only")])
def test_f3_needs_enough_rare_test_mentions(support, verdict):
    assert _finner(rare_support=support)["F3"] == verdict


# --------------------------------------------------------------------------- LoRA+ L1–L4


def _results(main: dict, low: dict) -> pd.DataFrame:
    rows = [{"experiment": "main", "role": role, "method": m, "ratio": 1.0, "train_size": 80, "seed": s,
             "micro_f1": v} for (role, m), vals in main.items() for s, v in enumerate(vals)]
    rows += [{"experiment": "low_resource", "role": "biomedical", "method": m, "ratio": 16.0, "train_size": n,
              "seed": 0, "micro_f1": v} for (m, n), v in low.items()]
    return pd.DataFrame(rows)


def _peaks(plus_step: int, lora_step: int = 100) -> pd.DataFrame:
    return pd.DataFrame([{"role": "biomedical", "method": m, "seed": 0, "peak_f1": 0.5, "peak_step": s,
                          "last_step": 200, "censored": False, "ok": True}
                         for m, s in (("loraplus", plus_step), ("lora", lora_step))])


def _loraplus(*, plus=0.5, lora=0.4, encoder=0.3, plus_step=50, low_plus=0.5, low_full=0.5, low_500=0.6,
              params=7e9, margin=0.02):
    main = {(r, m): [v, v] for r in ("general", "biomedical")
            for m, v in (("loraplus", plus), ("lora", lora), ("encoder", encoder))}
    low = {("loraplus", 100): low_plus, ("full", 100): low_full, ("loraplus", 500): low_500, ("full", 500): low_500}
    claims = loraplus.loraplus_claim_rules(results=_results(main, low), comparisons=pd.DataFrame(), peaks=_peaks(plus_step),
                                    data_labels={}, encoder_labels={}, model="m", model_params=params,
                                    low_resource_sizes=[100, 500], snapshot_every=10, competitive_margin=margin,
                                    dev_sentences=0)
    return {c.claim_id: c.verdict for c in claims}


@pytest.mark.parametrize("plus, encoder, verdict", [
    (0.4, 0.3, "not replicated"),           # LoRA+ ties LoRA
    (0.4 + EPS, 0.3, "direction only"),
    (0.5, 0.5, "not replicated"),           # LoRA+ ties the encoder
    (0.5, 0.5 - EPS, "direction only")])
def test_l1_l2_ordering_is_strict(plus, encoder, verdict):
    v = _loraplus(plus=plus, encoder=encoder)
    assert v["L1"] == v["L2"] == verdict


@pytest.mark.parametrize("plus_step, params, verdict", [
    (100, 7e9, "not replicated"), (99, 7e9, "direction only"), (81, 7e9, "direction only"),
    (80, 7e9, "replicated"), (50, loraplus.PAPER_SCALE_PARAMS - 1, "direction only"),
    (50, loraplus.PAPER_SCALE_PARAMS, "replicated")])
def test_l3_steps_ratio_thresholds(plus_step, params, verdict):
    assert _loraplus(plus_step=plus_step, params=params)["L3"] == verdict


@pytest.mark.parametrize("low_plus, verdict", [(0.48 + 1e-9, "replicated"), (0.48 - 1e-4, "not replicated")])
def test_l4_competitive_margin(low_plus, verdict):
    assert _loraplus(low_plus=low_plus, low_full=0.5, margin=0.02)["L4"] == verdict


def test_nothing_learned_is_not_testable_at_min_f1():
    below = loraplus.MIN_F1 - EPS
    v = _loraplus(plus=below, lora=below, encoder=0.0, low_plus=below, low_full=below, low_500=below)
    assert v["L1"] == v["L2"] == v["L4"] == "not testable"
    v = _loraplus(plus=loraplus.MIN_F1, lora=0.0, encoder=0.0)
    assert v["L1"] == "direction only"
