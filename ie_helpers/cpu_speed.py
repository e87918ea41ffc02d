"""CPU speed levers for training, in one place (inference packing: ``cpu_packing``): each changes how the arithmetic is done, never what is computed.

- ``reuse_freed_heap_memory``: glibc keeps freed memory for the next step instead of unmapping it.
- ``mask_dropout_class`` / ``use_mask_dropout``: LoRA dropout masks from 16-bit slices of random words.
- ``fuse_lora_layers``: the LoRA branch as one autograd function; backward redraws the dropout mask.
- ``RECOMPUTE_EAGER``: eager attention whose probabilities are recomputed in backward instead of stored.
- ``fuse_gated_mlps`` / ``recompute_rms_norms``: SiLU gates and RMS norms that recompute in backward.
- ``head_nll_sum``: the LM head's loss on completion tokens in row chunks, logits recomputed in backward.
- ``cpu_has_native_bf16`` / ``cpu_family``: whether bf16 arithmetic is native here (AVX-512 BF16 or AMX), and which
  family of matrix arithmetic the CPU has.
GPU runs use none of them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ie_helpers.errors import IEError


def _cpuinfo_lines(field: str) -> list[str]:
    """The values of ``field`` in ``/proc/cpuinfo`` (one per core), or none where it is unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.split(":", 1)[0].strip() == field]


def _cpu_flags() -> set[str]:
    return {flag for value in _cpuinfo_lines("flags") for flag in value.split()}


def cpu_vendor() -> str:
    """``/proc/cpuinfo``'s ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``), or ``""`` where unreadable."""
    return next(iter(_cpuinfo_lines("vendor_id")), "")


def cpu_has_native_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_family() -> str:
    """The CPU's matrix-arithmetic family, as the training defaults were measured on: ``amx-bf16`` (Intel
    Sapphire Rapids and later), ``avx512-bf16`` (AMD Zen 4/5, Intel Cooper Lake), ``avx512``, ``avx2`` or
    ``other``. Every default of the fast path was measured on ``avx512-bf16``; each lever is a training
    setting (``TrainSettings``), so a recipe can force another choice."""
    flags = _cpu_flags()
    for family, needed in (("amx-bf16", "amx_bf16"), ("avx512-bf16", "avx512_bf16"), ("avx512", "avx512f"),
                           ("avx2", "avx2")):
        if needed in flags:
            return family
    return "other"


_HEAP_REUSED = False


def reuse_freed_heap_memory() -> bool:
    """Ask glibc to serve large allocations from the heap and never give freed memory back to the OS.

    By default every tensor above the mmap threshold (at most 32 MB) is mapped on allocation and
    unmapped on free, so each training step page-faults its activations in again. With mmap off and
    trimming off, freed blocks are reused: resident memory stays at its peak instead. Linux/glibc only;
    returns whether the setting is active.
    """
    global _HEAP_REUSED
    if _HEAP_REUSED:
        return True
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: leave the allocator alone
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    _HEAP_REUSED = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    return _HEAP_REUSED


