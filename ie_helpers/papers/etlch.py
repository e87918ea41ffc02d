"""ETLCH (arXiv 2509.08381) on CoNLL04: training records, chained inference, per-example scores.

Metrics are declared next to the task (lm-evaluation-harness style): every task is scored with
ROUGE-L (raw and on content), MiniLM cosine on content, strict and lenient JSON parse success, and a
set F1 over what the output means (entities for NER, triples for KGE, entities + triples for JSON).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ie_helpers import engine, metrics
from ie_helpers import tasks as tasks_module
from ie_helpers.data import nested_sample
from ie_helpers.generate import GenerationStats, generate
from ie_helpers.errors import IEError
from ie_helpers.tasks import (ETLCH_TASKS, chain_input, etlch_examples, gold_entities, gold_record, gold_triples,
                              dumps, instructions, prompt_messages, to_prompt_completion)


TASK_MEANING = metrics.OUTPUT_MEANING
# set F1 (which decides E1/E2), content ROUGE-L and content cosine score what an output extracted; raw ROUGE-L also
# rewards the JSON format (key names, brackets): an empty skeleton scores well on it, so it is secondary.
METRICS = ("set_f1", "content_rouge_l", "rouge_l", "content_cosine", "parse_strict", "parse_lenient", "truncated", "malformed")
NULL_SYSTEM = "null: empty skeleton"


def null_outputs(docs: list[dict], entity_types: list[str], tasks=ETLCH_TASKS) -> dict[str, list[str]]:
    """The format-only floor: per task, the answer with the right JSON shape and nothing extracted."""
    empty = {"ner": dumps([]), "kge": dumps([]),
             "json": dumps(gold_record({"tokens": [], "entities": [], "relations": []}, entity_types))}
    return {task: [empty[task]] * len(docs) for task in ETLCH_TASKS if task in tasks}


def training_records(docs: list[dict], n: int, seed: int, *, tasks, entity_types, relation_types) -> list[dict]:
    """n documents per task (nested across n for a fixed seed), all tasks mixed into one multi-task set."""
    sample = nested_sample(docs, n, seed, what="training documents")
    return [to_prompt_completion(ex) for i, doc in enumerate(sample)
            for ex in etlch_examples(doc, i, tasks, entity_types=entity_types, relation_types=relation_types)]


HOLDOUT = 0.2  # share of a user's single file held out as the test set (as the NER notebooks do)
DEV_SHARE = 0.1  # share of the training documents held out as dev when the corpus has no dev split
AUTO_CAP = 512  # the most new tokens an "auto" cap allows


def load_documents(cfg: dict) -> dict:
    """Training, dev and evaluation documents with provenance. A user file with no separate test split is split
    once (seed 1234), so no document is both trained on and scored, and is always scored on that test part (another
    ``eval_split`` is refused); without a dev split (or when ``eval_split`` is dev) the dev documents are held out
    of train, so tuning never sees an evaluated document."""
    import dataclasses

    from ie_helpers import data, ner_data

    train_docs, train_prov = data.load_split(cfg["dataset"], "train", allow_synthetic=cfg["allow_synthetic"])
    notes = []
    if train_prov.source == "user-file" and cfg["eval_split"] != "test":
        raise IEError(f"eval_split '{cfg['eval_split']}' needs a dataset with that split; your file is split once and "
                      f"scored on its held-out {HOLDOUT:.0%} test documents: give eval_split test")
    if train_prov.source == "user-file":
        train_docs, test_docs = ner_data.split_holdout(train_docs, HOLDOUT, seed=1234)
        test_prov = dataclasses.replace(train_prov, split=f"test (held out {HOLDOUT:.0%})", n_items=len(test_docs))
        train_prov.split, train_prov.n_items = f"train ({1 - HOLDOUT:.0%})", len(train_docs)
        notes.append(f"{cfg['dataset']} has no separate test file: {len(test_docs)} documents ({HOLDOUT:.0%}, "
                     "seed 1234) were held out as the test set and never trained on")
    else:
        test_docs, test_prov = data.load_split(cfg["dataset"], cfg["eval_split"], allow_synthetic=cfg["allow_synthetic"])
    dev_docs, dev_prov = None, None
    if train_prov.source != "user-file" and cfg["eval_split"] != "dev":
        try:
            dev_docs, dev_prov = data.load_split(cfg["dataset"], "dev", allow_synthetic=cfg["allow_synthetic"])
        except IEError:
            dev_docs = None
    if dev_docs is None:
        train_docs, dev_docs = ner_data.split_holdout(train_docs, DEV_SHARE, seed=4321)
        dev_prov = dataclasses.replace(train_prov, split=f"dev (held out of train, {DEV_SHARE:.0%})",
                                       n_items=len(dev_docs))
        train_prov = dataclasses.replace(train_prov, n_items=len(train_docs))
        notes.append(f"dev: {len(dev_docs)} training documents ({DEV_SHARE:.0%}, seed 4321) held out for tuning")
    return {"train": train_docs, "dev": dev_docs, "test": test_docs, "provenance": [train_prov, dev_prov, test_prov],
            "notes": notes}


def epochs_for(n_records: int, settings: dict, min_steps: int) -> float:
    """Passes over ``n_records`` so a run takes at least ``min_steps`` optimizer steps (the recipe's epochs
    otherwise): small training sets are not stopped after a handful of updates, so a learning curve compares
    data sizes rather than training lengths. Under ``accelerate launch`` each process trains on batch_size / k
    items (``train.per_device_batch``), so the steps are the same."""
    per_step = settings["batch_size"] * settings.get("grad_accum", 1)
    steps_per_epoch = -(-n_records // per_step)
    epochs = float(settings["epochs"])
    if min_steps and steps_per_epoch * epochs < min_steps:
        return min_steps / steps_per_epoch
    return epochs


def answer_caps(train_docs: list[dict], tokenizer, *, tasks, entity_types, cap: int, margin: int = 16,
                n_docs: int = 400) -> dict[str, int]:
    """``max_new_tokens`` per task from the training split's gold answers (99th percentile in this tokenizer's
    tokens + ``margin``, at most ``cap``): sized on train, so no evaluated document chooses it."""
    from ie_helpers.generate import max_new_tokens_for

    sample = nested_sample(train_docs, min(n_docs, len(train_docs)), seed=0, what="documents for answer lengths")
    golds = [gold_outputs(d, entity_types) for d in sample]
    return {t: max_new_tokens_for([g[t] for g in golds], tokenizer, margin=margin, cap=cap) for t in tasks}


def run_settings(cfg: dict, n_records: int, lr: float, seed: int) -> dict:
    """The training settings of one run: the recipe's, the learning rate, the seed and enough passes for
    ``min_steps`` optimizer steps."""
    epochs = epochs_for(n_records, cfg["training"], cfg["min_steps"])
    return {**cfg["training"], "lr": float(lr), "seed": int(seed), "epochs": epochs}


def launch_records(cfg: dict, size: int | None, seed: int, lr: float | None = None) -> tuple[list[dict], str, dict]:
    """The records, model and settings of one LoRA run (the notebook's training loop, one size and seed); ``lr``
    is the rate the notebook chose on dev (its dev_grid.csv), needed when the recipe's grid has several."""
    lr = engine.launch_rate(cfg["lrs"], lr, "recipe's")
    docs = load_documents(cfg)["train"]
    ents, rels = tasks_module.label_sets(docs)
    records = training_records(docs, size or max(cfg["train_sizes"]), seed, tasks=cfg["tasks"], entity_types=ents,
                               relation_types=rels)
    return records, cfg["model"], run_settings(cfg, len(records), lr, seed)


def gold_outputs(doc: dict, entity_types: list[str]) -> dict[str, str]:
    return {"ner": dumps(gold_entities(doc)), "kge": dumps(gold_triples(doc)),
            "json": dumps(gold_record(doc, entity_types))}


def run_chain(model, tokenizer, docs: list[dict], *, tasks=ETLCH_TASKS, entity_types, relation_types,
              max_new_tokens: int | dict[str, int] = 256, batch_size: int = 16, chained: bool = True,
              stats: GenerationStats | None = None, desc: str = "") -> dict:
    """Generate every task for every document; with ``chained``, downstream inputs use this model's outputs.
    ``max_new_tokens``: one cap, or one per task. Returns ``{"outputs": {task: [text]}, "truncated": {task:
    [bool]}}``: an answer cut at its cap is truncated, counted apart from malformed output."""
    instr = instructions(entity_types, relation_types)
    texts = [" ".join(d["tokens"]) for d in docs]
    golds = [gold_outputs(d, entity_types) for d in docs]
    outputs: dict[str, list[str]] = {}
    truncated: dict[str, list[bool]] = {}
    for task in ETLCH_TASKS:  # fixed order: ner feeds kge feeds json
        if task not in tasks:
            continue
        upstream_ner = outputs.get("ner") if chained and "ner" in outputs else [g["ner"] for g in golds]
        upstream_kge = outputs.get("kge") if chained and "kge" in outputs else [g["kge"] for g in golds]
        prompts = [prompt_messages(instr[task], chain_input(task, t, n, k))
                   for t, n, k in zip(texts, upstream_ner, upstream_kge)]
        cap = max_new_tokens[task] if isinstance(max_new_tokens, dict) else max_new_tokens
        hit: list[bool] = []
        outputs[task] = generate(model, tokenizer, prompts, max_new_tokens=cap, batch_size=batch_size,
                                 desc=f"{desc} {task}".strip(), stats=stats, hit_cap=hit)
        truncated[task] = hit
    return {"outputs": outputs, "truncated": truncated}


def chain_cached(base_model: str, run, docs: list[dict], *, tasks, entity_types, relation_types, max_new_tokens,
                 batch_size: int, chained: bool, stats: GenerationStats | None = None, desc: str = "") -> dict:
    """``run_chain`` for one system, cached by weights, adapter, documents, prompts and decoding settings (a
    rerun generates nothing; a killed run keeps every finished system)."""
    from ie_helpers import generate as gen
    from ie_helpers import models, train

    payload = {"kind": "etlch-chain", "model": models.resolve_model(base_model).fingerprint,
               "run": run.key if run else None, "docs": [d["tokens"] for d in docs], "tasks": list(tasks),
               "max_new_tokens": max_new_tokens, "batch_size": batch_size, "chained": chained,
               "instructions": instructions(entity_types, relation_types), "system_prompt": tasks_module.SYSTEM_PROMPT}

    def compute():
        model_obj, tok, _ = train.load_for_inference(base_model, run)
        return run_chain(model_obj, tok, docs, tasks=tasks, entity_types=entity_types, relation_types=relation_types,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, chained=chained, stats=stats, desc=desc)
    return gen.cached(payload, compute)


def null_system(docs: list[dict], entity_types: list[str], tasks=ETLCH_TASKS) -> dict:
    """The format-only floor as a chain result (nothing truncated)."""
    outputs = null_outputs(docs, entity_types, tasks)
    return {"outputs": outputs, "truncated": {t: [False] * len(v) for t, v in outputs.items()}}


def score_outputs(result: dict, docs: list[dict], entity_types: list[str], encoder) -> pd.DataFrame:
    """One row per (task, document) with every metric; the unit for paired tests and bootstrap CIs.
    ``result``: a chain result (``run_chain``) or a plain {task: outputs} mapping; ``truncated`` marks answers
    cut at the cap and ``malformed`` the unparseable ones that were not cut (the model wrote bad JSON)."""
    chain = "outputs" in result and isinstance(result["outputs"], dict)
    outputs, cut = (result["outputs"], result.get("truncated", {})) if chain else (result, {})
    rows = []
    golds = [gold_outputs(d, entity_types) for d in docs]
    refs_by_task = {task: [g[task] for g in golds] for task in outputs}
    all_cos = metrics.content_cosine([p for preds in outputs.values() for p in preds],  # one encode call
                                     [r for refs in refs_by_task.values() for r in refs], encoder)
    cos_by_task = dict(zip(outputs, np.split(all_cos, np.cumsum([len(p) for p in outputs.values()])[:-1])))
    for task, preds in outputs.items():
        refs = refs_by_task[task]
        rouge, content_rouge = metrics.rouge_l(preds, refs), metrics.content_rouge_l(preds, refs)
        cos = cos_by_task[task]
        meaning = TASK_MEANING[task]
        for i, (pred, ref) in enumerate(zip(preds, refs)):
            pred_set, parsed = meaning(pred)
            gold_set, _ = meaning(ref)
            f1 = metrics.per_example_f1([pred_set], [gold_set])[0]
            truncated = bool(cut.get(task, [False] * len(preds))[i])
            rows.append({"task": task, "doc": i, "rouge_l": rouge[i], "content_rouge_l": content_rouge[i],
                         "content_cosine": cos[i], "parse_strict": float(parsed.strict), "parse_lenient": float(parsed.lenient),
                         "truncated": float(truncated), "malformed": float(not parsed.lenient and not truncated),
                         "set_f1": f1, "parse_error": parsed.error or "", "output": pred})
    return pd.DataFrame(rows)


def micro_set_f1(outputs: dict[str, list[str]], docs: list[dict], entity_types: list[str]) -> pd.DataFrame:
    """Corpus-level micro P/R/F1 of the meaning sets per task (complements the per-document mean)."""
    golds = [gold_outputs(d, entity_types) for d in docs]
    rows = []
    for task, preds in outputs.items():
        meaning = TASK_MEANING[task]
        pred_sets = [meaning(p)[0] for p in preds]
        gold_sets = [meaning(g[task])[0] for g in golds]
        rows.append({"task": task, **metrics.set_prf(pred_sets, gold_sets)})
    return pd.DataFrame(rows)


