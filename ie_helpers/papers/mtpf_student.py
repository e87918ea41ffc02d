"""MTPF-TPL's student: the backbone with one task-primary LoRA module per objective, its pre-finetuning loop
(one process, or several under ``torchrun`` / ``accelerate launch``), and the plain backbone folders handed to the
downstream runs."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Sequence

from ie_helpers import distributed, encoder
from ie_helpers.embeddings import embed, info_nce, payload_key
from ie_helpers.errors import IEError
from ie_helpers.papers.mtpf import DOWNSTREAM, VARIANTS, Variant


def adapter_targets(model, layers: int | None) -> list[str]:
    """Names of the query/key and MLP Linear layers of the last ``layers`` transformer layers (None = all)."""
    import re

    import torch.nn as nn

    found = {}
    for name, mod in model.named_modules():
        m = re.search(r"\.layer\.(\d+)\.(.+)$", name)
        if not (m and isinstance(mod, nn.Linear)):
            continue
        inner = m.group(2)
        leaf = inner.rsplit(".", 1)[-1]
        if leaf in {"query", "key", "q", "k", "q_lin", "k_lin"} or inner in {
                "intermediate.dense", "output.dense", "ffn.lin1", "ffn.lin2"}:
            found.setdefault(int(m.group(1)), []).append(name)
    if not found:
        raise IEError(f"{type(model).__name__}: found no query/key/MLP layers to put task-primary LoRA modules on")
    keep = sorted(found)[-layers:] if layers else sorted(found)
    return [n for i in keep for n in found[i]]


def build_student(model_dir, variant: Variant, n_clusters: int, lora: dict):
    """(model, NER head, tokenizer): the backbone, with one named LoRA adapter per objective when the variant
    has task-primary modules. Every backbone weight trains; adapters only through their own family's loss."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    with encoder._quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir))
    head = torch.nn.Linear(model.config.hidden_size, n_clusters)
    model.adapter_targets = adapter_targets(model, variant.layers) if variant.adapters else []
    if variant.adapters:
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
                         target_modules=model.adapter_targets)
        model = get_peft_model(model, cfg, adapter_name=variant.losses[0])
        for family in variant.losses[1:]:
            model.add_adapter(family, cfg)
        for name, p in model.named_parameters():
            if "lora_" not in name:
                p.requires_grad_(True)
    return model, head, tok


def family_loss(model, head, family: str, batch: dict):
    import torch

    if family == "ner":
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = head(model(**inputs).last_hidden_state.float())
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                                                 ignore_index=encoder.IGNORE_INDEX)
    return info_nce(embed(model, batch["a"]), embed(model, batch["b"]))


def backward_family(model, head, family: str, batch: dict, autocast=None) -> float:
    """One family's loss and its gradients; with task-primary modules only that family's adapter is active."""
    import contextlib

    _activate(model, family)
    with autocast or contextlib.nullcontext():
        loss = family_loss(model, head, family, batch)
    loss.backward()
    return float(loss.detach())


def _pair_batch(tok, pairs, max_length: int) -> dict:
    enc = lambda texts: dict(tok(list(texts), padding=True, truncation=True, max_length=max_length,  # noqa: E731
                                 return_tensors="pt"))
    return {"a": enc(p[0] for p in pairs), "b": enc(p[1] for p in pairs)}


