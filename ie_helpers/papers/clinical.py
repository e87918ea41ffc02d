"""Clinical patient IE (arXiv 2509.04753): encoders vs decoders, LoRA vs full fine-tuning, multi-task instruction
tuning with leave-one-dataset-out (claims C1-C5).

Two task families over sentence items ``{"tokens", "entities": [(start, end, type)], "relations": [(hs, he, ts, te,
type)], "tags"}`` (token offsets, end exclusive):

- concept extraction (CE): a typed mention list, scored as strict spans (``nerexp``);
- relation extraction (RE): given the sentence's gold entities, a typed (head, relation, tail) list, scored as
  strict triples (exact entity texts and relation type). Encoders classify every candidate entity pair marked in
  the text (``<< head >>``, ``[[ tail ]]``); decoders generate the triples.

Both families are scored per item as (tp, fp, fn) counts, so ``engine`` gives micro-F1 with CIs over seeds and items.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ie_helpers import verdicts
from ie_helpers.errors import IEError
from ie_helpers.relations import HEAD_CLOSE, HEAD_OPEN, NONE_LABEL, TAIL_CLOSE, TAIL_OPEN
from ie_helpers.report import Claim

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


# --------------------------------------------------------------------------- data

def marked_pair_item(text: str, label: str) -> dict | None:
    """A ChemProt-style item (``<< a >>`` and ``[[ b ]]`` in the text) as a sentence item with the two entities
    (types ARG1, ARG2) and one relation ARG1 -> ARG2; None when the markers are not both found once."""
    tokens, spans, open_at = [], {}, {}
    for word in text.split():
        if word in (HEAD_OPEN, TAIL_OPEN):
            open_at[word] = len(tokens)
        elif word in (HEAD_CLOSE, TAIL_CLOSE):
            opener = HEAD_OPEN if word == HEAD_CLOSE else TAIL_OPEN
            if opener not in open_at or opener in spans:
                return None
            spans[opener] = (open_at[opener], len(tokens))
        else:
            tokens.append(word)
    if len(spans) != 2 or any(s >= e for s, e in spans.values()):
        return None
    (hs, he), (ts, te) = spans[HEAD_OPEN], spans[TAIL_OPEN]
    entities = sorted([(hs, he, "ARG1"), (ts, te, "ARG2")])
    return {"tokens": tokens, "entities": entities, "relations": [(hs, he, ts, te, label)]}


def with_tags(items: Sequence[dict]) -> tuple[list[dict], int]:
    """Items with IOB2 ``tags`` (nested entities left out of the tags and counted; ``entities`` stay whole)."""
    from ie_helpers import formats

    return formats.with_bio_tags([{**s, "relations": s.get("relations", [])} for s in items])


def as_items(raw: Sequence[dict]) -> tuple[list[dict], int]:
    """Registered-dataset items of any shape (BIO sentences, span items, marked pairs) as tagged sentence items,
    and how many could not be converted (a marked pair without both markers)."""
    from ie_helpers import formats

    if not raw:
        return [], 0
    if "text" in raw[0]:
        items = [marked_pair_item(x["text"], x["label"]) for x in raw]
        kept = [x for x in items if x is not None]
        return with_tags(kept)[0], len(items) - len(kept)
    if "entities" not in raw[0]:
        return formats.bio_sentences_to_items(raw), 0
    return with_tags(raw)[0], 0


def split_user_items(items: Sequence[dict], seed: int = 1234, test_share: float = 0.2,
                     dev_share: float = 0.1) -> dict[str, list[dict]]:
    """train / dev / test of a user corpus without separate files: a seeded shuffle; test and train get at least
    one item, dev one when at least two remain for training (a tiny corpus may have no dev: nothing is tuned)."""
    if len(items) < 2:
        raise IEError(f"a corpus needs at least 2 sentences to split into train and test, got {len(items)}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_share * len(items)))
    rest = len(items) - n_test
    n_dev = max(1, round(dev_share * rest)) if rest >= 2 else 0
    pick = lambda idx: [items[i] for i in sorted(idx)]  # noqa: E731 - document order inside each split
    return {"test": pick(order[:n_test]), "dev": pick(order[n_test:n_test + n_dev]),
            "train": pick(order[n_test + n_dev:])}


def path_sha256(path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, in path order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def load_registered(name: str, *, allow_synthetic: bool = False) -> dict:
    """train/dev/test items of a mirror dataset with provenance and conversion notes."""
    from ie_helpers import data

    out, provenance, notes = {}, [], []
    for split in ("train", "dev", "test"):
        raw, prov = data.load_split(name, split, allow_synthetic=allow_synthetic)
        out[split], dropped = as_items(raw)
        provenance.append(dict(prov.__dict__))
        notes += list(getattr(prov, "warnings", []) or [])
        if dropped:
            notes.append(f"{name} {split}: {dropped} items without both pair markers dropped")
    return {**out, "provenance": provenance, "notes": notes, "source": "mirror"}


def load_user(name: str, spec: dict) -> dict:
    """A user corpus: ``{"path", "format"}`` (held-out test 20%, dev 10% of the rest) or with ``"test"`` (and
    optionally ``"dev"``) paths in the same format."""
    from ie_helpers import formats

    if not isinstance(spec, dict) or "path" not in spec or "format" not in spec:
        raise IEError(f"corpora.{name} must be a mapping like {{path: /data/n2c2/train, format: brat}} "
                      f"(formats: {', '.join(formats.USER_FORMATS)}; optional test: and dev: paths)")
    unknown = sorted(set(spec) - {"path", "format", "test", "dev"})
    if unknown:
        raise IEError(f"corpora.{name}: unknown key(s) {', '.join(unknown)}; valid: path, format, test, dev")
    parts, counts, provenance = {}, {}, []
    for part in ("path", "test", "dev"):
        if spec.get(part):
            parts[part], counts[part] = formats.load_user_corpus(spec[part], spec["format"])
            provenance.append({"dataset": name, "split": "train" if part == "path" else part, "source": "user-corpus",
                               "path": str(spec[part]), "sha256": path_sha256(spec[part]),
                               "n_items": len(parts[part]), "format": spec["format"]})
    notes = [f"{name} ({'train' if p == 'path' else p}): {_count_note(c)}" for p, c in counts.items()]
    if "test" in parts:
        train, dev = parts["path"], parts.get("dev")
        if dev is None:
            n_dev = max(1, round(0.1 * len(train))) if len(train) >= 2 else 0
            order = list(range(len(train)))
            random.Random(1234).shuffle(order)
            dev_idx = set(order[:n_dev])
            train, dev = ([s for k, s in enumerate(train) if k not in dev_idx],
                          [s for k, s in enumerate(train) if k in dev_idx])
            notes.append(f"{name}: {len(dev)} training sentences (10%, seed 1234) held out as dev")
        split = {"train": train, "dev": dev, "test": parts["test"]}
    else:
        split = split_user_items(parts["path"])
        notes.append(f"{name}: no test files given, so 20% of the sentences (seed 1234) are the test set and 10% "
                     "of the rest dev")
    return {**split, "provenance": provenance, "notes": notes, "source": "user"}


def _count_note(c: dict) -> str:
    return (f"{c.get('documents', 0)} documents, {c.get('sentences', 0)} sentences; "
            f"{c.get('entities_total', 0) - c.get('entities_kept', 0)} of {c.get('entities_total', 0)} entities and "
            f"{c.get('relations_total', 0) - c.get('relations_kept', 0)} of {c.get('relations_total', 0)} relations "
            f"dropped (across a sentence boundary: {c.get('entities_cross_sentence', 0)} entities, "
            f"{c.get('relations_cross_sentence', 0)} relations); {c.get('discontinuous_merged', 0)} discontinuous "
            f"entities merged to their covering span; {c.get('entities_untagged_overlap', 0)} nested entities left "
            "out of the CE tags")


def task_lists(cfg: dict) -> dict:
    """Which datasets each part of the study uses: the stand-ins of the recipe, or every corpus of ``corpora``
    (CE on each, RE on those with relations, leave-one-dataset-out over the CE corpora) when it is given."""
    corpora = cfg.get("corpora") or {}
    if corpora:
        names = list(corpora)
        return {"ce": names, "re": names, "lodo": names, "user": True}
    return {"ce": list(cfg["ce_tasks"]), "re": list(cfg["re_tasks"]),
            "lodo": list(cfg["lodo"]["datasets"]), "user": False}


def load_datasets(cfg: dict) -> dict[str, dict]:
    """Every dataset the run needs, by name: registered stand-ins from the mirror or the user's corpora."""
    lists = task_lists(cfg)
    names = list(dict.fromkeys(lists["ce"] + lists["re"] + lists["lodo"]))
    corpora = cfg.get("corpora") or {}
    return {n: load_user(n, corpora[n]) if n in corpora else load_registered(n, allow_synthetic=cfg["allow_synthetic"])
            for n in names}


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


