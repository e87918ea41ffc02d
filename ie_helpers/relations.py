"""Relation extraction with an encoder: every candidate pair of entities in a sentence, the head marked
``<< >>`` and the tail ``[[ ]]`` (ChemProt's markers), classified as a relation type or ``none``.

    texts, labels, index = relations.pair_examples(items, allowed_type_pairs)   # items: tokens, entities, relations
    predicted, info = relations.pair_classifier_cached(model_dir, texts, labels, eval_texts, method="lora")
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from ie_helpers import distributed
from ie_helpers.errors import IEError

NONE_LABEL = "none"
HEAD_OPEN, HEAD_CLOSE, TAIL_OPEN, TAIL_CLOSE = "<<", ">>", "[[", "]]"


def candidate_pairs(item: dict, allowed: Sequence[tuple[str, str]],
                    in_text_order: bool = False) -> list[tuple[int, int]]:
    """Ordered entity index pairs (head, tail) whose types form an allowed pair and that do not overlap; with
    ``in_text_order`` only pairs whose head starts first."""
    allowed = set(map(tuple, allowed))
    ents = item["entities"]
    return [(i, j) for i, a in enumerate(ents) for j, b in enumerate(ents)
            if i != j and (a[2], b[2]) in allowed and not _overlap(a, b) and (not in_text_order or a[0] < b[0])]


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def marked_text(tokens: Sequence[str], head: tuple, tail: tuple) -> str:
    """The sentence with the head entity in ``<< >>`` and the tail in ``[[ ]]`` (entities do not overlap)."""
    out = []
    for k, tok in enumerate(tokens):
        out += [HEAD_OPEN] * (k == head[0]) + [TAIL_OPEN] * (k == tail[0])
        out.append(tok)
        out += [HEAD_CLOSE] * (k == head[1] - 1) + [TAIL_CLOSE] * (k == tail[1] - 1)
    return " ".join(out)


def pair_examples(items: Sequence[dict], allowed, in_text_order: bool = False
                  ) -> tuple[list[str], list[str], list[tuple[int, int, int]]]:
    """Marked texts, labels (relation type or ``none``) and (item, head, tail) indices of every candidate pair."""
    texts, labels, index = [], [], []
    for k, s in enumerate(items):
        gold = {(hs, he, ts, te): r for hs, he, ts, te, r in s["relations"]}
        for i, j in candidate_pairs(s, allowed, in_text_order):
            h, t = s["entities"][i], s["entities"][j]
            texts.append(marked_text(s["tokens"], h, t))
            labels.append(gold.get((h[0], h[1], t[0], t[1]), NONE_LABEL))
            index.append((k, i, j))
    return texts, labels, index


def train_pair_classifier(model_dir, texts: Sequence[str], labels: Sequence[str], *, method: str = "lora",
                          lr: float = 5e-4, epochs: float = 3, batch_size: int = 16, seed: int = 0,
                          max_length: int = 128, lora_r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.1,
                          min_steps: int = 0, fast_dropout: bool | str = "auto"):
    """Fine-tune ``model_dir`` as a sequence classifier over marked pairs (LoRA on query/key/value/dense, or
    every weight). AdamW, linear warm-up (10%) and decay, grad-norm clip 1.0; dropout masks as
    ``encoder.resolve_fast_dropout`` decides. Returns (model, tokenizer, classes, info)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ie_helpers.encoder import _default_targets, _quiet_transformers, resolve_fast_dropout, swap_dropouts

    if method not in ("lora", "full"):
        raise IEError(f"method={method!r}; use 'lora' or 'full'")
    resolve_fast_dropout(fast_dropout, "cpu")
    if not texts:
        raise IEError("no candidate entity pairs to train the relation classifier on; use more training sentences")
    classes = sorted(set(labels) | {NONE_LABEL})
    torch.manual_seed(seed)
    random.seed(seed)
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(classes), id2label=dict(enumerate(classes)),
            label2id={c: i for i, c in enumerate(classes)})
        if method == "lora":
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=lora_r, lora_alpha=lora_alpha,
                                                     lora_dropout=lora_dropout, target_modules=_default_targets(model)))
    dropouts_swapped = swap_dropouts(model, fast_dropout, "cpu")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    y = torch.tensor([classes.index(c) for c in labels])
    steps = max(math.ceil(len(texts) / batch_size * epochs), int(min_steps))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    warm = max(1, int(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              max(0.0, (steps - s) / max(1, steps - warm)))
    gen = torch.Generator().manual_seed(seed)
    rank, world = distributed.process_group("cpu")
    net = distributed.wrap(model, "cpu")
    losses, grad_norms, n_tokens, t0 = [], [], 0, time.perf_counter()
    model.train()
    order = []
    for step in range(steps):
        if not order:
            order = torch.randperm(len(texts), generator=gen).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        if world == 1:
            enc = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            n_tokens += int(enc["attention_mask"].sum())
            loss = model(**enc, labels=y[batch]).loss
            loss.backward()
            batch_loss = loss.item()
        else:  # this process's share; the summed loss scaled so DDP's gradient average is the batch mean's
            mine = distributed.shard(batch, rank, world)
            enc = tokenizer([texts[i] for i in (mine or batch[:1])], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            n_tokens += int(distributed.all_sum(int(enc["attention_mask"].sum()) if mine else 0))
            loss_sum = torch.nn.functional.cross_entropy(net(**enc).logits.float(), y[mine or batch[:1]],
                                                         reduction="sum") * (1.0 if mine else 0.0)
            (loss_sum * world / len(batch)).backward()
            batch_loss = distributed.all_sum(float(loss_sum.detach())) / len(batch)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(batch_loss)
    info = {"train_seconds": time.perf_counter() - t0, "n_steps": steps, "n_trainable_params": int(trainable),
            "n_total_params": int(total), "train_tokens": n_tokens, "final_loss": losses[-1] if losses else None,
            "lr": lr, "method": method, "processes": world, "grad_norms": grad_norms,
            "dropouts_swapped": dropouts_swapped}
    return model, tokenizer, classes, info


def predict_pairs(model, tokenizer, texts: Sequence[str], classes: Sequence[str], *, batch_size: int = 64,
                  max_length: int = 128) -> list[str]:
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for b in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[b:b + batch_size]), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            out += [classes[i] for i in model(**enc).logits.argmax(-1).tolist()]
    return out


def pair_classifier_cached(model_dir, train_texts, train_labels, eval_texts, **settings) -> tuple[list[str], dict]:
    """:func:`train_pair_classifier` then :func:`predict_pairs`, stored on disk (a rerun trains nothing); the
    info carries the first run's timings and its peak resident memory."""
    from ie_helpers import generate, machine, models
    from ie_helpers.encoder import keyed_settings

    payload = {"kind": "clinical-pair-classifier", "encoder": models.resolve_model(str(model_dir)).fingerprint,
               "train": [list(train_texts), list(train_labels)], "eval": list(eval_texts),
               "settings": keyed_settings(settings)}
    fresh = []

    def compute():
        fresh.append(True)
        with machine.PeakMemory() as mem:
            model, tok, classes, info = train_pair_classifier(model_dir, train_texts, train_labels, **settings)
        labels = predict_pairs(model, tok, eval_texts, classes, max_length=settings.get("max_length", 128))
        return {"labels": labels, "info": {**info, "peak_rss_gb": mem.peak_rss_gb}}

    out = generate.cached(payload, compute) if eval_texts or train_texts else {"labels": [], "info": {}}
    return out["labels"], {**out["info"], "cached": not fresh}
