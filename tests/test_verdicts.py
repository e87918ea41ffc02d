"""The one verdict policy (ie_helpers/verdicts.py), at and around every decision point, and its use by each paper."""

from __future__ import annotations

import pandas as pd
import pytest

from ie_helpers import verdicts
from ie_helpers.papers import etlch, finner, loraplus
from ie_helpers.errors import IEError
from ie_helpers.verdicts import (DIRECTION_ONLY, INCONCLUSIVE, NOT_REPLICATED, NOT_TESTABLE, REPLICATED,
                                 Evidence)

EPS = 1e-9
SEEDS3 = (0.1, 0.12, 0.08)


def ev(lo, hi, *, effect=None, seeds=SEEDS3, tuned=True, stand_in=False):
    return Evidence(effect=(lo + hi) / 2 if effect is None else effect, lo=lo, hi=hi, seed_effects=seeds,
                    tuned_on_dev=tuned, stand_in=stand_in)


@pytest.mark.parametrize("lo, hi, expected", [
    (EPS, 0.2, REPLICATED), (0.0, 0.2, INCONCLUSIVE), (-EPS, 0.2, INCONCLUSIVE),
    (-0.2, -EPS, NOT_REPLICATED), (-0.2, 0.0, INCONCLUSIVE)])
def test_comparison_decides_on_which_side_of_zero_the_ci_lies(lo, hi, expected):
    seeds = SEEDS3 if expected != NOT_REPLICATED else (-0.1, -0.12, -0.08)
    assert verdicts.comparison(ev(lo, hi, seeds=seeds)).verdict == expected


def test_comparison_below_and_a_nonzero_decision_point():
    assert verdicts.comparison(ev(0.3, 0.45, seeds=(0.4,) * 3), decision=0.5, claimed="below").verdict == REPLICATED
    assert verdicts.comparison(ev(0.55, 0.7, seeds=(0.6,) * 3), decision=0.5, claimed="below").verdict == NOT_REPLICATED
    assert verdicts.comparison(ev(0.45, 0.55, seeds=(0.5,) * 3), decision=0.5).verdict == INCONCLUSIVE


@pytest.mark.parametrize("magnitude, expected", [(0.1, REPLICATED), (0.2, REPLICATED), (0.05, REPLICATED),
                                                 (0.05 - EPS, DIRECTION_ONLY), (0.2 + EPS, DIRECTION_ONLY)])
def test_a_stated_magnitude_must_lie_inside_the_ci(magnitude, expected):
    assert verdicts.comparison(ev(0.05, 0.2), magnitude=magnitude).verdict == expected


def test_stand_in_models_give_direction_only_on_the_claimed_side():
    assert verdicts.comparison(ev(0.05, 0.2, stand_in=True), magnitude=0.1).verdict == DIRECTION_ONLY
    assert verdicts.comparison(ev(-0.2, -0.05, seeds=(-0.1,) * 3, stand_in=True)).verdict == NOT_REPLICATED


@pytest.mark.parametrize("lo, hi, expected", [(-0.01, 0.01, NOT_REPLICATED), (-0.02, 0.01, INCONCLUSIVE),
                                              (-0.01, 0.02, INCONCLUSIVE)])
def test_an_effect_inside_the_equivalence_margin_is_absent(lo, hi, expected):
    seeds = (0.001, 0.002, 0.0015)
    assert verdicts.comparison(ev(lo, hi, seeds=seeds), equivalence_margin=0.02 - EPS).verdict == expected


@pytest.mark.parametrize("seeds, tuned, expected", [
    (SEEDS3, True, REPLICATED), (SEEDS3[:2], True, INCONCLUSIVE), ((), True, INCONCLUSIVE),
    (SEEDS3, False, INCONCLUSIVE), ((0.1, -0.05, 0.12), True, INCONCLUSIVE)])
def test_thin_evidence_and_seed_disagreement_cap_at_inconclusive(seeds, tuned, expected):
    result = verdicts.comparison(ev(0.01, 0.2, seeds=seeds, tuned=tuned))
    assert result.verdict == expected
    if expected == INCONCLUSIVE and seeds and len(set(x > 0 for x in seeds)) > 1:
        assert "disagree in sign" in result.reason