# --------------------------------------------------------------------------- compute (C3)

def encoder_dims(model_dir) -> dict:
    """Non-embedding weights and LoRA weights (query/key/value/dense, rank 1) of an encoder: ``n_base``,
    ``n_lora_per_rank``, ``n_total``."""
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    embed = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    per_rank = sum(m.in_features + m.out_features for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in ("query", "key", "value", "dense"))
    return {"n_base": int(total - embed), "n_lora_per_rank": int(per_rank), "n_total": int(total)}


def training_flops(n_base: float, n_lora: float, tokens: float, *, full: bool,
                   head_flops_per_token: float = 0.0) -> float:
    """Training FLOPs under the bench's model (``machine.flops_model``): per token 4·N_base + 6·N_lora for LoRA
    (frozen weights get activation gradients only), 6·N_base for full fine-tuning (weight gradients too), plus
    the output head's share; attention products and padding are not counted."""
    body = 6 * n_base if full else 4 * n_base + 6 * n_lora
    return float((body + head_flops_per_token) * tokens)


def cost_row(system: str, family: str, method: str, *, trainable: int, flops: float, seconds: float,
             peak_gb: float | None, cached: bool) -> dict:
    return {"system": system, "family": family, "method": method, "trainable_params": int(trainable),
            "train_flops": float(flops), "train_s": float(seconds),
            "peak_rss_gb": float("nan") if peak_gb is None else float(peak_gb), "cached": bool(cached)}


