"""CPU speed levers, in one place: each changes how the arithmetic is done, never what is computed.

- ``reuse_freed_heap_memory``: glibc keeps freed memory for the next step instead of unmapping it.
- ``mask_dropout_class`` / ``use_mask_dropout``: LoRA dropout masks from 16-bit slices of random words.
- ``fuse_lora_layers``: the LoRA branch as one autograd function that keeps x and a 1-byte keep mask for backward.
- ``RECOMPUTE_EAGER``: eager attention whose probabilities are recomputed in backward instead of stored.
- ``onednn_linear_class`` / ``pack_linear_layers``: fp32 linear layers pre-packed for oneDNN (inference).
- ``cpu_has_native_bf16``: whether bf16 arithmetic is native here (AVX-512 BF16 or AMX).
GPU runs use none of them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ie_helpers.errors import IEError


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def keep_mask(shape, drop_count: int, device) -> torch.Tensor:
    """Dropout keep mask (True = kept) from 16-bit slices of 64-bit random words; P(drop) = drop_count / 65536."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2**63, None)
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


def use_mask_dropout(model) -> int:
    """Swap every LoRA ``nn.Dropout`` in ``model`` for ``MaskDropout``; returns how many were swapped."""
    from torch import nn

    cls = mask_dropout_class()
    swapped = 0
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
    """``scaling * B(A(dropout(x)))`` keeping only x, the 1-byte keep mask and A's r-wide output for backward.

    peft's LoRA branch casts x to the adapter's fp32 dtype, multiplies it by an fp32 dropout mask and lets
    autocast cast the product back to bf16 for A: backward then holds an fp32 mask and a bf16 copy of the
    dropped input per adapted layer. Here the dropped input is recomputed from x and the keep mask. Every
    product is rounded exactly as on peft's path (bf16 times a Python scalar computes in fp32 and rounds
    once, like the fp32 multiply followed by the cast), so only the order of summing x's gradients differs.
    """

    @staticmethod
    def forward(ctx, x, weight_a, weight_b, keep, drop_scale: float, scaling: float, dtype):
        a, b = weight_a.to(dtype), weight_b.to(dtype)
        dropped = _dropped(x.to(dtype), keep, drop_scale).reshape(-1, x.shape[-1])
        h = dropped @ a.t()
        ctx.save_for_backward(x, keep, h, weight_a, weight_b)
        ctx.drop_scale, ctx.scaling, ctx.dtype = drop_scale, scaling, dtype
        return ((h @ b.t()) * scaling).view(*x.shape[:-1], b.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, keep, h, weight_a, weight_b = ctx.saved_tensors
        a, b = weight_a.to(ctx.dtype), weight_b.to(ctx.dtype)
        grad_out = (grad.reshape(-1, b.shape[0]).to(ctx.dtype)) * ctx.scaling
        grad_h = grad_out @ b
        dropped = _dropped(x.to(ctx.dtype), keep, ctx.drop_scale).reshape(-1, x.shape[-1])
        grad_a = (grad_h.t() @ dropped).to(weight_a.dtype)
        grad_b = (grad_out.t() @ h).to(weight_b.dtype)
        grad_x = _dropped((grad_h @ a).view(*x.shape[:-1], a.shape[1]), keep, ctx.drop_scale).to(x.dtype)
        return grad_x, grad_a, grad_b, None, None, None, None


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
    keep = keep_mask(x.shape, drop_count, x.device) if drop_count else None
    drop_scale = 1.0 / (1.0 - drop_count / 65536)
    branch = _LoraBranch.apply(x, weight_a, weight_b, keep, drop_scale, self.scaling[name], dtype)
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


def onednn_linear_class():
    """``nn.Linear`` stand-in whose fp32 weight is pre-packed for oneDNN (``torch.utils.mkldnn.MkldnnLinear``).

    On CPUs where torch's default fp32 BLAS runs a narrower code path (MKL on AMD takes AVX2), oneDNN's
    packed fp32 GEMM is 1.5-2.3× faster for batched decoding and prefill; it is still fp32 arithmetic,
    so outputs match the stock model up to summation order. Inference only (no gradients).
    """
    from torch import nn
    from torch.utils.mkldnn import MkldnnLinear

    class OneDNNLinear(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.packed = MkldnnLinear(linear, torch.float32)

        def forward(self, x):
            lead = x.shape[:-1]
            y = self.packed(x.reshape(-1, self.in_features).contiguous())
            return y.reshape(*lead, self.out_features)

    return OneDNNLinear


def parameter_count(model) -> int:
    """Parameters of the model as loaded (tied weights once), also after ``pack_linear_layers``."""
    recorded = getattr(model, "ie_parameter_count", None)
    if recorded:
        return recorded
    return sum(p.numel() for p in model.parameters())


def pack_linear_layers(model) -> int:
    """Swap the fp32 ``nn.Linear`` layers of a CPU inference model for oneDNN-packed ones; returns how many.

    A no-op (0) on GPU, for non-fp32 weights, or where torch was built without oneDNN.
    """
    from torch import nn

    if not torch.backends.mkldnn.is_available() or next(model.parameters()).device.type != "cpu":
        return 0
    cls = onednn_linear_class()
    model.ie_parameter_count = parameter_count(model)  # packed weights become buffers: count them before
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.dtype == torch.float32]
    for parent, name, child in targets:
        setattr(parent, name, cls(child))
    return len(targets)
