"""The protocol: dev-only selection, final plans with every seed, CIs over seeds and items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ie_helpers import engine, ner
from ie_helpers.errors import IEError
from ie_helpers.verdicts import Evidence


def _dev(scores: dict) -> pd.DataFrame:
    grid = engine.grid_plan({"lora": [1e-4, 4e-4], "loraplus": [1e-4, 4e-4]}, seeds=[0, 1], dataset="x")
    grid["dev_score"] = [scores[(r.method, r.lr)][r.seed] for r in grid.itertuples()]
    return grid


def test_selection_takes_the_best_mean_over_seeds_per_method():
    dev = _dev({("lora", 1e-4): [0.50, 0.60], ("lora", 4e-4): [0.70, 0.30],      # means 0.55 vs 0.50
                ("loraplus", 1e-4): [0.40, 0.40], ("loraplus", 4e-4): [0.45, 0.47]})
    sel = engine.select_on_dev(dev)
    chosen = sel[sel.chosen].set_index("method")["lr"].to_dict()
    assert chosen == {"lora": 1e-4, "loraplus": 4e-4}
    assert len(sel) == 4 and set(sel.columns) >= {"dev_score_mean", "dev_score_std", "seeds", "chosen"}
    final = engine.final_plan(sel, seeds=[0, 1, 2], dataset="x")
    assert (final.split == "test").all() and len(final) == 6
    assert final.groupby("method")["lr"].unique().map(list).to_dict() == {"lora": [1e-4], "loraplus": [4e-4]}


def test_ties_go_to_the_smaller_learning_rate_and_lower_can_be_better():
    dev = _dev({("lora", 1e-4): [0.5, 0.5], ("lora", 4e-4): [0.5, 0.5],
                ("loraplus", 1e-4): [0.2, 0.2], ("loraplus", 4e-4): [0.1, 0.1]})
    sel = engine.select_on_dev(dev)
    assert sel[sel.chosen].set_index("method")["lr"].to_dict() == {"lora": 1e-4, "loraplus": 1e-4}
    low = engine.select_on_dev(dev, higher_is_better=False)
    assert low[low.chosen].set_index("method")["lr"].to_dict() == {"lora": 1e-4, "loraplus": 4e-4}


def test_the_test_split_never_selects():
    dev = _dev({k: [0.5, 0.5] for k in [("lora", 1e-4), ("lora", 4e-4), ("loraplus", 1e-4), ("loraplus", 4e-4)]})
    dev.loc[0, "split"] = "test"
    with pytest.raises(IEError, match="test set never selects"):
        engine.select_on_dev(dev)
    dev.loc[0, "split"] = "dev"
    dev.loc[1, "dev_score"] = np.nan
    with pytest.raises(IEError, match="missing"):
        engine.select_on_dev(dev)
    with pytest.raises(IEError):
        engine.grid_plan({"lora": []}, seeds=[0])


def test_distinct_runs_drop_duplicate_training_runs():
    plan = pd.DataFrame({"method": ["lora", "lora", "lora"], "lr": [1e-4, 1e-4, 4e-4], "seed": [0, 0, 0],
                         "use": ["curve", "final", "final"]})
    assert len(engine.distinct_runs(plan, ["method", "lr", "seed"])) == 2


def test_one_seed_gives_the_item_bootstrap_and_seed_variance_widens_the_interval():
    rng = np.random.default_rng(1)
    items = rng.uniform(0, 1, 200)
    point, lo, hi = engine.seed_item_bootstrap(items[None], n_boot=2000)
    assert point == pytest.approx(items.mean()) and lo < point < hi
    se = items.std(ddof=1) / np.sqrt(items.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    spread = np.stack([items + d for d in (-0.1, 0.0, 0.1)])  # seeds that disagree by ±0.1
    p3, lo3, hi3 = engine.seed_item_bootstrap(spread, n_boot=2000)
    assert p3 == pytest.approx(items.mean()) and (hi3 - lo3) > 1.5 * (hi - lo)


def test_micro_f1_point_equals_the_span_scorer():
    gold = [[(0, 1, "PER")], [(2, 4, "ORG"), (5, 6, "LOC")], [], [(1, 2, "PER")]]
    pred = [[(0, 1, "PER")], [(2, 4, "ORG")], [(3, 4, "LOC")], []]
    counts = engine.counts_from_spans(gold, pred)
    point, lo, hi = engine.seed_item_bootstrap(counts[None], stat="micro_f1", n_boot=200)
    tp, fp, fn = counts.sum(0)
    assert point == pytest.approx(float(ner._micro_f1(tp, fp, fn)))
    assert 0 <= lo <= point <= hi <= 1


def test_paired_effect_is_evidence_with_per_seed_effects():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, (3, 150))
    better = base + 0.2 + rng.normal(0, 0.05, base.shape)
    ev = engine.paired_effect(better, base, tuned_on_dev=True, n_boot=500)
    assert isinstance(ev, Evidence) and ev.tuned_on_dev and len(ev.seed_effects) == 3
    assert ev.lo > 0.1 and ev.hi < 0.3 and ev.effect == pytest.approx(0.2, abs=0.02)
    zero_shot = base[:1]  # one row: compared with every seed of the trained system
    ev1 = engine.paired_effect(better, zero_shot, n_boot=200)
    assert len(ev1.seed_effects) == 3
    with pytest.raises(IEError, match="different items"):
        engine.paired_effect(better, base[:, :10])


def test_seed_item_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(3)
    hits, reps = 0, 120
    for r in range(reps):
        seed_shift = rng.normal(0, 0.05, (3, 1))          # training variance
        scores = 0.5 + seed_shift + rng.normal(0, 0.2, (3, 60))  # item variance
        _, lo, hi = engine.seed_item_bootstrap(scores, n_boot=300, seed=r)
        hits += lo <= 0.5 <= hi
    assert 0.80 <= hits / reps <= 1.0


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(IEError, match="unknown statistic"):
        engine.seed_item_bootstrap([[1.0]], stat="median")
    with pytest.raises(IEError, match="tp/fp/fn"):
        engine.seed_item_bootstrap([[1.0, 2.0]], stat="micro_f1")
    with pytest.raises(IEError, match="n_boot"):
        engine.seed_item_bootstrap([[1.0]], n_boot=0)


def test_a_choice_at_the_edge_of_its_grid_is_flagged():
    dev = _dev({("lora", 1e-4): [0.5, 0.6], ("lora", 4e-4): [0.7, 0.3],        # lora: 1e-4 wins, lower edge
                ("loraplus", 1e-4): [0.4, 0.4], ("loraplus", 4e-4): [0.45, 0.47]})
    sel = engine.select_on_dev(dev)
    assert sel[sel.chosen].set_index("method")["at_edge"].to_dict() == {"lora": True, "loraplus": True}
    assert not engine.tuning_complete(sel)
    three = engine.grid_plan({"lora": [1e-4, 4e-4, 1e-3]}, seeds=[0])
    three["dev_score"] = [0.2, 0.5, 0.3]
    sel3 = engine.select_on_dev(three)
    assert sel3[sel3.chosen]["lr"].tolist() == [4e-4] and engine.tuning_complete(sel3)
    one = engine.grid_plan({"lora": [4e-4]}, seeds=[0]).assign(dev_score=0.5)
    assert not engine.tuning_complete(engine.select_on_dev(one))  # a single value chooses nothing


# --------------------------------------------------------------------------- checkpoint policy

def test_best_on_dev_takes_the_best_snapshot_and_the_earliest_of_ties():
    assert engine.best_step({6: 0.1, 12: 0.4, 18: 0.3, 24: 0.4}) == 12
    assert engine.best_step({30: 0.2}) == 30
    with pytest.raises(IEError, match="nothing to choose"):
        engine.best_step({})


def test_checkpoint_policy_is_refused_in_one_line_before_training():
    assert engine.check_checkpoint_policy("last", has_dev_snapshots=False) == "last"
    assert engine.check_checkpoint_policy("best_on_dev") == "best_on_dev"
    with pytest.raises(IEError, match="not a policy"):
        engine.check_checkpoint_policy("best")
    with pytest.raises(IEError, match="use checkpoint last"):
        engine.check_checkpoint_policy("best_on_dev", has_dev_snapshots=False)