@pytest.mark.parametrize("kwargs, reason", [({"random_weights": True}, "random-weight"),
                                            ({"absent": "Qwen2.5-7B was not run"}, "Qwen2.5-7B"),
                                            ({"floor_beaten": False}, "floor")])
def test_gates_make_a_claim_not_testable_whatever_the_numbers(kwargs, reason):
    result = verdicts.comparison(ev(0.1, 0.2), **kwargs)
    assert result.verdict == NOT_TESTABLE and reason in result.reason


@pytest.mark.parametrize("lo, hi, own, expected", [
    (0.85, 0.894, True, REPLICATED), (0.85, 0.894 - EPS, True, NOT_REPLICATED), (0.894, 0.95, True, REPLICATED),
    (0.894 + EPS, 0.95, True, NOT_REPLICATED), (0.85, 0.95, False, NOT_TESTABLE)])
def test_absolute_figures_need_the_papers_model_and_data(lo, hi, own, expected):
    assert verdicts.absolute((lo + hi) / 2, lo, hi, 0.894, own_model_and_data=own).verdict == expected


@pytest.mark.parametrize("lo, hi, expected", [(-0.1, 0.1, REPLICATED), (0.0, 0.1, REPLICATED),
                                              (EPS, 0.1, NOT_REPLICATED)])
def test_null_result_holds_while_the_ci_contains_zero(lo, hi, expected):
    assert verdicts.null_result(ev(lo, hi)).verdict == expected
    assert verdicts.null_result(ev(lo, hi, seeds=(0.1,))).verdict == INCONCLUSIVE


def test_existence_counts_exactly():
    assert verdicts.existence(0, 0).verdict == REPLICATED
    assert verdicts.existence(1, 0).verdict == NOT_REPLICATED
    assert verdicts.existence(0, 0, random_weights=True).verdict == NOT_TESTABLE


def test_bad_input_is_one_line_error():
    with pytest.raises(IEError, match="not an interval"):
        Evidence(effect=0.1, lo=0.2, hi=0.1)
    with pytest.raises(IEError, match="'above' or 'below'"):
        verdicts.comparison(ev(0.1, 0.2), claimed="greater")
    with pytest.raises(IEError, match="unknown verdict"):
        verdicts.at_most_inconclusive("maybe", n_seeds=3, tuned_on_dev=True)


@pytest.mark.parametrize("verdict, n_seeds, tuned, expected", [
    (REPLICATED, 3, True, REPLICATED), (REPLICATED, 2, True, INCONCLUSIVE), (DIRECTION_ONLY, 3, False, INCONCLUSIVE),
    (NOT_REPLICATED, 1, True, INCONCLUSIVE), (NOT_TESTABLE, 1, False, NOT_TESTABLE), (INCONCLUSIVE, 5, True, INCONCLUSIVE)])
def test_evidence_rule_for_verdicts_reached_by_a_claims_own_rule(verdict, n_seeds, tuned, expected):
    assert verdicts.at_most_inconclusive(verdict, n_seeds=n_seeds, tuned_on_dev=tuned).verdict == expected


# --------------------------------------------------------------------------- every paper goes through the policy

def _etlch(seeds=3, tuned_on_dev=True, **kw):
    from ie_helpers.papers import etlch_claims

    summary = pd.DataFrame([{"system": s, "task": "json", "metric": "set_f1", "mean": m, "lo": m, "hi": m, "n": 64}
                            for s, m in (("ft", 0.8), ("base", 0.2))])
    ev = Evidence(effect=0.6, lo=0.5, hi=0.7, seed_effects=(0.6,) * seeds, tuned_on_dev=tuned_on_dev)
    win = Evidence(effect=0.25, lo=0.2, hi=0.3, seed_effects=(0.25,) * seeds, tuned_on_dev=tuned_on_dev)
    evidence = {"E1": {"base": ev}, "E2": {("json", "base"): win, ("kge", "base"): win}}
    claims = etlch_claims.etlch_claims(summary=summary, comparisons=pd.DataFrame(), plateaus={}, final_system="ft",
                                       baselines=["base"], paper_baselines=["Qwen/Qwen2.5-7B-Instruct"],
                                       train_sizes=[25, 50, 100], json_parse_at_300=None, evidence=evidence,
                                       curve_seeds=1, **kw)
    return {c.claim_id: c for c in claims}