def cost_table(rows: Sequence[dict]) -> pd.DataFrame:
    """Mean cost per system and method over its runs, and full / LoRA ratios per system."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    mean = df.groupby(["system", "family", "method"], sort=False)[
        ["trainable_params", "train_flops", "train_s", "peak_rss_gb"]].mean().reset_index()
    mean["runs"] = df.groupby(["system", "family", "method"], sort=False).size().to_numpy()
    return mean


def compute_ratios(costs: pd.DataFrame) -> pd.DataFrame:
    """Full fine-tuning ÷ LoRA per system and family: trainable parameters, FLOPs, wall time, peak memory."""
    rows = []
    for (system, family), g in costs.groupby(["system", "family"], sort=False):
        by = g.set_index("method")
        if {"lora", "full"} <= set(by.index):
            rows.append({"system": system, "family": family,
                         **{f"{c} full/LoRA": by.at["full", c] / by.at["lora", c] if by.at["lora", c] else float("nan")
                            for c in ("trainable_params", "train_flops", "train_s", "peak_rss_gb")}})
    return pd.DataFrame(rows)


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
    from ie_helpers import train

    folder = Path(root) / f"merged-{run.key}"
    if not (folder / "config.json").is_file():
        model, tokenizer, _ = train.load_for_inference(model_name, run, onednn=False)
        tmp = folder.with_name(folder.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    return str(folder)


# --------------------------------------------------------------------------- claims

PAPER_C1 = {"ce": 0.8981, "re": 0.8978}
PAPER_C2 = (0.018, 0.066)
PAPER_C5 = (0.0155, 0.3596)
C_CLAIMS = [("C1", "best decoder with PEFT: F1 0.8981 (CE), 0.8978 (RE)"),
            ("C2", "decoders beat encoders by 1.8-6.6 points absolute F1"),
            ("C3", "LoRA matches or beats full fine-tuning at about 6x lower compute"),
            ("C4", "with multi-task instruction tuning, 20% of the target training data comes within 0.005 F1 "
                   "of full-data fine-tuning"),
            ("C5", "zero-shot CE F1 rises from 0.0155 to 0.3596 with multi-task instruction tuning")]


def _ci(e: verdicts.Evidence | None) -> str:
    return "—" if e is None else f"{e.effect:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]"


def claim_c1(absolute: dict[str, tuple[float, float, float]], *, random_weights: bool, model: str) -> Claim:
    """C1 from each family's task-averaged decoder (LoRA) F1 ``(point, lo, hi)``: shown for reference."""
    parts = []
    for fam, (p, lo, hi) in absolute.items():
        v = verdicts.absolute(p, lo, hi, PAPER_C1[fam], own_model_and_data=False, random_weights=random_weights)
        parts.append((fam, p, lo, hi, v))
    if not parts:
        return Claim("C1", C_CLAIMS[0][1], "—", verdicts.NOT_TESTABLE, "no decoder runs in this profile")
    measured = "; ".join(f"{f.upper()} {p:.3f} [{lo:.3f}, {hi:.3f}]" for f, p, lo, hi, _ in parts)
    note = " | ".join(f"{f.upper()}: {v.reason}" for f, *_, v in parts)
    return Claim("C1", C_CLAIMS[0][1], measured, verdicts.NOT_TESTABLE,
                 f"{note}. Decoder {model}, not GatorTronLlama; public stand-in corpora, not the clinical ones.")


