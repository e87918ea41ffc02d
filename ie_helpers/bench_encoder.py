"""The encoder path of ``make bench``: LoRA token classification, ``encoder.train_token_classifier`` on its fast
path (bf16 autocast where the hardware has native bf16, length-grouped batches, ``fast_dropout="auto"``) against a
plain HF ``Trainer`` with its defaults, on the same encoder, sentences, LoRA config, batch size and number of
optimizer steps.

Both sides train one epoch over the same ``steps × batch`` sentences, so they process the same non-padding
sub-tokens; tokens/s divides that count by the wall time of the training loop (``trainer.train()`` for the
baseline). The baseline runs first, so one-time costs (kernel builds, page cache) are charged to it.
"""

from __future__ import annotations

import tempfile
import time

BATCH_SIZE = 16
LORA = {"r": 8, "alpha": 16, "dropout": 0.1}


def ner_sentences(n: int, *, allow_synthetic: bool = True) -> tuple[list[dict], dict]:
    """``n`` NCBI-disease training sentences (synthetic templates when the data is unavailable)."""
    import dataclasses

    from ie_helpers import data

    items, prov = data.load_split("ncbi-disease", "train", allow_synthetic=allow_synthetic, synthetic_size=n)
    return data.nested_sample(items, min(n, len(items)), 0, what="NER sentences"), dataclasses.asdict(prov)


def _features(model_dir, sentences, max_length: int):
    from transformers import AutoTokenizer

    from ie_helpers import encoder

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    labels = encoder.label_list([s["tags"] for s in sentences])
    feats, _ = encoder.tokenize_and_align(tok, [s["tokens"] for s in sentences], [s["tags"] for s in sentences],
                                          {t: i for i, t in enumerate(labels)}, max_length)
    return tok, labels, feats


def trainer_defaults_run(model_dir, sentences, steps: int, batch_size: int = BATCH_SIZE, max_length: int = 128) -> dict:
    """HF ``Trainer`` with default ``TrainingArguments`` (fp32, lr 5e-5 linear decay, random batch order, padding
    to the longest row) except batch size, steps and no logging/saving; peft LoRA with the fast path's config."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer,
                              TrainingArguments)

    from ie_helpers import encoder

    tok, labels, feats = _features(model_dir, sentences, max_length)
    with encoder._quiet_transformers():
        model = AutoModelForTokenClassification.from_pretrained(str(model_dir), num_labels=len(labels))
        model = get_peft_model(model, LoraConfig(task_type=TaskType.TOKEN_CLS, r=LORA["r"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=LORA["dropout"], target_modules=encoder._default_targets(model)))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps,
                                 report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=feats,
                          data_collator=DataCollatorForTokenClassification(tok, label_pad_token_id=-100))
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
    tokens = sum(len(f["input_ids"]) for f in feats[:steps * batch_size])
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "mean_loss": result.training_loss,
            "precision": "fp32", "path": "transformers.Trainer (defaults)"}


def fast_path_run(model_dir, sentences, steps: int, batch_size: int = BATCH_SIZE, max_length: int = 128, *,
                  fast_dropout: bool | str = "auto") -> dict:
    from ie_helpers import encoder

    _, _, feats = _features(model_dir, sentences, max_length)
    _, _, _, info = encoder.train_token_classifier(
        model_dir, [s["tokens"] for s in sentences], [s["tags"] for s in sentences], method="lora", lora_r=LORA["r"],
        lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], epochs=1, max_steps=steps, batch_size=batch_size,
        max_length=max_length, precision="auto", group_by_length=True, warmup_ratio=0.0, lr=5e-5,
        fast_dropout=fast_dropout)
    tokens = sum(len(f["input_ids"]) for f in feats)
    return {"tokens": tokens, "seconds": info["train_seconds"], "tokens_per_s": tokens / info["train_seconds"],
            "mean_loss": sum(info["losses"]) / len(info["losses"]), "precision": info["precision"],
            "fast_dropout": info["fast_dropout"], "dropouts_swapped": info["dropouts_swapped"],
            "path": "ie_helpers.encoder.train_token_classifier (precision=auto, group_by_length=True"
                    + (f", fast_dropout={fast_dropout!r})" if fast_dropout != "auto" else ")")}


def bench_encoder(model_name: str, steps: int, *, timer, deadline: float | None = None) -> dict:
    """The baseline and the notebooks' path (``fast_dropout="auto"``), each with its peak resident memory;
    ``speedup`` = fast tokens/s over the baseline's. On a CPU a third run flips ``fast_dropout`` to measure that
    lever on its own, unless it would end past ``deadline`` (a ``time.perf_counter()`` value)."""
    import torch

    from ie_helpers.machine import PeakMemory
    from ie_helpers.models import resolve_model

    model_dir = resolve_model(model_name).path
    sentences, provenance = ner_sentences(steps * BATCH_SIZE)
    with timer.stage("encoder_baseline"), PeakMemory() as mem:
        base = trainer_defaults_run(model_dir, sentences, steps)
    base.update(mem.as_dict())  # the peak is known once the block has exited
    started = time.perf_counter()
    with timer.stage("encoder_fast"), PeakMemory() as mem:
        fast = fast_path_run(model_dir, sentences, steps)
    fast.update(mem.as_dict())
    lever: dict | None = None
    if not torch.cuda.is_available():
        flipped = not fast["fast_dropout"]
        estimate = time.perf_counter() - started
        if deadline is not None and time.perf_counter() + estimate > deadline:
            lever = {"fast_dropout": flipped, "skipped": f"skipped: it would take ~{estimate:.0f} s and run past "
                                                           "the --budget-s time budget"}
        else:
            with timer.stage("encoder_fast_dropout_flipped"), PeakMemory() as mem:
                lever = fast_path_run(model_dir, sentences, steps, fast_dropout=flipped)
            lever.update(mem.as_dict(), speedup=lever["tokens_per_s"] / base["tokens_per_s"])
            on, off = (lever, fast) if flipped else (fast, lever)
            lever["fast_dropout_gain"] = on["tokens_per_s"] / off["tokens_per_s"]
    return {"model": model_name, "task": "LoRA token classification (NER)", "steps": steps, "batch_size": BATCH_SIZE,
            "lora": LORA, "sentences": len(sentences), "data": provenance, "baseline": base, "fast": fast,
            "speedup": fast["tokens_per_s"] / base["tokens_per_s"], "fast_dropout_lever": lever}
