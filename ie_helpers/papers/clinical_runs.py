"""The clinical notebook's runs as functions: the same data, training samples, records and settings whether the
notebook asks for a run or ``accelerate launch`` trains it (``python -m ie_helpers.papers.launch --paper clinical``),
so a launched run lands in the cache entry the notebook reads.

Each run is scored per item and keeps what it predicted (``Scored``): the kit's ``evaluate`` modules recompute every
reported micro-F1 from those predictions (``evaluate_module_check``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ie_helpers import engine
from ie_helpers.errors import IEError
from ie_helpers.papers import clinical

SYSTEMS = ("decoder", "encoder")
METHODS = ("lora", "full")


@dataclass(frozen=True)
class Scored:
    """One run of a family on its evaluation items: strict (tp, fp, fn) per item, and per item what it predicted:
    IOB2 tags with the mentions not found in the sentence (CE), or the set of (head, relation, tail) triples (RE)."""
    family: str
    items: list
    counts: np.ndarray
    predicted: list
    hallucinated: list[int]


# --------------------------------------------------------------------------- data and samples

def prepare_tasks(cfg: dict) -> dict:
    """The notebook's data step: every dataset, the first decoder's tokenizer (it sizes every pool) and the tasks."""
    from transformers import AutoTokenizer

    from ie_helpers import models

    datasets = clinical.load_datasets(cfg)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model(cfg["decoders"][0]).path)
    tasks, rows, skipped = clinical.build_tasks(cfg, datasets, tokenizer)
    return {"datasets": datasets, "tokenizer": tokenizer, "tasks": tasks, "rows": rows, "skipped": skipped}


def train_items(task: dict, seed: int, size: int | None = None) -> list[dict]:
    """The training sample of a run: ``size`` items (default the task's ``n_train``) drawn with ``seed``."""
    n = min(size or task["n_train"], len(task["train"]))
    return clinical.sample(task["train"], n, seed, f"{task['name']} training sentences")


def tuning_dev(cfg: dict, task: dict) -> list[dict]:
    """The dev items the learning-rate grids are scored on."""
    n = cfg["tuning"]["dev_size"]
    return task["dev"][:n] if n else task["dev"]


# --------------------------------------------------------------------------- decoder runs

def decoder_settings(cfg: dict, method: str, lr: float, seed: int) -> dict:
    return {**cfg["decoder_training"], "lr": float(lr), "seed": int(seed), "full_finetune": method == "full"}


def decoder_records(cfg: dict, family: str, task: dict, items: Sequence[dict], seed: int,
                    base: str | None = None) -> list[dict]:
    """Training records of a decoder run; ``base``: a merged multi-task model the run starts from (named in every
    record, so the run key tells it apart: merged copies of one architecture share a fingerprint)."""
    records = clinical.training_records(family, items, task["labels"], cfg["templates"][family], seed)
    return [{**r, "base": base.rsplit("/", 1)[-1]} for r in records] if base else records


def decoder_run(cfg: dict, model: str, family: str, task: dict, items: Sequence[dict], method: str, lr: float,
                seed: int, base: str | None = None):
    """Train (cached) one decoder run: (run, records, peak resident GB of its first training)."""
    records = decoder_records(cfg, family, task, items, seed, base)
    run, peak = clinical.train_sft_measured(base or model, records, decoder_settings(cfg, method, lr, seed))
    return run, records, peak


def decoder_scored(cfg: dict, model: str, run, family: str, task: dict, items: Sequence[dict], *,
                   template: str | None = None, demos: Sequence[dict] = (), stats=None, desc: str = "") -> Scored:
    """Greedy answers (cached) of a model, with a run's weights or none, to ``items``, scored strictly."""
    prompts = clinical.prompts(family, items, task["labels"], template or cfg["templates"][family][0], demos)
    outputs = clinical.generate_cached(model, run, prompts, max_new_tokens=cfg["max_new_tokens"][family],
                                       batch_size=cfg["gen_batch_size"], stats=stats, desc=desc)
    return scored_outputs(family, outputs, items, task["labels"])


def scored_outputs(family: str, outputs: Sequence[str], items: Sequence[dict], labels: Sequence[str]) -> Scored:
    """Generated answers scored as ``clinical.counts_generated`` scores them, keeping the predictions."""
    from ie_helpers import nerexp

    items = list(items)
    if family == "re":
        return scored_triples(items, [clinical.parse_triples(o) for o in outputs])
    score = nerexp.score_generated(list(outputs), items, list(labels), label_names=clinical.LABEL_NAMES, n_boot=1)
    hallucinated = score.per_sentence["n_hallucinated"].astype(int).tolist()
    return Scored("ce", items, nerexp.sentence_counts(score, items), [list(t) for t in score.pred_tags], hallucinated)


def scored_triples(items: list[dict], predicted: list[set]) -> Scored:
    counts = clinical.triple_counts([clinical.gold_triples(s) for s in items], predicted)
    return Scored("re", items, counts, predicted, [0] * len(items))


# --------------------------------------------------------------------------- encoder runs

def encoder_settings(cfg: dict, method: str, lr: float, seed: int) -> dict:
    et = cfg["encoder_training"]
    return dict(method=method, lr=float(lr), epochs=et["epochs"], min_steps=et["min_steps"],
                batch_size=et["batch_size"], seed=int(seed), lora_r=et["lora_r"], lora_alpha=et["lora_alpha"],
                lora_dropout=et["lora_dropout"])


def encoder_scored(cfg: dict, encoder: str, family: str, task: dict, items: Sequence[dict],
                   eval_items: Sequence[dict], method: str, lr: float, seed: int) -> tuple[Scored, dict]:
    """Train (cached) one encoder on ``items`` (a token tagger for CE, an entity-pair classifier for RE), predict
    ``eval_items`` (part of the cache key) and score them strictly; with the run's info."""
    from ie_helpers import models, relations

    et = cfg["encoder_training"]
    path = models.resolve_model(encoder).path
    common = encoder_settings(cfg, method, lr, seed)
    eval_items = list(eval_items)
    if family == "ce":
        tags, info = clinical.token_classifier_measured(path, items, eval_items, max_length=et["max_length"],
                                                        precision="auto", group_by_length=True, **common)
        return Scored("ce", eval_items, clinical.ce_counts_tags(tags, eval_items), [list(t) for t in tags],
                      [0] * len(eval_items)), info
    tr_texts, tr_labels, _ = relations.pair_examples(items, task["pairs"], task["in_text_order"])
    ev_texts, _, index = relations.pair_examples(eval_items, task["pairs"], task["in_text_order"])
    labels, info = relations.pair_classifier_cached(path, tr_texts, tr_labels, ev_texts, max_length=et["max_length"],
                                                   **{**common, "epochs": et["re_epochs"]})
    return scored_triples(eval_items, clinical.pairs_to_triples(eval_items, index, labels)), info


# --------------------------------------------------------------------------- one run under `accelerate launch`

def launch_plan_row(cfg: dict, tasks: dict, *, system: str, family: str, dataset: str | None, model: str | None,
                    method: str, lr: float | None) -> dict:
    """The run a launch asks for, checked against the recipe, with its defaults filled in: the family's first
    task, the system's first model, and the only rate of its grid (else ``lr`` must be the dev-chosen one)."""
    if system not in SYSTEMS or method not in METHODS or family not in clinical.FAMILIES:
        raise IEError(f"--system {system} --method {method} --family {family}: use a system of {', '.join(SYSTEMS)}, "
                      f"a method of {', '.join(METHODS)} and a family of {', '.join(clinical.FAMILIES)}")
    names = [n for f, n in tasks if f == family]
    dataset = dataset or (names[0] if names else None)
    if (family, dataset) not in tasks:
        raise IEError(f"no {family.upper()} task on '{dataset}' in this profile: use one of {', '.join(names) or 'none'}")
    models_of = cfg["decoders"] if system == "decoder" else cfg["encoders"]
    model = model or models_of[0]
    if model not in models_of:
        raise IEError(f"{system} '{model}' is not in the recipe's {system}s ({', '.join(models_of)}): pass --model")
    return {"system": system, "family": family, "dataset": dataset, "model": model, "method": method,
            "lr": engine.launch_rate(cfg["lrs"][f"{system}_{method}"], lr, f"{system}_{method}")}


def launch_records(cfg: dict, size: int | None, seed: int, *, family: str = "ce", dataset: str | None = None,
                   model: str | None = None, method: str = "lora", lr: float | None = None
                   ) -> tuple[list[dict], str, dict]:
    """The records, model and settings of one decoder run (a main run, or a dev-grid run with the tuning size and
    seed), as the notebook's ``decoder_run`` builds them."""
    tasks = prepare_tasks(cfg)["tasks"]
    row = launch_plan_row(cfg, tasks, system="decoder", family=family, dataset=dataset, model=model, method=method,
                          lr=lr)
    task = tasks[(family, row["dataset"])]
    records = decoder_records(cfg, family, task, train_items(task, seed, size), seed)
    return records, row["model"], decoder_settings(cfg, method, row["lr"], seed)


def lodo_mixture(cfg: dict, pool: dict, names: Sequence[str], held_out: str, seed: int) -> list[dict]:
    """The multi-task instruction-tuning records of one leave-one-dataset-out run: ``lodo.mixture_size`` CE
    sentences of every dataset but ``held_out`` (``pool``, ``names``: ``clinical.lodo_setup``)."""
    others = [n for n in names if n != held_out]
    return clinical.mixture_records({n: pool[n] for n in others}, others, cfg["lodo"]["mixture_size"],
                                    cfg["templates"]["ce"], seed)


def launch_lodo_records(cfg: dict, size: int | None, seed: int, *, dataset: str | None = None, lr: float | None = None,
                        fraction: float | None = None, family: str = "ce", model: str | None = None,
                        method: str = "lora") -> tuple[list[dict], str, dict]:
    """The records, model and settings of one leave-one-dataset-out run, as the notebook's loop builds them (held
    out: ``dataset``, the first held-out dataset by default): the multi-task run, or with ``fraction`` the
    fine-tuning of that share of the held-out training sample on the multi-task model (its adapter merged; the
    multi-task run is trained first when it is not cached)."""
    if size is not None:
        raise IEError("--size does not apply to a leave-one-dataset-out run: its mixture takes lodo.mixture_size "
                      "sentences of each other dataset, its fine-tuning --fraction of the held-out training sample")
    if (family, method) != ("ce", "lora") or model not in (None, cfg["decoders"][0]):
        raise IEError(f"leave-one-dataset-out runs are CE LoRA runs of {cfg['decoders'][0]}: leave out --family, "
                      "--method and --model")
    if fraction is not None and not 0 < fraction <= 1:
        raise IEError(f"--fraction {fraction}: give a share of the held-out training sample in (0, 1], e.g. "
                      f"{cfg['lodo']['fractions'][0] if cfg['lodo']['fractions'] else 0.1}")
    prepared = prepare_tasks(cfg)
    pool, names, held = clinical.lodo_setup(cfg, prepared["datasets"], prepared["tasks"], prepared["tokenizer"])
    dataset = dataset or (held[0] if held else None)
    if dataset not in held:
        raise IEError(f"'{dataset}' is not held out in this profile's leave-one-dataset-out runs: use one of "
                      f"{', '.join(held) or 'none'}")
    lr = engine.launch_rate(cfg["lrs"]["decoder_lora"], lr, "decoder_lora",
                            "the CE rate the notebook chose on dev (the `chosen` row of its dev_grid.csv)")
    settings = decoder_settings(cfg, "lora", lr, seed)
    mixture, decoder = lodo_mixture(cfg, pool, names, dataset, seed), cfg["decoders"][0]
    if fraction is None:
        return mixture, decoder, settings
    from ie_helpers import models

    mt_run, _ = clinical.train_sft_measured(decoder, mixture, settings)
    mt_model = clinical.merged_model_folder(decoder, mt_run, models.cache_dir() / "clinical")  # the notebook's root
    task = prepared["tasks"][("ce", dataset)]
    items = train_items(task, seed, clinical.fraction_size(task["n_train"], fraction))
    return decoder_records(cfg, "ce", task, items, seed, base=mt_model), mt_model, settings


def launch_encoder_run(cfg: dict, size: int | None, seed: int, *, family: str = "ce", dataset: str | None = None,
                       model: str | None = None, method: str = "lora", lr: float | None = None,
                       split: str = "test") -> dict:
    """Train (cached) one encoder run as the notebook does and predict its evaluation items: ``split`` test (a
    main run) or dev (a dev-grid run); returns a summary."""
    prepared = prepare_tasks(cfg)
    row = launch_plan_row(cfg, prepared["tasks"], system="encoder", family=family, dataset=dataset, model=model,
                          method=method, lr=lr)
    if split not in ("dev", "test"):
        raise IEError(f"--split {split}: an encoder run predicts the dev (grid) or test (main run) items")
    task = prepared["tasks"][(family, row["dataset"])]
    eval_items = task["test"] if split == "test" else tuning_dev(cfg, task)
    scored, info = encoder_scored(cfg, row["model"], family, task, train_items(task, seed, size), eval_items,
                                  method, row["lr"], seed)
    return {**row, "split": split, "seed": seed, "cached": info.get("cached", True),
            "train_seconds": round(info.get("train_seconds", 0.0), 2), "n_steps": info.get("n_steps"),
            "micro_f1": clinical.micro_f1(scored.counts)}


# --------------------------------------------------------------------------- the evaluate modules' check

def triples_json(triples) -> str:
    return json.dumps(sorted([list(t) for t in triples]), ensure_ascii=False)


def evaluate_f1(scored: Scored) -> float:
    """Strict micro-F1 of one run recomputed by the kit's ``evaluate`` modules: ``span_f1`` on IOB2 tags with the
    hallucinated mentions as false positives (CE), ``set_f1`` in exact mode on the triple sets (RE)."""
    from ie_helpers import ner
    from ie_helpers.metrics import evaluate_metric

    items = scored.items
    if scored.family == "ce":
        gold = [ner.io_to_bio(s["tags"]) for s in items]
        out = evaluate_metric("span_f1").compute(predictions=scored.predicted, references=gold,
                                                  hallucinated=scored.hallucinated)
        return out["micro_f1_halluc_fp"]
    gold = [triples_json(clinical.gold_triples(s)) for s in items]
    out = evaluate_metric("set_f1").compute(predictions=[triples_json(p) for p in scored.predicted],
                                            references=gold, task="kge", exact=True)
    return out["f1"]


def evaluate_module_check(runs: dict, reported: pd.DataFrame, keys: Sequence[str], table: str) -> pd.DataFrame:
    """Every reported micro-F1 (the mean over seeds) recomputed through the ``evaluate`` modules from the runs'
    predictions (``runs[key]``: one ``Scored`` per seed; the row of ``reported``, the report's ``table``, has the
    key's values in ``keys``); one row per run, an IEError if any differs by more than 1e-9."""
    rows = []
    for key, per_seed in runs.items():
        via = float(np.mean([evaluate_f1(s) for s in per_seed]))
        match = reported
        for name, value in zip(keys, key):
            match = match[match[name] == value]
        figure = float(match["micro_f1"].iloc[0])
        run = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in key)
        rows.append({"table": table, "run": run, "module": "span_f1" if per_seed[0].family == "ce" else "set_f1",
                     "seeds": len(per_seed), "micro_f1 (report)": figure, "micro_f1 (evaluate)": via,
                     "difference": f"{abs(via - figure):.0e}"})
        if abs(via - figure) > 1e-9:
            raise IEError(f"{table} {run}: the evaluate modules give micro-F1 {via}, the report {figure}; "
                          "the scorers disagree")
    return pd.DataFrame(rows)