def claim_c2(evidence: dict[str, verdicts.Evidence], floor: dict[str, bool], *, random_weights: bool,
             decoder: str, encoder: str) -> Claim:
    """C2 per task: decoder (LoRA) − encoder (full fine-tuning) F1 above 0 (CIs Bonferroni-adjusted by the caller);
    the claim holds if it holds on every task (``verdicts.all_of``)."""
    judged = {t: verdicts.comparison(e, decision=0.0, claimed="above", random_weights=random_weights,
                                     floor_beaten=floor.get(t, True)) for t, e in evidence.items()}
    if not judged:
        return Claim("C2", C_CLAIMS[1][1], "—", verdicts.NOT_TESTABLE, "no task with both a decoder and an encoder")
    measured = "; ".join(f"{t}: {_ci(evidence[t])}" for t in judged)
    note = " | ".join(f"{t}: {v.verdict} ({v.reason})" for t, v in judged.items())
    return Claim("C2", C_CLAIMS[1][1], measured, verdicts.all_of(list(judged.values())),
                 f"{note}. Decoder {decoder} with LoRA vs encoder {encoder} fully fine-tuned; the paper's 1.8-6.6 "
                 "points are not compared (stand-ins).")


def claim_c3(f1_evidence: dict[str, verdicts.Evidence], compute: dict[str, verdicts.Evidence], floor: dict[str, bool],
             *, margin: float, random_weights: bool) -> Claim:
    """C3 per decoder family: LoRA − full F1 above −``margin`` (non-inferiority) and the full/LoRA training-FLOPs
    ratio above 1 (the paper: about 6); every part must hold (``verdicts.all_of``)."""
    judged = {}
    for fam, e in f1_evidence.items():
        judged[f"{fam} F1 LoRA-full"] = verdicts.comparison(e, decision=-margin, claimed="above",
                                                            random_weights=random_weights,
                                                            floor_beaten=floor.get(fam, True))
    for fam, e in compute.items():
        judged[f"{fam} FLOPs full/LoRA"] = verdicts.comparison(e, decision=1.0, claimed="above", magnitude=6.0,
                                                               random_weights=random_weights)
    if not judged:
        return Claim("C3", C_CLAIMS[2][1], "—", verdicts.NOT_TESTABLE, "no LoRA / full pair in this profile")
    ev = {**{f"{f} F1 LoRA-full": e for f, e in f1_evidence.items()},
          **{f"{f} FLOPs full/LoRA": e for f, e in compute.items()}}
    measured = "; ".join(f"{k}: {_ci(ev[k])}" for k in judged)
    note = " | ".join(f"{k}: {v.verdict} ({v.reason})" for k, v in judged.items())
    return Claim("C3", C_CLAIMS[2][1], measured, verdicts.all_of(list(judged.values())),
                 f"{note}. Non-inferiority margin {margin:g} F1; FLOPs from the stated per-token model "
                 "(4·N_base + 6·N_LoRA vs 6·N), the same model as `make bench`; wall time and peak memory in the "
                 "cost table.")


