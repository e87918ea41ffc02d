"""LoRA supervised fine-tuning through TRL's SFTTrainer + peft, with a cache of finished runs.

Every finished run is stored under ``.cache/runs/<key>/`` where the key hashes the model's
weights fingerprint, the exact training records, every hyperparameter and the package
versions; asking for the same run again loads the adapter instead of training.

The fast CPU path (the ``TrainSettings`` defaults) differs from TRL's defaults only in how the
arithmetic is done, not in what is learned: no gradient checkpointing, frozen base weights
stored in bf16 where the CPU has native bf16 (adapters stay fp32) and, where it has not, each batch
run as micro-batches of 2 rows whose gradients are accumulated (``micro_batch``), length-grouped batches so
little compute is spent on padding, the LM head evaluated only on completion tokens, LoRA
dropout masks drawn from 16-bit slices of random words instead of one Bernoulli draw per
element (same distribution, different random stream; see ``cpu_speed.mask_dropout_class``), each LoRA
branch as one autograd function that keeps x and a 1-byte keep mask instead of an fp32 mask and a dropped
copy (``cpu_speed.fuse_lora_layers``: bit-identical gradients), transformers' eager attention on CPU with
its probabilities recomputed in backward (``eager_recompute``: the same numbers, half the memory at 512
tokens), and glibc keeping freed memory for reuse (``reuse_freed_heap_memory``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ie_helpers import __version__, distributed
from ie_helpers.cpu_speed import (fuse_gated_mlps, fuse_lora_layers, head_nll_sum, recompute_rms_norms,
                                  reuse_freed_heap_memory, use_mask_dropout)
from ie_helpers.errors import IEError
from ie_helpers.models import cache_dir, default_device, load_causal_lm, resolve_model
from ie_helpers.settings import (LoraSettings, TrainSettings, resolve_attention, resolve_checkpointing,
                                 resolve_micro_batch, resolve_precision)


@dataclass
class TrainResult:
    key: str
    run_dir: Path
    cached: bool
    train_seconds: float
    train_tokens: int
    log_history: list[dict]
    settings: dict

    @property
    def snapshots(self) -> list[int]:
        """Optimizer steps at which an adapter snapshot was saved (see ``TrainSettings.snapshot_every``)."""
        return sorted(int(p.name.split("-")[1]) for p in (self.run_dir / "snapshots").glob("step-*"))

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else float("nan")

    @property
    def final_loss(self) -> float:
        losses = [h["loss"] for h in self.log_history if "loss" in h]
        return losses[-1] if losses else float("nan")


# Bumped whenever the training path can produce a different adapter from the same records and settings
# (a changed loss, dropout stream, optimizer or data collation), so runs cached by older code are not reused.
TRAINING_REVISION = 1

# Settings added after runs were cached: left out of the key while at these defaults (which change nothing),
# so adding a knob does not invalidate every finished run.
KEY_NEUTRAL_DEFAULTS = {"frozen_weights": "auto", "snapshot_every": 0, "micro_batch": "auto"}
# how memory is allocated or what backward keeps, not what is computed (lean_backward: bit-identical gradients)
NEVER_IN_KEY = {"reuse_heap", "lean_backward"}
# checkpointing reruns the same forward in backward, so it never changes what is learned; "auto" (the default
# since it was added, now off) is keyed as the old default False, so runs cached before it keep their keys
KEYED_AS = {"gradient_checkpointing": ("auto", False)}


def _keyed(name: str, value):
    alias = KEYED_AS.get(name)
    return alias[1] if alias and value == alias[0] else value


def run_key(model_fingerprint: str, records: list[dict], settings: TrainSettings) -> str:
    import peft
    import torch
    import transformers
    import trl

    payload = {
        "model": model_fingerprint,
        "records": records,
        "settings": {k: _keyed(k, v) for k, v in dataclasses.asdict(settings).items()
                     if KEY_NEUTRAL_DEFAULTS.get(k, object()) != v and k not in NEVER_IN_KEY},
        "revision": TRAINING_REVISION,
        "versions": [__version__, trl.__version__, peft.__version__, transformers.__version__,
                     torch.__version__.split("+")[0]],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _completion_head_trainer_class():
    """SFTTrainer whose LM head and loss run only on completion-token positions.

    TRL's fused head compacts to labelled positions only on Triton devices; on CPU it projects
    every position through the 49k-word head and backpropagates through a Python tile loop.
    Here the backbone runs once and only the hidden states that predict a completion token go
    through the head: the same loss (sum of token NLL / number of completion tokens), fewer FLOPs.
    """
    import torch
    from trl import SFTTrainer

    class CompletionHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
            causal_lm = getattr(causal_lm, "module", causal_lm)
            backbone = getattr(causal_lm, causal_lm.base_model_prefix)
            kwargs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            hidden = backbone(**kwargs, use_cache=False).last_hidden_state[:, :-1]
            labels = inputs["labels"][:, 1:]
            mask = labels != -100
            targets = labels[mask]
            nll_sum, correct = head_nll_sum(hidden[mask], causal_lm.get_output_embeddings(), targets)
            num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = nll_sum / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                n_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
                n_correct = self.accelerator.gather_for_metrics(correct).sum()
                self._metrics[mode]["mean_token_accuracy"].append((n_correct / n_valid.clamp(min=1)).item())
                if mode == "train" and "attention_mask" in inputs:  # TRL's running count of non-padding tokens
                    seen = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
                    self._total_train_tokens += seen // getattr(self, "_tp_size", 1)
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompletionHeadSFTTrainer


def _snapshot_callback(every: int, folder: Path):
    from transformers import TrainerCallback

    class SaveAdapterEvery(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if every and state.global_step % every == 0 and state.is_world_process_zero:
                model.save_pretrained(folder / f"step-{state.global_step}")

    return SaveAdapterEvery()


def _peft_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def per_device_batch(batch_size: int) -> int:
    """The batch each process trains on: ``batch_size`` split over the processes of a DDP launch, so the global
    batch and the number of steps are one process's and a launched run is the run its cache entry names.
    (accelerate hands process i every k-th per-device batch of one seeded order, so with random sampling each
    step also sees one process's items; length-grouped sampling groups within smaller windows.)"""
    k = distributed.world_size()
    if batch_size % k:
        fits = [n for n in range(1, batch_size + 1) if batch_size % n == 0]
        raise IEError(f"batch_size {batch_size} does not split over {k} processes: launch {fits} processes, or "
                      "change training.batch_size (a different run)")
    return batch_size // k


def _sft_config(settings: TrainSettings, output_dir: Path, precision: str):
    """TRL's SFTConfig for ``settings`` at the resolved ``precision`` (and ``gradient_checkpointing``); each batch
    runs in micro-batches of ``resolve_micro_batch`` rows whose gradients are accumulated."""
    from trl import SFTConfig

    import torch

    batch = per_device_batch(settings.batch_size)
    micro = resolve_micro_batch(settings.micro_batch, batch, precision, full_finetune=settings.full_finetune)

    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=settings.lr,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=settings.grad_accum * (batch // micro),
        max_grad_norm=settings.max_grad_norm,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,  # a float < 1 is a ratio of total steps
        lr_scheduler_type=settings.lr_scheduler,
        max_length=settings.max_length,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=resolve_checkpointing(settings.gradient_checkpointing),
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        completion_only_loss=True,
        pad_to_multiple_of=settings.pad_to_multiple_of or None,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


LARGE_MODEL_PARAMS = 3e9  # from here on, fp32 weights + gradients + AdamW states no longer fit one 80 GB GPU


def parameters_on_disk(folder: str | Path) -> int:
    """Parameter count of a safetensors checkpoint, read from the file headers (no weights loaded); 0 if none."""
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                n = 1
                for dim in handle.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def memory_plan(n_params: int, *, full_finetune: bool, cuda: bool, have_bitsandbytes: bool) -> dict:
    """How a full fine-tune of a 7-8B model fits one GPU, or {} when nothing needs changing.

    fp32 weights, gradients and AdamW states take 16 bytes per parameter (~128 GB at 8B). The plan keeps
    weights and gradients in bf16, recomputes activations (gradient checkpointing) and uses 8-bit paged
    AdamW states from bitsandbytes when installed, else Adafactor's factored states: ~6 bytes per
    parameter (~48 GB at 8B). LoRA runs, small models and CPU runs are left as they are.
    """
    if not (full_finetune and cuda and n_params >= LARGE_MODEL_PARAMS):
        return {}
    return {"weights": "bf16", "gradient_checkpointing": True,
            "optim": "paged_adamw_8bit" if have_bitsandbytes else "adafactor"}


def prepare_model(model_name: str, settings: TrainSettings, precision: str, plan: dict | None = None):
    """Base model for training: frozen weights in bf16 when training in bf16 (adapters are kept fp32 by peft).

    ``frozen_weights="fp32"`` keeps fp32 weights under bf16 autocast instead, as TRL's defaults do; a
    ``memory_plan`` may put a large model's trainable weights in bf16 too.
    """
    import torch

    if settings.frozen_weights not in {"auto", "fp32"}:
        raise IEError(f"unknown frozen_weights '{settings.frozen_weights}': use auto or fp32")
    bf16_weights = precision == "bf16" and not settings.full_finetune and settings.frozen_weights == "auto"
    frozen_dtype = torch.bfloat16 if bf16_weights or (plan or {}).get("weights") == "bf16" else torch.float32
    checkpointing = (resolve_checkpointing(settings.gradient_checkpointing)
                     or bool((plan or {}).get("gradient_checkpointing")))
    attention = resolve_attention(settings.attn_implementation, checkpointing=checkpointing)
    model, tokenizer, resolved = load_causal_lm(model_name, dtype=frozen_dtype, attn_implementation=attention)
    tokenizer.padding_side = "right"
    return model, tokenizer, resolved


def micro_note(args, settings: TrainSettings) -> str:
    """`` in micro-batches of k rows`` when each batch is split (see ``TrainSettings.micro_batch``), else ''."""
    split = args.gradient_accumulation_steps // settings.grad_accum
    return f" in micro-batches of {args.per_device_train_batch_size} rows" if split > 1 else ""


def count_tokens(trainer) -> int:
    """Non-padding tokens the trainer will process per epoch (prompt + completion)."""
    ds = trainer.train_dataset
    return int(sum(len(ids) for ids in ds["input_ids"]))


def train_sft(model_name: str, records: list[dict], settings: TrainSettings | dict, *,
              callbacks=None, use_cache: bool = True, log=print) -> TrainResult:
    """Train (or load from cache) a LoRA adapter on prompt–completion records.

    ``records`` are ``{"prompt": [...messages], "completion": [...messages]}`` dicts
    (``tasks.to_prompt_completion``). Extra keys are ignored for training but hashed.
    """
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    if isinstance(settings, dict):
        settings = TrainSettings.from_dict(settings)
    if not records:
        raise IEError("no training records: the training size is 0")
    # refused before any work when the batch does not split over the processes, or into the micro-batches asked for
    resolve_micro_batch(settings.micro_batch, per_device_batch(settings.batch_size), "fp32")
    resolved = resolve_model(model_name)
    key = run_key(resolved.fingerprint, records, settings)
    run_dir = cache_dir() / "runs" / key
    done = run_dir / "done.json"
    if use_cache and done.exists():
        info = json.loads(done.read_text())
        log(f"[train] cached run {key} ({len(records)} records): skipping training")
        return TrainResult(key, run_dir, True, info["train_seconds"], info["train_tokens"],
                           info["log_history"], info["settings"])

    precision = resolve_precision(settings.precision)
    if settings.reuse_heap and not torch.cuda.is_available():
        reuse_freed_heap_memory()
    torch.manual_seed(settings.seed)
    import importlib.util

    plan = memory_plan(parameters_on_disk(resolved.path), full_finetune=settings.full_finetune,
                       cuda=torch.cuda.is_available(), have_bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None)
    if plan:
        log(f"[train] memory plan for a large full fine-tune: {plan}")
    model, tokenizer, _ = prepare_model(model_name, settings, precision, plan)
    work_dir = run_dir.with_name(key + ".tmp")
    shutil.rmtree(work_dir, ignore_errors=True)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in records])
    peft_config = None if settings.full_finetune else _peft_config(settings.lora)
    args = _sft_config(settings, work_dir, precision)
    if plan:
        args.gradient_checkpointing, args.optim = plan["gradient_checkpointing"], plan["optim"]
    trainer_cls = _completion_head_trainer_class() if settings.completion_head_only else SFTTrainer
    callbacks = list(callbacks or [])
    if settings.snapshot_every:
        callbacks.append(_snapshot_callback(settings.snapshot_every, work_dir / "snapshots"))
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=callbacks)
    if not settings.full_finetune and not torch.cuda.is_available():  # GPU runs keep the stock modules
        if settings.fast_dropout:
            use_mask_dropout(trainer.model)
        if settings.lean_backward:
            fuse_lora_layers(trainer.model)  # only the layers with MaskDropout: the branch redraws its masks
            fuse_gated_mlps(trainer.model)
            recompute_rms_norms(trainer.model)
    if settings.lora.loraplus_ratio and not settings.full_finetune:
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(trainer.model, optimizer_cls=torch.optim.AdamW, lr=settings.lr,
                                              loraplus_lr_ratio=settings.lora.loraplus_ratio,
                                              weight_decay=settings.weight_decay)
        trainer.optimizer = optimizer
    n_tokens = count_tokens(trainer)
    log(f"[train] {len(records)} records, {n_tokens} tokens/epoch, precision={precision}, "
        f"gradient checkpointing={'on' if args.gradient_checkpointing else 'off'}, "
        f"lr={settings.lr}, epochs={settings.epochs}, batch={settings.batch_size}x{settings.grad_accum}"
        f"{micro_note(args, settings)}")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    epochs_done = trainer.state.epoch or settings.epochs
    if not trainer.is_world_process_zero():  # under accelerate/DDP only rank 0 writes the run
        return TrainResult(key, run_dir, False, seconds, int(n_tokens * epochs_done), trainer.state.log_history,
                           dataclasses.asdict(settings))
    trainer.model.save_pretrained(work_dir / "adapter")
    tokenizer.save_pretrained(work_dir / "adapter")
    info = {"train_seconds": seconds, "train_tokens": int(n_tokens * epochs_done),
            "log_history": trainer.state.log_history, "settings": dataclasses.asdict(settings),
            "model": model_name, "precision": precision, "n_records": len(records),
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "micro_batch": args.per_device_train_batch_size}
    (work_dir / "done.json").write_text(json.dumps(info, default=str))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(work_dir, run_dir)
    result = TrainResult(key, run_dir, False, seconds, info["train_tokens"], info["log_history"], info["settings"])
    log(f"[train] done in {seconds:.1f}s ({result.tokens_per_second:.0f} tokens/s), final loss {result.final_loss:.3f}")
    del trainer, model
    return result


