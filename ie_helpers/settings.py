"""Training settings: every knob of a run, with its default and the values it accepts.

``TrainSettings.from_dict`` reads a recipe's ``training`` block and refuses unknown keys and
unsupported values with a one-line IEError, before anything is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ie_helpers.cpu_speed import RECOMPUTE_EAGER, cpu_has_native_bf16, register_recompute_eager_attention
from ie_helpers.errors import IEError


ATTENTION_CHOICES = ("auto", "eager", RECOMPUTE_EAGER, "sdpa", "flash_attention_2")


@dataclass
class LoraSettings:
    r: int = 32
    alpha: int = 64
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    loraplus_ratio: float | None = None  # LoRA+: lr of B = ratio × lr of A (peft's create_loraplus_optimizer)


@dataclass
class TrainSettings:
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_length: int = 512
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 where native), "bf16", "fp32"
    frozen_weights: str = "auto"  # dtype of the frozen base weights: "auto" (bf16 when training in bf16), "fp32"
    # recompute each decoder layer's forward in backward. "auto" is off: where fp32 activations would not fit,
    # micro_batch bounds the memory instead, at a fraction of the cost (Xeon avx512, fp32, 48 records: checkpointing
    # 45 tok/s at 4.0 GB, micro-batches of 2 rows 77 tok/s at 3.8 GB, same losses)
    gradient_checkpointing: bool | str = "auto"
    # rows per forward/backward pass: each batch is split into micro-batches of this many rows whose gradients are
    # accumulated. The same records make each optimizer step and the loss is normalised over the whole batch's
    # tokens, so the gradient is the batch's up to float summation order (dropout masks are drawn per pass).
    # "auto": CPU_FP32_MICRO_BATCH rows for LoRA training in fp32 on a CPU (no native bf16: fp32 activations of a
    # whole batch of 8 held 11.5 GB), the whole batch elsewhere; a number forces it (it must divide the batch)
    micro_batch: int | str = "auto"
    group_by_length: bool = True
    # pad each batch to a multiple of this (0 = to its longest row). On this CPU with the eager attention
    # path a new sequence length costs no measurable setup time (a step at 264 tokens right after 256: 2.91 s,
    # repeated: 2.92 s), so a small multiple wastes least; 8 also suits GPU tensor cores.
    pad_to_multiple_of: int = 8
    completion_head_only: bool = True  # LM head + loss only on completion tokens (same loss, less compute)
    # "auto": on CPU transformers' eager attention (matmul + fp32 softmax: ~10% faster per training step than
    # torch's CPU flash-attention kernel on the AMD EPYC in bf16) with its probabilities recomputed in backward
    # instead of stored ("eager_recompute": the same numbers in less memory); SDPA on GPU and under gradient
    # checkpointing (see resolve_attention)
    attn_implementation: str = "auto"
    # glibc on CPU: keep freed memory in the heap for the next step instead of unmapping every large tensor
    # and page-faulting it back (~20% of a step at 500 tokens). Process-wide once set; does not change results.
    reuse_heap: bool = True
    fast_dropout: bool = True  # on CPU, LoRA dropout masks from 16-bit slices of random words (see MaskDropout)
    # on CPU LoRA runs, backward keeps less and recomputes the rest, with bit-identical gradients (see cpu_speed):
    # LoRA branches with fast_dropout's masks redraw them, SiLU gates and RMS norms keep only their inputs
    lean_backward: bool = True
    snapshot_every: int = 0  # also save the adapter every k optimizer steps (convergence curves); 0 = off
    full_finetune: bool = False  # train every weight instead of a LoRA adapter
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        """Settings from a recipe's ``training`` block; unknown keys and unsupported values are an IEError."""
        d = dict(d)
        lora_dict = d.pop("lora", None) or {}
        if not isinstance(lora_dict, dict):
            raise IEError(f"training setting lora must be a mapping such as {{r: 8, alpha: 16}}, got {lora_dict!r}")
        _check_keys("training setting", d, cls)
        _check_keys("LoRA setting", lora_dict, LoraSettings)
        settings = cls(lora=LoraSettings(**lora_dict), **d)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values the training path cannot honour, naming the setting and what it accepts."""
        choices = {"precision": ("auto", "bf16", "fp32"), "frozen_weights": ("auto", "fp32"),
                   "attn_implementation": ATTENTION_CHOICES,
                   "lr_scheduler": ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                                    "polynomial", "inverse_sqrt")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise IEError(f"training setting {name}={getattr(self, name)!r} is not supported; "
                              f"use one of {', '.join(allowed)}")
        positive = {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "max_length": self.max_length, "max_grad_norm": self.max_grad_norm, "lora.r": self.lora.r,
                    "lora.alpha": self.lora.alpha}
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise IEError(f"training setting {name}={value!r} must be a positive number")
        for name in ("batch_size", "grad_accum", "max_length", "seed", "max_steps", "snapshot_every",
                     "pad_to_multiple_of"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), int):
                raise IEError(f"training setting {name}={getattr(self, name)!r} must be a whole number")
        if isinstance(self.lora.r, bool) or not isinstance(self.lora.r, int):
            raise IEError(f"training setting lora.r={self.lora.r!r} must be a whole number")
        ranges = {"lora.dropout": (self.lora.dropout, 0.0, 1.0), "warmup_ratio": (self.warmup_ratio, 0.0, 1.0),
                  "weight_decay": (self.weight_decay, 0.0, 1.0)}
        for name, (value, lo, hi) in ranges.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value < hi:
                raise IEError(f"training setting {name}={value!r} must be in [{lo}, {hi})")
        ratio = self.lora.loraplus_ratio
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0):
            raise IEError(f"training setting lora.loraplus_ratio={ratio!r} must be a positive number or null")
        micro = self.micro_batch
        if micro != "auto" and (isinstance(micro, bool) or not isinstance(micro, int) or micro < 1
                                or self.batch_size % micro):
            raise IEError(f"training setting micro_batch={micro!r} must be auto or a whole number that divides "
                          f"batch_size={self.batch_size}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise IEError(f"training setting gradient_checkpointing={self.gradient_checkpointing!r} must be true, "
                          "false or auto")
        for name in ("group_by_length", "completion_head_only", "reuse_heap",
                     "fast_dropout", "lean_backward", "full_finetune"):
            if not isinstance(getattr(self, name), bool):
                raise IEError(f"training setting {name}={getattr(self, name)!r} must be true or false")


def _check_keys(what: str, given: dict, cls) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(given) - valid)
    if bad:
        raise IEError(f"unknown {what}(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}")


def resolve_precision(precision: str) -> str:
    import torch

    if precision == "auto":
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in {"bf16", "fp32"}:
        raise IEError(f"unknown precision '{precision}': use auto, bf16 or fp32")
    return precision


def resolve_checkpointing(setting: bool | str) -> bool:
    """Whether a run recomputes each decoder layer in backward: ``auto`` is off (``micro_batch`` bounds fp32
    memory on a CPU more cheaply; a large full fine-tune on a GPU gets it from ``train.memory_plan``)."""
    return setting is True


CPU_FP32_MICRO_BATCH = 2


def resolve_micro_batch(setting: int | str, batch: int, precision: str, *, full_finetune: bool = False) -> int:
    """Rows per forward/backward pass for a per-process ``batch`` (see ``TrainSettings.micro_batch``): ``auto``
    means ``CPU_FP32_MICRO_BATCH`` (or the largest divisor of the batch below it) for LoRA training in fp32 on a
    CPU and the whole batch elsewhere."""
    import torch

    if setting == "auto":
        if precision != "fp32" or full_finetune or torch.cuda.is_available():
            return batch
        return max(n for n in range(1, min(CPU_FP32_MICRO_BATCH, batch) + 1) if batch % n == 0)
    if batch % setting:
        raise IEError(f"training setting micro_batch={setting} does not divide the batch of {batch} rows each "
                      "process trains on: use a divisor of it, or auto")
    return setting


def resolve_attention(name: str, *, checkpointing: bool = False) -> str:
    """The attention kernel for ``attn_implementation=name``. ``auto``: SDPA on a GPU; on a CPU the eager path
    that recomputes its probabilities, unless whole layers are recomputed anyway (gradient checkpointing), where
    that inner recomputation runs twice: SDPA there (60 vs 53 tok/s and 3.7 vs 4.9 GB, Xeon avx512, fp32)."""
    import torch

    if name == "auto":
        name = "sdpa" if torch.cuda.is_available() or checkpointing else RECOMPUTE_EAGER
    if name not in ATTENTION_CHOICES[1:]:
        raise IEError(f"unknown attn_implementation '{name}': use {', '.join(ATTENTION_CHOICES)}")
    if name == RECOMPUTE_EAGER:
        register_recompute_eager_attention()
    return name