def pre_finetune(model_dir, variant_name: str, corpus: Sequence[dict], pseudo: Sequence[Sequence[int]],
                 pairs: Sequence[tuple[str, str]], settings: dict, out_dir: Path, device: str | None = None) -> dict:
    """Train one variant and save a plain backbone per downstream family (the family's adapter merged) under
    ``out_dir/<family>``; returns the training log. ``pseudo`` holds one cluster id per corpus word.

    Under a launch of k processes every process draws the same batches and takes its share of each
    (``distributed.shard``); the processes' gradients are summed before clipping, so a step is the one-process
    step up to float summation order. InfoNCE still sees the whole batch's negatives: the embeddings are gathered
    (``distributed.gather_rows``) and each process's loss reaches its own rows only."""
    import torch
    from transformers import DataCollatorForTokenClassification

    variant = VARIANTS[variant_name]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = distributed.process_group(device)
    device = distributed.local_device(device)
    torch.manual_seed(settings["seed"])
    model, head, tok = build_student(model_dir, variant, settings["n_clusters"], settings["lora"])
    model.to(device)
    head.to(device)
    dropouts_swapped = encoder.swap_dropouts(model, settings.get("fast_dropout", "auto"), device)
    targets = list(model.adapter_targets)
    labels = [[f"c{c}" for c in seq] for seq in pseudo]
    label2id = {f"c{c}": c for c in range(settings["n_clusters"])}
    tokens = [s["tokens"][:len(p)] for s, p in zip(corpus, pseudo)]
    features, _ = encoder.tokenize_and_align(tok, tokens, labels, label2id, settings["max_length"])
    collate = DataCollatorForTokenClassification(tok, padding=True, label_pad_token_id=encoder.IGNORE_INDEX)
    adapter_params = [p for n, p in model.named_parameters() if "lora_" in n] + list(head.parameters())
    backbone_params = [p for n, p in model.named_parameters() if "lora_" not in n]
    opt = torch.optim.AdamW([{"params": backbone_params, "lr": settings["lr"]},
                             {"params": adapter_params, "lr": settings["adapter_lr"]}], weight_decay=0.01)
    params = [p for g in opt.param_groups for p in g["params"]]
    steps, warmup = settings["steps"], max(1, settings["steps"] // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    gen = torch.Generator().manual_seed(settings["seed"])
    lengths = [len(f["input_ids"]) for f in features]
    category_ids = {c: i for i, c in enumerate(sorted({p[2] for p in pairs}))}
    categories = [category_ids[p[2]] for p in pairs]
    ner_batches, pair_batches = [], []
    autocast = encoder._autocast(device, settings.get("precision", "auto"))
    log, grad_norms = [], []
    model.train()
    for step in range(steps):
        losses = {}
        if "ner" in variant.losses:
            if not ner_batches:
                ner_batches = encoder.batch_order(len(features), settings["batch_size"], gen, lengths)
            idx = ner_batches.pop()
            if world == 1:
                batch = _to(collate([features[i] for i in idx]), device)
                losses["ner"] = backward_family(model, head, "ner", batch, autocast)
            else:
                losses["ner"] = _ner_shard_backward(model, head, collate, features, idx, rank, world, device, autocast)
        if "cls" in variant.losses:
            if not pair_batches:  # batches of one WebNLG category: negatives share the topic, so they are hard
                pair_batches = encoder.batch_order(len(pairs), settings["batch_size"], gen, categories)
            idx = pair_batches.pop()
            if world == 1:
                batch = _to(_pair_batch(tok, [pairs[i] for i in idx], settings["max_length"]), device)
                losses["cls"] = backward_family(model, head, "cls", batch, autocast)
            else:
                losses["cls"] = _pair_shard_backward(model, tok, pairs, idx, rank, world, settings["max_length"],
                                                     device, autocast)
        if world > 1:
            distributed.sum_gradients(params)
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append({"step": step + 1, **{f"loss_{k}": v for k, v in losses.items()}})
    model.eval()
    if distributed.is_main():
        for family in DOWNSTREAM[variant_name]:
            save_backbone(model, tok, family, out_dir / family)
    return {"log": log, "targets": targets, "grad_norms": grad_norms, "processes": world,
            "dropouts_swapped": dropouts_swapped}


def _to(batch: dict, device: str) -> dict:
    return {k: _to(v, device) if isinstance(v, dict) else v.to(device) for k, v in batch.items()}


def _activate(model, family: str) -> None:
    if hasattr(model, "set_adapter") and family in getattr(model, "peft_config", {}):
        model.set_adapter(family)


def _ner_shard_backward(model, head, collate, features, idx, rank: int, world: int, device: str, autocast) -> float:
    """This process's share of one NER batch: its summed token loss over the whole batch's token count, so the
    processes' gradients sum to the whole batch's mean-loss gradient. Returns that mean loss."""
    import torch

    n_total = sum(int(label != encoder.IGNORE_INDEX) for i in idx for label in features[i]["labels"])
    mine, loss_sum = distributed.shard(idx, rank, world), 0.0
    if mine:
        batch = _to(collate([features[i] for i in mine]), device)
        _activate(model, "ner")
        labels = batch.pop("labels")
        with autocast:
            logits = head(model(**batch).last_hidden_state.float())
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                     ignore_index=encoder.IGNORE_INDEX, reduction="sum")
        (loss / max(n_total, 1)).backward()
        loss_sum = float(loss.detach())
    return distributed.all_sum(loss_sum) / max(n_total, 1)