def inference_dtype():
    """bf16 on GPUs that have it; fp32 on CPU, where bf16 greedy outputs change with the batch shape
    (about half of 128-token outputs differed from one-at-a-time decoding) and oneDNN makes fp32 fast."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_for_inference(model_name: str, result: TrainResult | None = None, *, dtype=None, snapshot: int | None = None,
                       onednn: bool = True):
    """Base model, with the run's adapter (or its snapshot at optimizer step ``snapshot``) merged in.

    On CPU in fp32 the linear layers are then packed (``cpu_packing.pack_decoder_linear_layers``: MKL's packed
    GEMM on Intel, oneDNN elsewhere) unless ``onednn=False``; the packed model is for inference only.
    """
    from ie_helpers.cpu_packing import pack_decoder_linear_layers

    if dtype is None:
        dtype = inference_dtype()
    model, tokenizer, resolved = load_causal_lm(model_name, dtype=dtype)
    if result is not None:
        adapter = result.run_dir / "adapter" if snapshot is None else result.run_dir / "snapshots" / f"step-{snapshot}"
        if snapshot is not None and not adapter.exists():
            raise IEError(f"run {result.key} has no snapshot at step {snapshot} (has {result.snapshots})")
        if (adapter / "adapter_config.json").exists():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        else:  # full fine-tune: the whole model was saved
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(adapter, dtype=dtype).to(default_device())
    model.eval()
    if onednn:
        pack_decoder_linear_layers(model)
    return model, tokenizer, resolved