def claim_c4(evidence: dict[str, verdicts.Evidence], floor: dict[str, bool], *, margin: float,
             random_weights: bool, fraction: float) -> Claim:
    """C4 per held-out dataset: multi-task-tuned then fine-tuned on ``fraction`` minus single-task fine-tuned on
    all its data, above −``margin`` (non-inferiority)."""
    judged = {h: verdicts.comparison(e, decision=-margin, claimed="above", random_weights=random_weights,
                                     floor_beaten=floor.get(h, True)) for h, e in evidence.items()}
    if not judged:
        return Claim("C4", C_CLAIMS[3][1], "—", verdicts.NOT_TESTABLE,
                     f"no leave-one-dataset-out run at fraction {fraction:g} in this profile")
    measured = "; ".join(f"{h}: {_ci(evidence[h])}" for h in judged)
    note = " | ".join(f"held out {h}: {v.verdict} ({v.reason})" for h, v in judged.items())
    return Claim("C4", C_CLAIMS[3][1], measured, verdicts.all_of(list(judged.values())),
                 f"{note}. Effect: F1 after multi-task tuning + {fraction:.0%} of the target data minus single-task "
                 f"fine-tuning on all of it; decision point −{margin:g}.")


def claim_c5(evidence: dict[str, verdicts.Evidence], floor: dict[str, bool], *, random_weights: bool) -> Claim:
    """C5 per held-out dataset: zero-shot F1 after multi-task tuning minus the base model's zero-shot F1."""
    rise = PAPER_C5[1] - PAPER_C5[0]
    judged = {h: verdicts.comparison(e, decision=0.0, claimed="above", magnitude=rise, random_weights=random_weights,
                                     floor_beaten=floor.get(h, True)) for h, e in evidence.items()}
    if not judged:
        return Claim("C5", C_CLAIMS[4][1], "—", verdicts.NOT_TESTABLE, "no leave-one-dataset-out run in this profile")
    measured = "; ".join(f"{h}: {_ci(evidence[h])}" for h in judged)
    note = " | ".join(f"held out {h}: {v.verdict} ({v.reason})" for h, v in judged.items())
    return Claim("C5", C_CLAIMS[4][1], measured, verdicts.all_of(list(judged.values())),
                 f"{note}. The paper's rise is {rise:+.3f} (GatorTronLlama); seeds are the multi-task runs.")


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
    """``train.train_sft`` (cached run) and the peak resident memory of its first training, cached by run key
    (None when the run was trained before this measurement existed)."""
    from ie_helpers import generate, machine, models, train
    from ie_helpers.settings import TrainSettings

    key = train.run_key(models.resolve_model(model_name).fingerprint, records, TrainSettings.from_dict(settings))

    def compute():
        with machine.PeakMemory() as mem:
            result = train.train_sft(model_name, records, settings)
        return {"peak_rss_gb": None if result.cached else mem.peak_rss_gb}

    peak = generate.cached({"kind": "clinical-train-memory", "run": key}, compute)["peak_rss_gb"]
    return train.train_sft(model_name, records, settings, log=lambda *_: None), peak


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


def decoder_dims(model_path: str, lora_r: int, targets: Sequence[str]) -> dict:
    """``n_base`` (non-embedding weights), ``n_lora`` (rank ``lora_r`` on the ``targets`` Linear layers),
    ``n_total``, width ``d`` and vocabulary ``vocab`` of a causal LM, from a meta-device copy."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    separate_head = head is not None and head.weight is not embed.weight
    n_base = total - embed.weight.numel() - (head.weight.numel() if separate_head else 0)
    n_lora = sum(lora_r * (m.in_features + m.out_features) for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in set(targets))
    return {"n_base": int(n_base), "n_lora": int(n_lora), "n_total": int(total), "d": int(embed.weight.shape[1]),
            "vocab": int(embed.weight.shape[0])}


def decoder_run_flops(dims: dict, train_tokens: float, completion_tokens: float, *, full: bool) -> float:
    """FLOPs of one decoder training run: the body per token (``training_flops``) plus the head on completion
    tokens only (the fast path): 4·d·V per completion token for LoRA (frozen head), 6·d·V for full fine-tuning."""
    head = (6 if full else 4) * dims["d"] * dims["vocab"] * completion_tokens
    return training_flops(dims["n_base"], dims["n_lora"], train_tokens, full=full) + head


def completion_tokens(records: Sequence[dict], tokenizer) -> int:
    return int(sum(len(tokenizer(r["completion"][0]["content"])["input_ids"]) + 1 for r in records))


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


def ratio_evidence(ratios: Sequence[float]) -> verdicts.Evidence:
    """A deterministic ratio (one value per seed) as evidence: its CI is the range over seeds."""
    r = [float(x) for x in ratios]
    return verdicts.Evidence(effect=float(np.mean(r)), lo=min(r), hi=max(r), seed_effects=tuple(r),
                             tuned_on_dev=True, stand_in=True)
