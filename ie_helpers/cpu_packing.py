"""Inference-only CPU levers: fp32 linear layers whose weights are packed once for the BLAS.

- ``onednn_linear_class`` / ``pack_linear_layers``: pre-packed for oneDNN (AMD decoding, the sentence encoder).
- ``mkl_linear_class`` / ``pack_decoder_linear_layers`` / ``set_packed_rows``: on Intel CPUs, packed by MKL for the
  generation batch's row count.
- ``parameter_count``: the model's parameters as loaded, also after packing.
"""

from __future__ import annotations

import torch

from ie_helpers import cpu_speed
from ie_helpers.errors import IEError


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


def mkl_linear_class():
    """``nn.Linear`` stand-in for fp32 decoding on Intel CPUs: MKL packs its weight for ``rows`` input rows.

    MKL's fp32 GEMM re-packs the weight at every call, which costs about as much as the product itself at a
    decode step's few rows: at 48 rows SmolLM2's layers ran 1.3-2.3x faster packed once (see the README). A
    pack fits one row count (``greedy_batch`` re-packs when finished rows leave the batch), so an input of
    fewer rows is copied into a ``rows``-row buffer kept by the layer (each output row is its own row's
    product; the rows past the input are ignored), and one of more rows (a prefill chunk) takes the stock
    path, ``F.linear``, where packing pays for itself. Unpacked (``rows`` None) the layer is the stock one.
    Inference only. The pack adds one copy of the weight."""
    from torch import nn

    class MklPackedLinear(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight, self.bias = linear.weight, linear.bias  # shared, not copied (a tied LM head stays tied)
            self.rows: int | None = None
            self.packed = self.padded = None

        def pack(self, rows: int | None) -> None:
            if rows == self.rows:
                return
            self.rows, self.packed, self.padded = rows, None, None
            if rows:
                self.packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight.detach(), rows)

        def forward(self, x):
            lead, flat = x.shape[:-1], x.reshape(-1, self.in_features)
            n = flat.shape[0]
            if self.packed is None or n > self.rows:
                y = nn.functional.linear(flat, self.weight, self.bias)
            else:
                if n < self.rows:  # reused: no allocation or zero-fill per call
                    if self.padded is None or self.padded.dtype != flat.dtype:
                        self.padded = flat.new_zeros(self.rows, self.in_features)
                    self.padded[:n].copy_(flat)
                    flat = self.padded
                y = torch.ops.mkl._mkl_linear(flat.contiguous(), self.packed, self.weight, self.bias, self.rows)[:n]
            return y.reshape(*lead, self.out_features)

    return MklPackedLinear


def decoder_linear_packing() -> str:
    """How ``load_for_inference`` packs a CPU decoder's fp32 linear layers: ``mkl`` on Intel CPUs (MKL's own
    packed GEMM, measured faster than oneDNN at decode shapes on an AVX-512 Xeon), ``onednn`` elsewhere (MKL
    takes AVX2 on AMD, where the oneDNN default was measured and the committed generations were made), or
    ``none`` where torch has neither."""
    if cpu_speed.cpu_vendor() == "GenuineIntel" and torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear"):
        return "mkl"
    return "onednn" if torch.backends.mkldnn.is_available() else "none"


def pack_decoder_linear_layers(model, packing: str | None = None) -> int:
    """Pack a CPU decoder's fp32 linear layers as :func:`decoder_linear_packing` (or ``packing``) says; returns
    how many. ``mkl`` layers are packed for a row count by :func:`set_packed_rows` (``generate`` calls it)."""
    packing = packing or decoder_linear_packing()
    if packing not in ("mkl", "onednn", "none"):
        raise IEError(f"packing={packing!r}; use 'mkl', 'onednn' or 'none'")
    if packing == "onednn":
        return pack_linear_layers(model)
    if packing == "none" or next(model.parameters()).device.type != "cpu":
        return 0
    return _swap_fp32_linears(model, mkl_linear_class())


def _swap_fp32_linears(model, cls) -> int:
    from torch import nn

    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and child.weight.dtype == torch.float32]
    for parent, name, child in targets:
        setattr(parent, name, cls(child))
    return len(targets)


def set_packed_rows(model, rows: int) -> int:
    """Pack every MKL-packed layer of ``model`` for ``rows`` input rows (a no-op where already so); returns how
    many layers ``model`` has of that kind."""
    layers = [m for m in model.modules() if type(m).__name__ == "MklPackedLinear"]
    for layer in layers:
        layer.pack(rows)
    return len(layers)


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
    if not torch.backends.mkldnn.is_available() or next(model.parameters()).device.type != "cpu":
        return 0
    model.ie_parameter_count = parameter_count(model)  # packed weights become buffers: count them before
    return _swap_fp32_linears(model, onednn_linear_class())