def _pair_shard_backward(model, tok, pairs, idx, rank: int, world: int, max_length: int, device: str,
                         autocast) -> float:
    """This process's share of one pair batch, embedded here; every process's embeddings are gathered back into
    the batch's order, so the InfoNCE loss (equal on every process) keeps all in-batch negatives, and its
    gradient reaches this process's rows only. Returns that loss."""
    import torch

    shares = [distributed.shard(idx, r, world) for r in range(world)]
    order = torch.tensor([idx.index(i) for share in shares for i in share])
    back = torch.argsort(order).to(device)  # gathered rows, rank by rank -> the batch's order
    mine = shares[rank]
    _activate(model, "cls")
    with autocast:
        if mine:
            batch = _to(_pair_batch(tok, [pairs[i] for i in mine], max_length), device)
            a, b = embed(model, batch["a"]), embed(model, batch["b"])
        else:
            a = b = torch.zeros(0, model.config.hidden_size, device=device)
        sizes = [len(s) for s in shares]
        a_all, b_all = (distributed.gather_rows(x, sizes, rank)[back] for x in (a, b))
        loss = info_nce(a_all, b_all)
    if mine:
        loss.backward()
    return float(loss.detach())


def save_backbone(model, tok, family: str, folder: Path) -> None:
    """A plain encoder folder: the family's adapter merged into a copy of the backbone (others dropped)."""
    plain = model
    if hasattr(model, "merge_and_unload"):
        with encoder._quiet_transformers():
            plain = copy.deepcopy(model)
        if family in plain.peft_config:
            plain = plain.merge_and_unload(adapter_names=[family])
        else:
            plain = plain.unload()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with encoder._quiet_transformers():
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def pre_finetuned_backbones(model_dir, variant_name: str, corpus, pseudo, pairs, settings: dict,
                            cache: Path) -> tuple[dict[str, str], dict]:
    """Backbone folder per downstream family for one variant, trained once and reused from ``cache``. Each folder
    carries ``pre_finetuning.json`` (its payload key), so cache keys built from the folder tell variants apart."""
    if variant_name == "base":
        return {f: str(model_dir) for f in DOWNSTREAM["base"]}, {"cached": True, "train_s": 0.0}
    from ie_helpers.models import resolve_model

    payload = {"backbone": resolve_model(str(model_dir)).fingerprint, "variant": variant_name,
               "settings": encoder.keyed_settings(settings), "corpus": [s["tokens"] for s in corpus],
               "pseudo": [list(map(int, p)) for p in pseudo],
               "pairs": [list(p) for p in pairs], "revision": 2}
    key = payload_key(payload)
    root = cache / f"{variant_name}-{key}"
    done = root / "done.json"
    cached = done.exists()
    if not cached:
        import time

        t0 = time.perf_counter()
        result = pre_finetune(model_dir, variant_name, corpus, pseudo, pairs, settings, root)
        if distributed.is_main():  # under a launch the other processes wait until rank 0 has written the folders
            for family in DOWNSTREAM[variant_name]:
                (root / family / "pre_finetuning.json").write_text(
                    json.dumps({"variant": variant_name, "key": key, "family": family}), encoding="utf-8")
            done.write_text(json.dumps({"train_s": time.perf_counter() - t0, **result}), encoding="utf-8")
        distributed.barrier()
    info = json.loads(done.read_text(encoding="utf-8"))
    return {f: str(root / f) for f in DOWNSTREAM[variant_name]}, {**info, "cached": cached}
