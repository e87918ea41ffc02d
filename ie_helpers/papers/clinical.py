"""Clinical patient IE (arXiv 2509.04753): encoders vs decoders, LoRA vs full fine-tuning, multi-task instruction
tuning with leave-one-dataset-out (claims C1-C5).

Two task families over sentence items ``{"tokens", "entities": [(start, end, type)], "relations": [(hs, he, ts, te,
type)], "tags"}`` (token offsets, end exclusive):

- concept extraction (CE): a typed mention list, scored as strict spans (``nerexp``);
- relation extraction (RE): given the sentence's gold entities, a typed (head, relation, tail) list, scored as
  strict triples (exact entity texts and relation type). Encoders classify every candidate entity pair marked in
  the text (``<< head >>``, ``[[ tail ]]``); decoders generate the triples.

Both families are scored per item as (tp, fp, fn) counts, so ``engine`` gives micro-F1 with CIs over seeds and items.
Corpus loading lives in ``clinical_corpora``, the claims and the cost model in ``clinical_claims``.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ie_helpers.errors import IEError
from ie_helpers.papers.clinical_claims import (claim_c1, claim_c2, claim_c3, claim_c4, claim_c5, completion_tokens,
                                               compute_ratios, cost_row, cost_table, decoder_dims, decoder_run_flops,
                                               encoder_dims, ratio_evidence, training_flops)
from ie_helpers.papers.clinical_corpora import (as_items, load_datasets, load_user, marked_pair_item,
                                                split_user_items, task_lists)
from ie_helpers.relations import NONE_LABEL

__all__ = ["as_items", "load_datasets", "load_user", "marked_pair_item", "split_user_items", "task_lists",
           "claim_c1", "claim_c2", "claim_c3", "claim_c4", "claim_c5", "completion_tokens", "compute_ratios",
           "cost_row", "cost_table", "decoder_dims", "decoder_run_flops", "encoder_dims", "ratio_evidence",
           "training_flops", "NONE_LABEL"]  # the notebook and tests read them here

FAMILIES = ("ce", "re")

# Readable names the decoders see (1:1 within a task); tags not listed are shown as they are.
LABEL_NAMES = {"Adverse-Effect": "adverse effect", "Drug": "drug", "Disease": "disease", "Chemical": "chemical",
               "DRUG": "drug", "BRAND": "brand", "GROUP": "drug group", "DRUG_N": "non-human drug"}

STAND_IN_NOTES = {
    "ade": "ADE corpus (PubMed case reports): drugs and adverse effects, adverse-effect relations",
    "bc5cdr": "BC5CDR (PubMed abstracts): chemicals and diseases",
    "ncbi-disease": "NCBI-disease (PubMed abstracts): disease mentions",
    "ddi": "DDI-2013 (DrugBank + MEDLINE, brat standoff): drug mentions of 4 types and 4 interaction types",
    "chemprot": "ChemProt (PubMed abstracts): one marked chemical-gene pair per item, 13 relation classes",
}


# --------------------------------------------------------------------------- tasks

def fit_records(family: str, items: Sequence[dict], labels: Sequence[str], templates: Sequence[str], tokenizer,
                max_length: int) -> tuple[list[dict], int]:
    """Items whose decoder record (under the longest template) fits ``max_length`` tokens, so no training target
    is truncated, and how many were dropped."""
    if not items or tokenizer is None:
        return list(items), 0
    longest = max(templates, key=len)
    make = ce_record if family == "ce" else re_record
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
             for r in (make(s, labels, longest) for s in items)]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    kept = [s for s, n in zip(items, lengths) if n <= max_length]
    return kept, len(items) - len(kept)


def family_pools(cfg: dict, items_by_split: dict, family: str, tokenizer=None) -> tuple[dict, list[str], dict]:
    """train/dev/test items a family uses (``family_items``, then ``fit_records`` with the decoder's tokenizer),
    the labels (from train) and per split how many were dropped as too long."""
    pools, dropped = {}, {}
    for split in ("train", "dev", "test"):
        pools[split], dropped[split] = family_items(items_by_split[split], family)
    labels = entity_types(pools["train"]) if family == "ce" else relation_types(pools["train"])
    for split in pools:
        pools[split], n = fit_records(family, pools[split], labels, cfg["templates"][family], tokenizer,
                                      cfg["decoder_training"]["max_length"])
        dropped[split] += n
    return pools, labels, dropped


def build_tasks(cfg: dict, datasets: dict[str, dict], tokenizer=None) -> tuple[dict, list[dict], list[str]]:
    """The (family, dataset) tasks of the run with their training pool, labels, candidate pairs (RE), fixed dev and
    test samples; a table row per task; and one line per dataset skipped for a family (no annotations of it).
    With the decoder's ``tokenizer``, items whose record exceeds ``decoder_training.max_length`` are dropped."""
    lists = task_lists(cfg)
    tasks, rows, skipped = {}, [], []
    for fam in FAMILIES:
        for name in lists[fam]:
            pools, labels, too_long = family_pools(cfg, datasets[name], fam, tokenizer)
            if not labels or not pools["test"]:
                skipped.append(f"{name}: no {fam.upper()} annotations in train (or no test items): "
                               f"no {fam.upper()} task")
                continue
            n_train = len(pools["train"]) if cfg["train_size"] is None else min(cfg["train_size"], len(pools["train"]))
            task = {"family": fam, "name": name, "labels": labels, "train": pools["train"], "n_train": n_train,
                    "pairs": allowed_type_pairs(pools["train"]), "in_text_order": head_first(pools["train"]),
                    "dev": sample(pools["dev"], cfg["dev_size"], 4321, f"{name} dev sentences"),
                    "test": sample(pools["test"], cfg["test_size"], 1234, f"{name} test sentences")}
            tasks[(fam, name)] = task
            rows.append({"task": fam.upper(), "dataset": name, "source": datasets[name]["source"],
                         "labels": ", ".join(labels), "train pool": len(pools["train"]), "train per run": n_train,
                         "dev used": len(task["dev"]), "test used": len(task["test"]),
                         "dropped as too long (train/dev/test)": "/".join(str(too_long[s])
                                                                          for s in ("train", "dev", "test"))})
    return tasks, rows, skipped


def lodo_setup(cfg: dict, datasets: dict[str, dict], tasks: dict, tokenizer=None
               ) -> tuple[dict[str, dict], list[str], list[str]]:
    """Leave-one-dataset-out: each CE dataset's training pool, the datasets with entities, and the held-out ones
    (CE tasks of this run among the requested, else all)."""
    names = task_lists(cfg)["lodo"]
    pool = {}
    for n in names:
        train = family_items(datasets[n]["train"], "ce")[0]
        pool[n] = {"train": fit_records("ce", train, entity_types(train), cfg["templates"]["ce"], tokenizer,
                                        cfg["decoder_training"]["max_length"])[0]}
    usable = [n for n in names if entity_types(pool[n]["train"])]
    held = [h for h in lodo_held_out(cfg["lodo"]["held_out"], usable) if ("ce", h) in tasks]
    return pool, usable, held


def entity_types(items: Sequence[dict]) -> list[str]:
    return sorted({t for s in items for *_, t in s["entities"]})


def relation_types(items: Sequence[dict]) -> list[str]:
    return sorted({r[-1] for s in items for r in s["relations"]})


def allowed_type_pairs(items: Sequence[dict]) -> list[tuple[str, str]]:
    """(head type, tail type) pairs that carry a relation in ``items``: the candidate pairs of the RE classifier."""
    out = set()
    for s in items:
        types = {(a, b): t for a, b, t in s["entities"]}
        for hs, he, ts, te, _ in s["relations"]:
            if (hs, he) in types and (ts, te) in types:
                out.add((types[(hs, he)], types[(ts, te)]))
    return sorted(out)


def head_first(items: Sequence[dict]) -> bool:
    """Whether every training relation's head precedes its tail (DDI: pairs are annotated in text order), so the
    pair classifier need not ask about the reverse order."""
    rels = [r for s in items for r in s["relations"]]
    return bool(rels) and all(hs < ts for hs, _, ts, _, _ in rels)


def sample(items: Sequence, n: int | None, seed: int, what: str) -> list:
    """A seeded sample of ``min(n, len(items))`` (all when ``n`` is None); nested for growing ``n``."""
    from ie_helpers import data

    return list(items) if n is None else data.nested_sample(list(items), min(int(n), len(items)), seed, what=what)


def fraction_size(n: int, fraction: float) -> int:
    """Training items at ``fraction`` of ``n``: rounded, at least 1."""
    return max(1, round(fraction * n))


# --------------------------------------------------------------------------- instructions and records

def template_for(templates: Sequence[str], index: int, seed: int) -> str:
    """The template of training record ``index`` under ``seed``: sampled uniformly, reproducibly."""
    return templates[random.Random(f"{seed}:{index}").randrange(len(templates))]


def ce_prompt(sentence: dict, types: Sequence[str], template: str, demos: Sequence[dict] = ()) -> list[dict]:
    from ie_helpers import nerexp

    if demos:
        return nerexp.few_shot_messages(sentence, demos, types, LABEL_NAMES, template)
    return nerexp.ner_messages(sentence, types, LABEL_NAMES, template)


def ce_record(sentence: dict, types: Sequence[str], template: str) -> dict:
    from ie_helpers import nerexp

    return nerexp.ner_records([sentence], types, LABEL_NAMES, template)[0]


def demonstrations(items: Sequence[dict], k: int, seed: int = 0) -> list[dict]:
    """k short training sentences covering the types (``nerexp.select_demonstrations``) for few-shot prompts."""
    from ie_helpers import nerexp

    return nerexp.select_demonstrations(list(items), k, seed=seed)


def span_text(tokens: Sequence[str], start: int, end: int) -> str:
    return " ".join(tokens[start:end])


def relation_name(label: str) -> str:
    return label.lower().replace("_", "-")


def gold_triples(item: dict) -> list[tuple[str, str, str]]:
    tok = item["tokens"]
    return [(span_text(tok, hs, he), relation_name(r), span_text(tok, ts, te))
            for hs, he, ts, te, r in item["relations"]]


def re_input(item: dict) -> str:
    ents = [{"type": LABEL_NAMES.get(t, t), "text": span_text(item["tokens"], s, e)} for s, e, t in item["entities"]]
    return f"Text: {' '.join(item['tokens'])}\nEntities: {json.dumps(ents, ensure_ascii=False)}"


def re_output(item: dict) -> str:
    return json.dumps([{"head": h, "relation": r, "tail": t} for h, r, t in gold_triples(item)], ensure_ascii=False)


def re_instruction(template: str, relations: Sequence[str]) -> str:
    return template.replace("{relations}", ", ".join(relation_name(r) for r in relations))


def re_prompt(item: dict, relations: Sequence[str], template: str, demos: Sequence[dict] = ()) -> list[dict]:
    from ie_helpers.tasks import SYSTEM_PROMPT

    instruction = re_instruction(template, relations)
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    for d in demos:
        msgs += [{"role": "user", "content": f"{instruction}\n\n{re_input(d)}"},
                 {"role": "assistant", "content": re_output(d)}]
    return msgs + [{"role": "user", "content": f"{instruction}\n\n{re_input(item)}"}]


def re_record(item: dict, relations: Sequence[str], template: str) -> dict:
    return {"prompt": re_prompt(item, relations, template), "completion": [{"role": "assistant",
                                                                           "content": re_output(item)}], "task": "re"}


def training_records(family: str, items: Sequence[dict], labels: Sequence[str], templates: Sequence[str],
                     seed: int) -> list[dict]:
    """Instruction-input-output records, each with a template sampled for it (``template_for``)."""
    make = ce_record if family == "ce" else re_record
    return [make(s, labels, template_for(templates, k, seed)) for k, s in enumerate(items)]


def prompts(family: str, items: Sequence[dict], labels: Sequence[str], template: str,
            demos: Sequence[dict] = ()) -> list[list[dict]]:
    make = ce_prompt if family == "ce" else re_prompt
    return [make(s, labels, template, demos) for s in items]


def generate_cached(model_name: str, run, prompt_list: Sequence[list[dict]], *, max_new_tokens: int,
                    batch_size: int, stats=None, desc: str = "") -> list[str]:
    """Greedy outputs of a model (with a trained run's weights), stored on disk under weights, run, prompts and
    decoding settings (as ``nerexp.predict_entities_cached``)."""
    from ie_helpers import generate, models, train

    resolved = models.resolve_model(model_name)
    # a local folder (a merged multi-task model) is named too: merged copies of one architecture share a fingerprint
    payload = {"model": resolved.fingerprint,
               "folder": Path(resolved.path).name if resolved.source == "local" else None,
               "run": run.key if run is not None else None, "snapshot": None, "prompts": list(prompt_list),
               "max_new_tokens": max_new_tokens,
               "batch_size": batch_size}

    def compute():
        model, tokenizer, _ = train.load_for_inference(model_name, run)
        return generate.generate(model, tokenizer, list(prompt_list), max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, desc=desc or "generate", stats=stats)

    return generate.cached(payload, compute)


# --------------------------------------------------------------------------- scoring

def _norm(text) -> str:
    return " ".join(str(text).split()).casefold()


def parse_triples(output) -> set[tuple[str, str, str]]:
    from ie_helpers import parsing

    triples, _ = parsing.parse_triples(output)
    return {(_norm(h), _norm(r), _norm(t)) for h, r, t in triples}


def triple_counts(gold: Sequence[Sequence[tuple]], pred: Sequence[set]) -> np.ndarray:
    """(items, 3) strict tp / fp / fn of triple sets (texts and relation compared whitespace- and case-folded)."""
    if len(gold) != len(pred):
        raise IEError(f"{len(pred)} predictions for {len(gold)} items; pass one per item")
    out = np.zeros((len(gold), 3))
    for k, (g, p) in enumerate(zip(gold, pred)):
        g = {tuple(_norm(x) for x in t) for t in g}
        p = set(p)
        out[k] = len(g & p), len(p - g), len(g - p)
    return out


def re_counts_generated(outputs: Sequence[str], items: Sequence[dict]) -> np.ndarray:
    return triple_counts([gold_triples(s) for s in items], [parse_triples(o) for o in outputs])


def ce_counts_generated(outputs: Sequence[str], items: Sequence[dict], types: Sequence[str]) -> np.ndarray:
    """Strict span counts of generated mention lists, hallucinated mentions (not in the sentence) as false
    positives (``nerexp.score_generated`` + ``nerexp.sentence_counts``)."""
    from ie_helpers import nerexp

    score = nerexp.score_generated(list(outputs), list(items), list(types), label_names=LABEL_NAMES, n_boot=1)
    return nerexp.sentence_counts(score, list(items))


def ce_counts_tags(pred_tags: Sequence[Sequence[str]], items: Sequence[dict]) -> np.ndarray:
    from ie_helpers import ner

    gold = [set(ner.spans_from_bio(ner.io_to_bio(s["tags"]))) for s in items]
    pred = [set(ner.spans_from_bio(list(p))) for p in pred_tags]
    return np.array([[len(g & p), len(p - g), len(g - p)] for g, p in zip(gold, pred)], dtype=float).reshape(-1, 3)


def micro_f1(counts: np.ndarray) -> float:
    tp, fp, fn = np.asarray(counts, dtype=float).reshape(-1, 3).sum(axis=0)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


# --------------------------------------------------------------------------- encoder relation classifier

def pairs_to_triples(items: Sequence[dict], index, labels: Sequence[str]) -> list[set]:
    """Predicted triples per item from the classifier's pair labels (``none`` pairs dropped)."""
    out = [set() for _ in items]
    for (k, i, j), label in zip(index, labels):
        if label != NONE_LABEL:
            tok, (hs, he, _), (ts, te, _) = items[k]["tokens"], items[k]["entities"][i], items[k]["entities"][j]
            out[k].add((_norm(span_text(tok, hs, he)), _norm(relation_name(label)), _norm(span_text(tok, ts, te))))
    return out


# --------------------------------------------------------------------------- leave one dataset out

def lodo_held_out(requested: Sequence[str] | None, ce_names: Sequence[str]) -> list[str]:
    """Held-out datasets: the requested ones that are CE datasets of this run, else every CE dataset; none
    when fewer than two CE datasets exist (nothing to tune on)."""
    if len(ce_names) < 2:
        return []
    picked = [h for h in (requested or []) if h in ce_names]
    return picked or list(ce_names)


def mixture_records(datasets: dict, names: Sequence[str], per_dataset: int, templates: Sequence[str],
                    seed: int) -> list[dict]:
    """Multi-task instruction-tuning records: ``per_dataset`` CE training sentences of each named dataset, each
    with its own type list and a sampled template, shuffled together."""
    records = []
    for name in names:
        d = datasets[name]
        items = sample(d["train"], per_dataset, seed, f"{name} training sentences")
        records += training_records("ce", items, entity_types(d["train"]), templates, seed)
    random.Random(seed).shuffle(records)
    return records


def merged_model_folder(model_name: str, run, root: Path) -> str:
    """The base model with the run's adapter merged in, saved once (the start of further fine-tuning)."""
    from ie_helpers import distributed, train

    folder = Path(root) / f"merged-{run.key}"
    if not (folder / "config.json").is_file() and distributed.is_main():  # under a launch rank 0 writes it
        model, tokenizer, _ = train.load_for_inference(model_name, run, onednn=False)
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    distributed.barrier()
    return str(folder)


# --------------------------------------------------------------------------- run helpers (cached, measured)

MAX_WORDS = 60  # sentences longer than this are dropped from every pool (long sentences dominate CPU time)


def family_items(items: Sequence[dict], family: str) -> tuple[list[dict], int]:
    """The items a family uses (RE: sentences with at least two entities) of at most ``MAX_WORDS`` words, and
    how many were dropped as too long."""
    usable = [s for s in items if family == "ce" or len(s["entities"]) >= 2]
    kept = [s for s in usable if len(s["tokens"]) <= MAX_WORDS]
    return kept, len(usable) - len(kept)


def counts_generated(family: str, outputs: Sequence[str], items: Sequence[dict], labels: Sequence[str]) -> np.ndarray:
    return ce_counts_generated(outputs, items, labels) if family == "ce" else re_counts_generated(outputs, items)


def train_sft_measured(model_name: str, records: list[dict], settings: dict):
    """``train.train_sft`` (cached run; ``cached`` is False when this call trained it) and the peak resident memory
    of its first training, cached by run key (None when the run was trained before this measurement existed)."""
    from ie_helpers import generate, machine, models, train
    from ie_helpers.settings import TrainSettings

    key = train.run_key(models.resolve_model(model_name).fingerprint, records, TrainSettings.from_dict(settings))
    trained = []

    def compute():
        with machine.PeakMemory() as mem:
            result = train.train_sft(model_name, records, settings)
        trained.append(not result.cached)
        return {"peak_rss_gb": None if result.cached else mem.peak_rss_gb}

    peak = generate.cached({"kind": "clinical-train-memory", "run": key}, compute)["peak_rss_gb"]
    run = train.train_sft(model_name, records, settings, log=lambda *_: None)
    return (dataclasses.replace(run, cached=False) if any(trained) else run), peak


def token_classifier_measured(model_dir, train_items: Sequence[dict], eval_items: Sequence[dict], *,
                              max_length: int, **settings) -> tuple[list[list[str]], dict]:
    """``encoder.train_and_predict_cached`` with the peak resident memory of its first training."""
    from ie_helpers import encoder, generate, machine, models

    args = ([s["tokens"] for s in train_items], [s["tags"] for s in train_items], [s["tokens"] for s in eval_items])
    payload = {"kind": "clinical-token-classifier", "encoder": models.resolve_model(str(model_dir)).fingerprint,
               "args": args, "max_length": max_length, "settings": settings}
    fresh = []

    def compute():
        fresh.append(True)
        with machine.PeakMemory() as mem:
            tags, info = encoder.train_and_predict_cached(model_dir, *args, max_length=max_length, **settings)
        return {"tags": tags, "info": {**info, "peak_rss_gb": None if info["cached"] else mem.peak_rss_gb}}

    out = generate.cached(payload, compute)
    return out["tags"], {**out["info"], "cached": not fresh}


def score_rows(scores: dict, keys: Sequence[str], n_boot: int) -> pd.DataFrame:
    """One row per score key (a tuple named by ``keys``) with micro-F1 over seeds and its seed × item CI."""
    from ie_helpers import engine

    rows = []
    for key, counts in scores.items():
        p, lo, hi = engine.seed_item_bootstrap(counts, stat="micro_f1", n_boot=n_boot)
        rows.append({**dict(zip(keys, key)), "micro_f1": p, "lo": lo, "hi": hi, "seeds": counts.shape[0],
                     "items": counts.shape[1],
                     "per_seed": ", ".join(f"{micro_f1(c):.3f}" for c in counts)})
    return pd.DataFrame(rows)