def test_etlch_single_seed_comparisons_are_inconclusive_and_smoke_runs_not_testable():
    assert _etlch()["E2"].verdict == DIRECTION_ONLY
    one = _etlch(seeds=1)
    assert one["E1"].verdict == one["E2"].verdict == INCONCLUSIVE and "1 seed(s), fewer than 3" in one["E2"].note
    assert _etlch(tuned_on_dev=False)["E1"].verdict == INCONCLUSIVE
    assert {c.verdict for c in _etlch(random_weights=True).values()} == {NOT_TESTABLE}


def test_finner_and_loraplus_go_through_the_policy():
    systems = pd.DataFrame([{"system": "ft", "micro_f1": 0.5, "micro_lo": 0.4, "micro_hi": 0.6, "rare_types": "LOC",
                             "rare_macro_f1": 0.1, "rare_minus_micro": -0.4, "rare_minus_micro_lo": -0.5,
                             "rare_minus_micro_hi": -0.3}])
    comparisons = pd.DataFrame([{"system": "ft", "baseline": "zero-shot m", "f1_system": 0.5, "f1_baseline": 0.1,
                                 "diff": 0.4, "lo": 0.3, "hi": 0.5, "p_value": 1e-3, "p_holm": 1e-3}])
    args = dict(systems=systems, comparisons=comparisons, final_system="ft", llm_baselines={"m": ["zero-shot m"]},
                paper_baselines=[], model="smollm2-135m-instruct", data_label="fin-sec")
    one_seed = {c.claim_id: c.verdict for c in finner.finner_claims(**args, seed_f1=[0.5])}
    assert one_seed == {"F1": NOT_TESTABLE, "F2": INCONCLUSIVE, "F3": INCONCLUSIVE}
    three = {c.claim_id: c.verdict for c in finner.finner_claims(**args, seed_f1=[0.5] * 3, tuned_on_dev=True)}
    assert three["F2"] == DIRECTION_ONLY and three["F3"] == INCONCLUSIVE  # F3 from one seed's row
    rare = (Evidence(-0.4, -0.5, -0.3, seed_effects=(-0.4,) * 3, tuned_on_dev=True), 40)
    pooled = {c.claim_id: c.verdict for c in finner.finner_claims(**args, seed_f1=[0.5] * 3, tuned_on_dev=True,
                                                                   rare=rare)}
    assert pooled["F3"] == DIRECTION_ONLY
    assert {c.verdict for c in finner.finner_claims(**args, seed_f1=[0.5] * 3, random_weights=True)} == {NOT_TESTABLE}
    results = pd.DataFrame([{"experiment": "main", "role": r, "method": m, "ratio": 1.0, "train_size": 80, "seed": s,
                             "micro_f1": v} for r in ("general", "biomedical")
                            for m, v in (("loraplus", 0.5), ("lora", 0.4), ("encoder", 0.3)) for s in (0, 1)])
    claims = loraplus.loraplus_claims(results=results, comparisons=pd.DataFrame(), peaks=pd.DataFrame(),
                                    data_labels={}, encoder_labels={}, model="m", model_params=7e9,
                                    low_resource_sizes=[100], snapshot_every=5, tuned_on_dev=True)
    by_id = {c.claim_id: c for c in claims}
    assert by_id["L1"].verdict == INCONCLUSIVE and "2 seed(s) < 3" in by_id["L1"].note


def test_a_claim_of_several_comparisons_holds_only_if_each_does():
    from ie_helpers.verdicts import Verdict, all_of

    v = lambda *names: [Verdict(n, "") for n in names]  # noqa: E731
    assert all_of(v(REPLICATED, REPLICATED)) == REPLICATED
    assert all_of(v(REPLICATED, DIRECTION_ONLY)) == DIRECTION_ONLY
    assert all_of(v(DIRECTION_ONLY, INCONCLUSIVE)) == INCONCLUSIVE
    assert all_of(v(DIRECTION_ONLY, NOT_REPLICATED, INCONCLUSIVE)) == NOT_REPLICATED
    assert all_of(v(NOT_TESTABLE, NOT_TESTABLE)) == NOT_TESTABLE and all_of([]) == NOT_TESTABLE
