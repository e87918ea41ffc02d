"""The KV cache of batched greedy decoding, and the attention step that reads it on CPUs.

- ``new_cache``: a ``DynamicCache`` whose layers keep keys and values in buffers with spare columns, so a decoding
  step writes one column in place instead of copying the whole cache.
- ``decode_attention_applies`` / ``decode_attention``: for fp32 decoding on a CPU the cache stores keys transposed
  ([batch, heads, dim, length]), and a decode step's attention is two batched matrix products over it (query
  heads grouped by the key head they share) instead of SDPA's kernel, which re-reads keys row by row: on a 2-core
  Xeon that step took ~30% less time at the bench's 48 rows. The arithmetic is attention's; only the summation
  order differs, as it does between any two kernels. Elsewhere (GPU, bf16, prefill) attention is SDPA's.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

CACHE_SPARE_COLUMNS = 64  # columns a KV buffer reserves beyond what it holds each time it grows
DECODE_ATTENTION = "ie_decode_sdpa"  # the name the decode attention is registered under in transformers
_SHARED_PREFIX = contextvars.ContextVar("shared_prefix", default=0)  # set by ``decoding_attention``


def preallocated_layer_class(transposed_keys: bool = False):
    """``DynamicLayer`` whose keys and values live in buffers with spare room, so a decoding step writes one
    column in place instead of concatenating (copying) the whole cache, ~10% of a step at batch 32 on CPU.
    ``keys``/``values`` are views of the filled part ([batch, heads, length, dim]); with ``transposed_keys`` the
    key buffer is stored [batch, heads, dim, length] and ``keys`` is its transposed view. The arithmetic is that
    of ``DynamicLayer``."""
    from transformers.cache_utils import DynamicLayer

    columns = -1 if transposed_keys else -2  # the key buffer's length axis

    class PreallocatedLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self.k_buf = self.v_buf = None
            self.length = 0

        def _reserve(self, like_k, like_v, need: int):
            if self.k_buf is not None and need <= self.v_buf.shape[-2]:
                return
            batch, heads, _, dim = like_k.shape
            size = need + CACHE_SPARE_COLUMNS
            # uninitialised: a column is written before the ``keys``/``values`` views reach it
            k_new = like_k.new_empty((batch, heads, dim, size) if transposed_keys else (batch, heads, size, dim))
            v_new = like_v.new_empty((*like_v.shape[:-2], size, like_v.shape[-1]))
            if self.length:
                k_new.narrow(columns, 0, self.length).copy_(self.k_buf.narrow(columns, 0, self.length))
                v_new[..., :self.length, :] = self.v_buf[..., :self.length, :]
            self.k_buf, self.v_buf = k_new, v_new

        def _expose(self):
            keys = self.k_buf.narrow(columns, 0, self.length)
            self.keys = keys.transpose(-1, -2) if transposed_keys else keys
            self.values = self.v_buf[..., :self.length, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.length, self.length + key_states.shape[-2]
            self._reserve(key_states, value_states, end)
            self.k_buf.narrow(columns, start, end - start).copy_(
                key_states.transpose(-1, -2) if transposed_keys else key_states)
            self.v_buf[..., start:end, :] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.get_seq_length() > 0:
                self.k_buf = self.k_buf.repeat_interleave(repeats, dim=0)
                self.v_buf = self.v_buf.repeat_interleave(repeats, dim=0)
                self._expose()

        def batch_select_indices(self, indices) -> None:
            if self.get_seq_length() > 0:
                self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
                self._expose()

    return PreallocatedLayer


def new_cache(transposed_keys: bool = False):
    """An empty ``DynamicCache`` built from ``preallocated_layer_class`` layers."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = preallocated_layer_class(transposed_keys)
    return cache


def decode_attention_applies(model) -> bool:
    """Whether batched decoding on ``model`` takes ``decode_attention`` (and a cache with transposed keys): fp32
    weights on a CPU, with SDPA as the model's attention."""
    param = next(model.parameters())
    return (param.device.type == "cpu" and param.dtype == torch.float32
            and getattr(model.config, "_attn_implementation", None) == "sdpa")


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of one new token per row over keys stored transposed; any other call goes to SDPA unchanged.

    The query heads that share a key head (grouped-query attention) are one row block of a batched product with
    that head's keys, [batch·kv_heads, group, dim] @ [batch·kv_heads, dim, length], read in place from the cache.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_length, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[-2]
    plain = (q_length == 1 and length > 1 and key.stride(-2) == 1 and query.dtype == torch.float32
             and not dropout and not module.training
             and all(kwargs.get(k) is None for k in ("softcap", "position_bias", "s_aux", "sinks"))
             and (attention_mask is None or attention_mask.dtype == torch.bool) and heads % kv_heads == 0)
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return _grouped_decode_attention(query, key, value, attention_mask, dim ** -0.5 if scaling is None else scaling,
                                     kv_heads, _SHARED_PREFIX.get())


def _grouped_decode_attention(query, key, value, attention_mask, scaling: float, kv_heads: int, shared: int):
    batch, heads, _, dim = query.shape
    length = key.shape[-2]
    group = heads // kv_heads
    shared = shared if 0 < shared < length else 0
    keys_t = key.transpose(-1, -2)  # [batch, kv_heads, dim, length], the buffer itself
    by_row = query.reshape(batch * kv_heads, group, dim)
    own = torch.bmm(by_row, keys_t[..., shared:].reshape(-1, dim, length - shared))
    if shared:  # every row's first ``shared`` columns hold the same keys: read them once, for all rows
        by_head = query.view(batch, kv_heads, group, dim).transpose(0, 1).reshape(kv_heads, batch * group, dim)
        common = torch.bmm(by_head, keys_t[0, :, :, :shared]).view(kv_heads, batch, group, shared).transpose(0, 1)
        scores = torch.cat([common, own.view(batch, kv_heads, group, -1)], dim=-1)
    else:
        scores = own.view(batch, kv_heads, group, length)
    scores = scores.mul_(scaling)
    if attention_mask is not None:
        scores.masked_fill_(~attention_mask[..., -1:, -length:], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs[..., shared:].reshape(batch * kv_heads, group, -1),
                    value[:, :, shared:].reshape(batch * kv_heads, length - shared, dim))
    out = out.view(batch, kv_heads, group, dim)
    if shared:
        weights = probs[..., :shared].transpose(0, 1).reshape(kv_heads, batch * group, shared)
        out += torch.bmm(weights, value[0, :, :shared]).view(kv_heads, batch, group, dim).transpose(0, 1)
    return out.view(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def decoding_attention(model, enabled: bool, shared_prefix: int = 0):
    """Within the block, ``model`` runs ``decode_attention`` (when ``enabled``), then its own attention again.
    ``shared_prefix``: how many leading cache columns hold the same keys and values in every row."""
    if not enabled:
        yield
        return
    _register()
    before = model.config._attn_implementation
    model.config._attn_implementation = DECODE_ATTENTION
    token = _SHARED_PREFIX.set(shared_prefix)
    try:
        yield
    finally:
        model.config._attn_implementation = before
        _SHARED_PREFIX.reset(token)
