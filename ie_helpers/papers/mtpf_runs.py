"""The MTPF-TPL notebook's runs as functions: the downstream tasks, the teacher, the pseudo-labels, the
pre-finetuning of a variant and the downstream NER runs are built the same way whether the notebook asks for them or
``python -m ie_helpers.papers.launch --paper mtpf`` trains one, so a launched run lands in the cache entry the
notebook reads. Every run here is a hand-written torch loop; under ``torchrun`` / ``accelerate launch`` each shards
its batches over the processes (``ie_helpers.distributed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ie_helpers import data, encoder, engine, generate, models
from ie_helpers.errors import IEError
from ie_helpers.papers import mtpf, mtpf_student

STAGES = ("pre-finetuning", "downstream")


def cache_root() -> Path:
    return models.cache_dir() / "mtpf"


def subset(items, n: int | None, seed: int, what: str) -> list:
    """A fixed sample of ``min(n, len(items))`` items (all of them when ``n`` is None)."""
    return list(items) if n is None else data.nested_sample(list(items), min(n, len(items)), seed, what=what)


def load_tasks(cfg: dict) -> dict:
    """The notebook's data step: the NER and classification tasks with their fixed dev and test samples, the
    sentences no pre-finetuning data may contain (``held_out``), WebNLG for the pairs, and the provenance."""
    dn, dc = cfg["downstream"]["ner"], cfg["downstream"]["cls"]
    ner_data = {t: mtpf.load_ner_task(t, allow_synthetic=cfg["allow_synthetic"]) for t in cfg["ner_tasks"]}
    cls_data = {t: mtpf.load_cls_task(t) for t in cfg["cls_tasks"]}
    held_out = mtpf.held_out_keys(ner_data, cls_data)
    provenance = [p for d in (*ner_data.values(), *cls_data.values()) for p in d["provenance"]]
    webnlg, p_webnlg = data.load_split("webnlg", "train")
    provenance.append(p_webnlg)
    for t, d in ner_data.items():
        d["dev_eval"] = subset(d["dev"], dn["dev_size"], 4321, f"{t} dev sentences")
        d["test_eval"] = subset(d["test"], dn["test_size"], 1234, f"{t} test sentences")
    for t, d in cls_data.items():
        d["dev_eval"] = subset(d["dev"], dc["dev_size"], 4321, f"{t} dev items")
        d["test_eval"] = subset(d["test"], dc["test_size"], 1234, f"{t} test items")
        d["classes"] = sorted({x["label"] for x in d["train"]} | {x["label"] for x in d["test"]})
    return {"ner": ner_data, "cls": cls_data, "held_out": held_out, "webnlg": webnlg, "provenance": provenance}


def teacher(cfg: dict, tasks: dict) -> dict:
    """The teacher folder (fine-tuned once as an NER tagger on leak-free training sentences when
    ``teacher.fine_tune``, cached by content), its training sentences and how many were refused as held out."""
    tcfg = cfg["teacher"]
    train, refused = mtpf.training_sample(tasks["ner"], tcfg["per_task"], 100, tasks["held_out"])
    folder = models.resolve_model(tcfg["model"]).path
    if tcfg["fine_tune"]:
        payload = {"teacher": models.resolve_model(tcfg["model"]).fingerprint, "settings": tcfg,
                   "train": [s["tokens"] + s["tags"] for s in train]}
        folder = cache_root() / f"teacher-{mtpf.payload_key(payload)}"
        if not (folder / "train_info.json").exists():
            encoder.train_token_classifier(models.resolve_model(tcfg["model"]).path, [s["tokens"] for s in train],
                                           [s["tags"] for s in train], method="full", lr=tcfg["lr"],
                                           epochs=tcfg["epochs"], batch_size=tcfg["batch_size"], seed=0,
                                           precision="auto", group_by_length=True, output_dir=folder)
    return {"folder": folder, "train": train, "refused": refused}


def pseudo_labels(cfg: dict, teacher_dir, corpus: list[dict], purity_sents: list[dict]) -> dict:
    """Cluster ids of every corpus word (k-means over the teacher's word embeddings, cached) and the purity of the
    teacher's and the untouched student's clusters on held-out dev sentences."""
    pf = cfg["pre_finetuning"]
    student = models.resolve_model(cfg["backbone"])

    def student_vectors():
        return mtpf.word_embeddings(student.path, [s["tokens"] for s in corpus], max_length=pf["max_length"])

    def distil():
        vecs = mtpf.word_embeddings(teacher_dir, [s["tokens"] for s in corpus], max_length=pf["max_length"])
        km = mtpf.cluster_words(np.concatenate(vecs), pf["n_clusters"], pf["seed"])
        pseudo, start = [], 0
        for v in vecs:
            pseudo.append(km.labels_[start:start + len(v)].tolist())
            start += len(v)
        rows = []
        for name, folder in (("teacher", teacher_dir), ("student before pre-finetuning", student.path)):
            held = mtpf.word_embeddings(folder, [s["tokens"] for s in purity_sents], max_length=pf["max_length"])
            model_km = km if name == "teacher" else mtpf.cluster_words(np.concatenate(student_vectors()),
                                                                       pf["n_clusters"], pf["seed"])
            tags = [t for s, v in zip(purity_sents, held) for t in s["tags"][:len(v)]]
            rows.append({"embeddings": name,
                         **mtpf.purity_table(model_km.predict(np.concatenate(held)).tolist(), tags)})
        return {"pseudo": pseudo, "purity": rows, "words": int(sum(len(v) for v in vecs))}

    return generate.cached({"kind": "mtpf-pseudo-labels", "teacher": models.resolve_model(str(teacher_dir)).fingerprint,
                            "student": student.fingerprint, "corpus": [s["tokens"] for s in corpus],
                            "purity_sentences": [s["tokens"] for s in purity_sents], "k": pf["n_clusters"],
                            "seed": pf["seed"], "max_length": pf["max_length"]}, distil)


def pre_finetuning_inputs(cfg: dict, tasks: dict) -> dict:
    """Everything pre-finetuning trains on: the teacher, the distillation corpus and its pseudo-labels, the
    paraphrase pairs, with the counts of sentences refused as held out."""
    pf = cfg["pre_finetuning"]
    taught = teacher(cfg, tasks)
    corpus, refused_corpus = mtpf.training_sample(tasks["ner"], pf["corpus_per_task"], 200, tasks["held_out"])
    purity_sents = [s for d in tasks["ner"].values() for s in d["dev_eval"]]
    distilled = pseudo_labels(cfg, taught["folder"], corpus, purity_sents)
    pairs, refused_pairs = mtpf.paraphrase_pairs(tasks["webnlg"], pf["pairs"], pf["seed"], tasks["held_out"])
    return {"teacher": taught, "corpus": corpus, "refused_corpus": refused_corpus, "purity_sentences": purity_sents,
            "distilled": distilled, "pseudo": distilled["pseudo"], "pairs": pairs, "refused_pairs": refused_pairs}


def backbones(cfg: dict, inputs: dict, variant: str) -> tuple[dict[str, str], dict]:
    """The variant's backbone folder per downstream family, pre-finetuned once (cached) and its training log."""
    student = models.resolve_model(cfg["backbone"])
    return mtpf_student.pre_finetuned_backbones(student.path, variant, inputs["corpus"], inputs["pseudo"], inputs["pairs"],
                                        cfg["pre_finetuning"], cache_root() / "backbones")


def ner_train_sample(cfg: dict, ner_data: dict, task: str, seed: int, fraction: float = 1.0) -> list[dict]:
    """A downstream NER run's training sentences: ``fraction`` of the task's sample, drawn with ``seed``."""
    d, size = ner_data[task], cfg["downstream"]["ner"]["train_size"]
    n = len(d["train"]) if size is None else min(size, len(d["train"]))
    return data.nested_sample(d["train"], max(1, round(fraction * n)), seed, what=f"{task} training sentences")


def ner_run(cfg: dict, backbone_dir, ner_data: dict, task: str, lr: float, seed: int, sentences: list[dict],
            fraction: float = 1.0) -> tuple[list[list[str]], dict]:
    """One downstream NER run (LoRA token classifier on a variant's backbone, cached with its predictions on
    ``sentences``): the predicted IOB2 tags and the run's info."""
    dn = cfg["downstream"]["ner"]
    train = ner_train_sample(cfg, ner_data, task, seed, fraction)
    return encoder.train_and_predict_cached(
        backbone_dir, [s["tokens"] for s in train], [s["tags"] for s in train], [s["tokens"] for s in sentences],
        max_length=dn["max_length"], method="lora", lora_r=dn["lora"]["r"], lora_alpha=dn["lora"]["alpha"],
        lr=float(lr), epochs=dn["epochs"], min_steps=dn["min_steps"], batch_size=dn["batch_size"], seed=int(seed),
        precision="auto", group_by_length=True)


# --------------------------------------------------------------------------- one run under `accelerate launch`

def launch_row(cfg: dict, *, variant: str, stage: str, dataset: str | None, lr: float | None, fraction: float,
               split: str) -> dict:
    """The run a launch asks for, checked against the recipe, with its defaults: the first NER task, the only
    rate of the grid (else ``lr`` must be the variant's dev-chosen one)."""
    mtpf.check_variants([variant])
    if variant not in cfg["variants"]:
        raise IEError(f"variant '{variant}' is not in this profile's variants ({', '.join(cfg['variants'])})")
    if stage not in STAGES:
        raise IEError(f"--stage {stage}: use one of {', '.join(STAGES)}")
    row = {"variant": variant, "stage": stage}
    if stage == "pre-finetuning":
        return row
    if "ner" not in mtpf.DOWNSTREAM[variant]:
        raise IEError(f"variant '{variant}' has no downstream NER runs (it is evaluated on {mtpf.DOWNSTREAM[variant]})")
    dataset = dataset or cfg["ner_tasks"][0]
    if dataset not in cfg["ner_tasks"]:
        raise IEError(f"'{dataset}' is not a downstream NER task of this profile: use one of {', '.join(cfg['ner_tasks'])}")
    if split not in ("dev", "test"):
        raise IEError(f"--split {split}: a downstream run predicts the dev (grid) or test items")
    if not 0 < fraction <= 1:
        raise IEError(f"--fraction {fraction}: give a share of the training sample in (0, 1], e.g. 0.1")
    lr = engine.launch_rate(cfg["downstream"]["ner"]["lrs"], lr, "downstream NER",
                            f"the one the notebook chose on dev for {variant} (its run.json ner_lr)")
    return {**row, "dataset": dataset, "lr": lr, "fraction": fraction, "split": split}


def launch_encoder_run(cfg: dict, size: int | None, seed: int, *, variant: str = "tpl",
                       stage: str = "pre-finetuning", dataset: str | None = None, lr: float | None = None,
                       fraction: float = 1.0, split: str = "test") -> dict:
    """Train (cached) one run as the notebook does: a variant's pre-finetuning, or a downstream NER run of a
    variant's backbone (its pre-finetuning first when not cached); returns a summary."""
    if size is not None:
        raise IEError("--size does not apply to mtpf: a downstream run takes --fraction of downstream.ner.train_size")
    row = launch_row(cfg, variant=variant, stage=stage, dataset=dataset, lr=lr, fraction=fraction, split=split)
    tasks = load_tasks(cfg)
    folders, info = backbones(cfg, pre_finetuning_inputs(cfg, tasks), variant)
    if stage == "pre-finetuning":
        return {**row, "backbones": folders, "cached": info["cached"], "train_seconds": round(info.get("train_s", 0), 2)}
    split_items = tasks["ner"][row["dataset"]]["dev_eval" if split == "dev" else "test_eval"]
    tags, run = ner_run(cfg, folders["ner"], tasks["ner"], row["dataset"], row["lr"], seed, split_items, fraction)
    counts = mtpf.ner_counts([s["tags"] for s in split_items], tags)
    tp, fp, fn = counts.sum(axis=0)
    return {**row, "seed": seed, "cached": run["cached"], "train_seconds": round(run["train_seconds"], 2),
            "n_steps": run["n_steps"], "micro_f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


# --------------------------------------------------------------------------- the evaluate modules' check

def _checked(results: pd.DataFrame, family: str, variant: str, task: str, part: str, metric: str, via: float, by: str,
             seeds: int) -> dict:
    """One reported figure beside its recomputation; an IEError if they differ by more than 1e-9."""
    row = results[(results.family == family) & (results.variant == variant) & (results.task == task)
                  & (results.data == part) & (results.metric == metric)]
    figure = float(row["mean"].iloc[0])
    if abs(via - figure) > 1e-9:
        raise IEError(f"{variant} on {task} ({part} data): {by} gives {metric} {via}, the report {figure}; the scorers "
                      "disagree")
    return {"family": family, "variant": variant, "task": task, "data": part, "metric": metric, "recomputed by": by,
            "seeds": seeds, "report": figure, "recomputed": via, "difference": f"{abs(via - figure):.0e}"}


def evaluate_module_check(ner_tags: dict, cls_predictions: dict, tasks: dict, results: pd.DataFrame) -> pd.DataFrame:
    """Every reported test score (the mean over seeds) recomputed from the runs' predictions: NER micro-F1 by the
    kit's ``evaluate`` module ``span_f1``, classification macro-F1 and accuracy by scikit-learn. ``ner_tags[(variant,
    task, data)]`` and ``cls_predictions[(variant, task)]`` hold one prediction list per seed."""
    from sklearn.metrics import accuracy_score, f1_score

    from ie_helpers.metrics import evaluate_metric

    span_f1 = evaluate_metric("span_f1")
    rows = []
    for (variant, task, part), per_seed in ner_tags.items():
        gold = [s["tags"] for s in tasks["ner"][task]["test_eval"]]
        via = float(np.mean([span_f1.compute(predictions=p, references=gold)["micro_f1"] for p in per_seed]))
        rows.append(_checked(results, "NER", variant, task, part, "micro-F1", via, "evaluate span_f1", len(per_seed)))
    for (variant, task), per_seed in cls_predictions.items():
        gold = [x["label"] for x in tasks["cls"][task]["test_eval"]]
        macro = float(np.mean([f1_score(gold, p, average="macro", zero_division=0) for p in per_seed]))
        accuracy = float(np.mean([accuracy_score(gold, p) for p in per_seed]))
        rows.append(_checked(results, "classification", variant, task, "full", "macro-F1", macro,
                             "scikit-learn f1_score", len(per_seed)))
        rows.append(_checked(results, "classification", variant, task, "full", "accuracy", accuracy,
                             "scikit-learn accuracy_score", len(per_seed)))
    return pd.DataFrame(rows)