def keep_mask(shape, drop_count: int, device, generator=None) -> torch.Tensor:
    """Dropout keep mask (True = kept) from 16-bit slices of 64-bit random words; P(drop) = drop_count / 65536."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None, generator=generator)
    return words.view(torch.int16)[:n].view(shape) >= -32768 + drop_count


def mask_dropout_class():
    """``MaskDropout``: inverted dropout whose keep mask comes from 16-bit slices of 64-bit random words.

    ``nn.Dropout`` on CPU draws one Bernoulli sample per element from torch's generator; with LoRA on
    every linear layer that was a third of a training step at p=0.05 and half of it at p=0.4. Here one
    64-bit draw yields four uniform 16-bit numbers, and an element is dropped when its number falls
    below ``round(p * 65536)``: the same Bernoulli distribution with p rounded to 1/65536 (the scale
    uses that rounded p, so the expectation is exact). Only the random stream differs from nn.Dropout.
    """
    import torch
    from torch import nn

    class MaskDropout(nn.Module):
        def __init__(self, p: float):
            super().__init__()
            if not 0.0 <= p < 1.0:
                raise IEError(f"dropout probability must be in [0, 1), got {p}")
            self.p = p
            self.drop_count = round(p * 65536)
            self.threshold = -32768 + self.drop_count  # signed view of a uniform 16-bit number
            self.scale = 1.0 / (1.0 - self.drop_count / 65536)

        def forward(self, x):
            if not self.training or self.drop_count == 0:
                return x
            keep = keep_mask(x.shape, self.drop_count, x.device)
            return x * keep.view(torch.uint8).to(x.dtype).mul_(self.scale)

        def extra_repr(self) -> str:
            return f"p={self.p}, effective_p={self.drop_count / 65536:.6f}"

    return MaskDropout


def use_mask_dropout(model, *, lora_only: bool = True) -> int:
    """Swap every LoRA ``nn.Dropout`` in ``model`` for ``MaskDropout`` (every ``nn.Dropout`` with p > 0 when not
    ``lora_only``: an encoder's hidden-state dropouts too); returns how many were swapped."""
    from torch import nn

    cls = mask_dropout_class()
    swapped = 0
    if not lora_only:
        for module in list(model.modules()):
            for name, child in module.named_children():
                if type(child) is nn.Dropout and child.p > 0:
                    setattr(module, name, cls(child.p))
                    swapped += 1
        return swapped
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, layer in dropouts.items():
            if isinstance(layer, nn.Dropout) and layer.p > 0:
                dropouts[name] = cls(layer.p)
                swapped += 1
    return swapped


class _LoraBranch(torch.autograd.Function):
    """``scaling * B(A(dropout(x)))`` keeping only x, the random generator's state and A's r-wide output.

    peft's LoRA branch casts x to the adapter's fp32 dtype, multiplies it by an fp32 dropout mask and lets
    autocast cast the product back to bf16 for A: backward then holds an fp32 mask and a bf16 copy of the
    dropped input per adapted layer. Here backward redraws the keep mask from the generator state it was
    drawn from (5 KB per layer instead of a byte per element) and recomputes the dropped input. Every
    product is rounded exactly as on peft's path (bf16 times a Python scalar computes in fp32 and rounds
    once, like the fp32 multiply followed by the cast), so only the order of summing x's gradients differs.
    """

    @staticmethod
    def forward(ctx, x, weight_a, weight_b, rng_state, drop_count: int, scaling: float, dtype):
        a, b = weight_a.to(dtype), weight_b.to(dtype)
        keep = keep_mask(x.shape, drop_count, x.device) if drop_count else None
        dropped = _dropped(x.to(dtype), keep, _drop_scale(drop_count)).reshape(-1, x.shape[-1])
        h = dropped @ a.t()
        ctx.save_for_backward(x, rng_state, h, weight_a, weight_b)
        ctx.drop_count, ctx.scaling, ctx.dtype = drop_count, scaling, dtype
        return ((h @ b.t()) * scaling).view(*x.shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, rng_state, h, weight_a, weight_b = ctx.saved_tensors
        keep = None
        if ctx.drop_count:
            generator = torch.Generator(device=x.device)
            generator.set_state(rng_state)
            keep = keep_mask(x.shape, ctx.drop_count, x.device, generator)
        drop_scale = _drop_scale(ctx.drop_count)
        a, b = weight_a.to(ctx.dtype), weight_b.to(ctx.dtype)
        grad_out = (grad.reshape(-1, b.shape[0]).to(ctx.dtype)) * ctx.scaling
        grad_h = grad_out @ b
        dropped = _dropped(x.to(ctx.dtype), keep, drop_scale).reshape(-1, x.shape[-1])
        grad_a = (grad_h.t() @ dropped).to(weight_a.dtype)
        grad_b = (grad_out.t() @ h).to(weight_b.dtype)
        grad_x = _dropped((grad_h @ a).view(*x.shape[:-1], a.shape[1]), keep, drop_scale).to(x.dtype)
        return grad_x, grad_a, grad_b, None, None, None, None


def _drop_scale(drop_count: int) -> float:
    return 1.0 / (1.0 - drop_count / 65536)


def _dropped(x, keep, drop_scale: float):
    """``x * keep * drop_scale`` rounded once, as peft's fp32 multiply then cast gives it. Through uint8: a bool
    tensor takes torch's slow casting path (bool -> bf16 is ~6x slower than uint8 -> bf16 here)."""
    return x if keep is None else x.mul(keep.view(torch.uint8).to(x.dtype)).mul_(drop_scale)


def _fused_lora_forward(self, x, *args, **kwargs):
    """peft ``lora.Linear.forward`` for one plain adapter in training; anything else takes peft's own path."""
    active = self.active_adapters
    name = active[0] if len(active) == 1 else None
    dropout = self.lora_dropout[name] if name in self.lora_dropout else None
    drop_count = 0 if isinstance(dropout, torch.nn.Identity) else getattr(dropout, "drop_count", None)
    if (args or kwargs or not self.training or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or drop_count is None):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    weight_a, weight_b = self.lora_A[name].weight, self.lora_B[name].weight
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight_a.dtype
    rng_state = torch.get_rng_state() if drop_count else None  # the mask is drawn in forward from this state
    branch = _LoraBranch.apply(x, weight_a, weight_b, rng_state, drop_count, self.scaling[name], dtype)
    return (result + branch).to(result.dtype)


def fuse_lora_layers(model) -> int:
    """Route the LoRA linear layers of ``model`` through ``_LoraBranch`` (CPU training); returns how many.

    Only layers whose dropout is ``MaskDropout`` (or none) are fused, since the fused branch draws the same
    keep masks from the same random stream; layers with ``nn.Dropout`` keep peft's path.
    """
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and "forward" not in vars(module):
            drops = list(module.lora_dropout.values())
            if all(isinstance(d, torch.nn.Identity) or hasattr(d, "drop_count") for d in drops):
                module.forward = types.MethodType(_fused_lora_forward, module)
                fused += 1
    return fused


class _SiluMul(torch.autograd.Function):
    """``silu(gate) * up`` that keeps gate and up for backward and recomputes silu(gate) (same operations)."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return torch.nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        return torch.ops.aten.silu_backward(grad * up, gate), grad * torch.nn.functional.silu(gate)


GATED_SILU_MLPS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}  # down(silu(gate(x)) * up(x)), no extras


def _gated_mlp_forward(self, x):
    if not (self.training and torch.is_grad_enabled()):
        return type(self).forward(self, x)
    gate = self.gate_proj(x)  # before up_proj, as in the model's own forward: LoRA masks are drawn in this order
    return self.down_proj(_SiluMul.apply(gate, self.up_proj(x)))


def fuse_gated_mlps(model) -> int:
    """Let the SiLU-gated MLPs of ``model`` (``GATED_SILU_MLPS``) recompute silu(gate) in backward; returns how many.

    Saves one intermediate-width activation per token and layer (3 KB for SmolLM2) with unchanged gradients.
    """
    import types

    from transformers.activations import SiLUActivation

    fused = 0
    for module in model.modules():
        if (type(module).__name__ in GATED_SILU_MLPS and "forward" not in vars(module)
                and isinstance(getattr(module, "act_fn", None), (SiLUActivation, torch.nn.SiLU))):
            module.forward = types.MethodType(_gated_mlp_forward, module)
            fused += 1
    return fused


RMS_NORMS = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}


def _recomputed_norm_forward(self, x):
    if not (self.training and torch.is_grad_enabled()):
        return type(self).forward(self, x)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(type(self).forward, self, x, use_reentrant=False, preserve_rng_state=False)


def recompute_rms_norms(model) -> int:
    """Let the RMS norms of ``model`` (``RMS_NORMS``) keep only their bf16 input for backward; returns how many.

    transformers' RMSNorm keeps an fp32 copy of its input (2.3 KB per token for SmolLM2); a non-reentrant
    checkpoint around the same forward keeps the bf16 input instead and reruns the norm in backward: the same
    operations, so the same gradients."""
    import types

    fused = 0
    for module in model.modules():
        if type(module).__name__ in RMS_NORMS and "forward" not in vars(module):
            module.forward = types.MethodType(_recomputed_norm_forward, module)
            fused += 1
    return fused


HEAD_CHUNK_ROWS = 128  # 128 x 49k-word fp32 logits = 25 MB per chunk


class _ChunkedHeadNLL(torch.autograd.Function):
    """Summed token NLL of a frozen LM head, ``HEAD_CHUNK_ROWS`` rows at a time; logits recomputed in backward.

    Unchunked, the head's bf16 logits, their fp32 copy and the log-softmax output of every completion token
    (~0.2 GB each at 1,000 tokens and 49k words) are alive at the step's memory peak, between forward and
    backward. Here only the hidden states are kept. Each row's logits, log-softmax and gradient come from the
    same operations as unchunked, so gradients are unchanged; only the loss sum's order of addition differs.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        device = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(hidden, weight, targets)
        total, correct = hidden.new_zeros((), dtype=torch.float32), targets.new_zeros(())
        for rows in _row_chunks(hidden.shape[0]):
            logits = torch.nn.functional.linear(hidden[rows], weight).float()
            total += torch.nn.functional.cross_entropy(logits, targets[rows], reduction="sum")
            correct += (logits.argmax(-1) == targets[rows]).sum()
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        hidden, weight, targets = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        grad_hidden = torch.empty_like(hidden)
        for rows in _row_chunks(hidden.shape[0]):
            h = hidden[rows].detach().requires_grad_()
            with torch.enable_grad(), torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
                logits = torch.nn.functional.linear(h, weight).float()
                nll = torch.nn.functional.cross_entropy(logits, targets[rows], reduction="sum")
            (grad_hidden[rows],) = torch.autograd.grad(nll, h, grad_total)
        return grad_hidden, None, None


def _row_chunks(n: int):
    return [slice(start, start + HEAD_CHUNK_ROWS) for start in range(0, n, HEAD_CHUNK_ROWS)]


def head_nll_sum(hidden, head, targets):
    """(summed token NLL, number of tokens whose argmax is the target) of ``head`` on ``hidden`` rows.

    Chunked (``_ChunkedHeadNLL``) for a frozen bias-free linear head, as in LoRA; in one piece otherwise.
    """
    if type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad:
        return _ChunkedHeadNLL.apply(hidden, head.weight, targets)
    logits = head(hidden).float()
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets).sum()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), correct


RECOMPUTE_EAGER = "eager_recompute"


def _recompute_eager_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The model's own eager attention; in training its probabilities are recomputed in backward.

    Eager attention stores an fp32 and a bf16 copy of every (query, key) probability for backward: at 512
    tokens that is 28 KB per token and layer for a 9-head model. Recomputing them from q, k and v (a
    non-reentrant checkpoint around the same function) costs one more score product per layer and gives
    the same numbers, since the very same operations run again.
    """
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise IEError(f"{type(module).__name__} has no eager_attention_forward: use attn_implementation=eager or sdpa")
    if not (module.training and torch.is_grad_enabled()) or kwargs.get("dropout", 0.0):
        return eager(module, query, key, value, attention_mask, *args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(eager, module, query, key, value, attention_mask, *args, use_reentrant=False,
                      preserve_rng_state=False, **kwargs)


def register_recompute_eager_attention() -> str:
    """Make ``attn_implementation="eager_recompute"`` loadable by transformers (eager's mask); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask

    if RECOMPUTE_EAGER not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(RECOMPUTE_EAGER, _recompute_eager_attention)
        AttentionMaskInterface.register(RECOMPUTE_EAGER, eager_mask)
    return RECOMPUTE_EAGER
