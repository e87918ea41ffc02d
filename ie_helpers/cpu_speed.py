"""CPU speed levers, in one place: each changes how the arithmetic is done, never what is computed.

- ``reuse_freed_heap_memory``: glibc keeps freed memory for the next step instead of unmapping it.
- ``mask_dropout_class`` / ``use_mask_dropout``: LoRA dropout masks from 16-bit slices of random words.
- ``onednn_linear_class`` / ``pack_linear_layers``: fp32 linear layers pre-packed for oneDNN (inference).
- ``cpu_has_native_bf16``: whether bf16 arithmetic is native here (AVX-512 BF16 or AMX).
GPU runs use none of them.
"""

from __future__ import annotations

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
            n = x.numel()
            words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
            keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
            return x * keep.to(x.dtype).mul_(self.scale)

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
