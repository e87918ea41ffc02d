"""Batched greedy generation for chat prompts.

Prompts are sorted by length; in each batch the prefix all rows share is computed once, the rows'
own suffixes are prefilled a few at a time (each chunk padded only to its own longest row) and laid
out left-padded after the prefix so every row's last prompt token sits at the same position, the KV
cache grows in place, and rows that reached their end-of-turn marker leave the batch in groups. Outputs come back in
the caller's order. ``generate_unbatched`` (stock ``model.generate``, one prompt at a time) is the
reference the batched path is checked against: the tokens are identical, for sliding-window models
too (they skip prefix sharing, whose padding would sit inside the window).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ie_helpers.cpu_packing import set_packed_rows
from ie_helpers.cpu_speed import reuse_freed_heap_memory
from ie_helpers.errors import IEError
from ie_helpers.kv_cache import decode_attention_applies, decoding_attention, new_cache

# Bumped when batched decoding can give different tokens than before (2: sliding-window models no longer
# share the prompt prefix; 3: fp32 CPU decode steps take ``kv_cache.decode_attention``, whose summation order
# differs from SDPA's), so cached generations from the older code are not reused.
DECODING_REVISION = 3


@dataclass
class GenerationStats:
    n_prompts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def new_tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else float("nan")

    def rate_text(self) -> str:
        """``123 new tokens/s``, or what happened when nothing was generated (every output cached)."""
        if not self.new_tokens:
            return "nothing generated: every output came from the cache"
        return f"{self.new_tokens_per_s:.0f} new tokens/s over {self.n_prompts} prompts"


def encode_prompts(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Chat messages → token ids ending with the assistant header (generation prompt).

    ``enable_thinking=False`` turns off Qwen3's reasoning block (the papers compare direct answers);
    templates without that switch ignore it.
    """
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            enable_thinking=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append(list(ids))
    return out


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def _left_pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x):] = 1
    return ids, mask


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares, leaving each row at least one token of its own."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < limit and all(r[n] == first[n] for r in rows):
        n += 1
    return n


def uses_sliding_window(model) -> bool:
    """Whether some attention layer sees only a window of the most recent cache columns (Gemma 2/3, Mistral)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "sliding_window", None) is None:
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or any("sliding" in str(t) for t in layer_types)


def _forward(model, ids, mask, cache):
    """One forward step with positions counted over real (unmasked) tokens, as ``model.generate`` does."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1), out.past_key_values


def _widen(states, prefix: int, columns: int):
    """Cached states [batch, heads, length, dim] with zero columns inserted after the prefix up to ``columns``."""
    pad = columns - states.shape[-2]
    if not pad:
        return states
    gap = states.new_zeros((*states.shape[:2], pad, states.shape[-1]))
    return torch.cat([states[..., :prefix, :], gap, states[..., prefix:, :]], dim=-2)


def _prefill(model, rows: list[list[int]], prefix: int, prefix_cache, chunk: int, pad_id: int,
             transposed_keys: bool = False):
    """First greedy token of every row and one cache laid out [shared prefix][left padding][own suffix].

    Rows are run ``chunk`` at a time, each chunk padded only to its own longest suffix (rows come sorted
    by length), then the chunks' caches are left-padded to the batch's width and stacked (keys transposed
    if ``transposed_keys``). Padding columns are masked, so every row attends to exactly its own tokens, as
    in one padded batch, with fewer FLOPs.
    """
    device = next(model.parameters()).device
    suffixes = [r[prefix:] for r in rows]
    width = max(len(s) for s in suffixes)
    tokens, pieces, masks = [], [], []
    for b in range(0, len(rows), chunk):
        part = suffixes[b:b + chunk]
        ids, suffix_mask = _left_pad(part, pad_id)
        cache = new_cache()  # prefill attention is SDPA's, which wants keys as they come
        if prefix:
            for layer_idx, layer in enumerate(prefix_cache.layers):
                cache.update(layer.keys.expand(len(part), -1, -1, -1), layer.values.expand(len(part), -1, -1, -1),
                             layer_idx)
        mask = torch.cat([torch.ones((len(part), prefix), dtype=torch.long), suffix_mask], dim=1)
        token, cache = _forward(model, ids.to(device), mask.to(device), cache)
        pad = width - suffix_mask.shape[1]
        masks.append(torch.cat([mask[:, :prefix], mask.new_zeros((len(part), pad)), mask[:, prefix:]], dim=1))
        pieces.append([(layer.keys, layer.values) for layer in cache.layers])
        tokens.append(token)
    merged = new_cache(transposed_keys)
    for layer_idx in range(len(pieces[0])):
        keys = [_widen(chunk_layers[layer_idx][0], prefix, m.shape[1]) for chunk_layers, m in zip(pieces, masks)]
        values = [_widen(chunk_layers[layer_idx][1], prefix, m.shape[1]) for chunk_layers, m in zip(pieces, masks)]
        merged.update(torch.cat(keys), torch.cat(values), layer_idx)
    return torch.cat(tokens), torch.cat(masks).to(device), merged


COMPACTION_ROW_STEPS = 64  # what dropping finished rows costs, in steps of one row (see ``compaction_pays``)


def compaction_pays(finished: int, rows: int, steps_left: int) -> bool:
    """Whether to drop a batch's ``finished`` rows now rather than keep decoding them (their tokens ignored).

    Dropping copies every KV buffer of the rows kept and, on MKL-packed layers, re-packs every weight for the
    new row count: together about 0.35 s for SmolLM2-135M at 48 rows on a 2-core Xeon, some 60-80 steps of
    one row. Dropping each row as it finished was ~10% of the bench's decoding time. So rows leave once an
    eighth of the batch (at least 2) has finished and the steps the rest may still take repay the copy.
    """
    return finished >= max(2, rows // 8) and finished * steps_left >= COMPACTION_ROW_STEPS


def greedy_batch(model, rows: list[list[int]], *, max_new_tokens: int, stops: list[int], pad_id: int,
                 reuse_prefix: bool = True, prefill_chunk: int = 8) -> list[list[int]]:
    """Greedy continuations of token-id rows, each cut at (and without) its stop token.

    Savings over ``model.generate`` on the same batch, none changing the arithmetic of a row: the prefix
    that all rows share (chat header + instruction) is run once and its KV cache repeated across the
    batch; the prompts are prefilled in chunks padded to their own length (``_prefill``); the cache grows
    in place (``kv_cache``; for fp32 on a CPU it holds keys transposed for ``decode_attention``, which reads
    the shared prefix once per step, not once per row); and finished rows are dropped from the batch and the
    cache (in groups, when ``compaction_pays``; MKL-packed layers are re-packed for the rows left), so a batch
    costs about the sum of its answers' lengths rather than batch size × the longest one.
    The layout is [shared prefix][left padding][own suffix]; positions skip the padding. A sliding
    window counts cache columns, padding included, so for sliding-window models the prefix is not
    shared: all padding then sits left of every row and each window holds the row's own last tokens.
    """
    device = next(model.parameters()).device
    set_packed_rows(model, len(rows))  # MKL-packed layers (Intel CPUs): one decode step has len(rows) rows
    prefix = shared_prefix_length(rows) if reuse_prefix and not uses_sliding_window(model) else 0
    transposed = decode_attention_applies(model)
    with decoding_attention(model, transposed, shared_prefix=prefix):
        prefix_cache = None
        if prefix:
            _, prefix_cache = _forward(model, torch.tensor([rows[0][:prefix]], device=device),
                                       torch.ones((1, prefix), dtype=torch.long, device=device), new_cache())
        token, mask, cache = _prefill(model, rows, prefix, prefix_cache, max(1, prefill_chunk), pad_id, transposed)
        return _decode(model, token, mask, cache, n_rows=len(rows), max_new_tokens=max_new_tokens, stops=stops)


def _decode(model, token, mask, cache, *, n_rows: int, max_new_tokens: int, stops: list[int]) -> list[list[int]]:
    """The decoding loop of ``greedy_batch`` from the prefill's first tokens, mask and cache."""
    device = token.device
    stop_set = set(stops)
    outputs: list[list[int]] = [[] for _ in range(n_rows)]
    alive = list(range(n_rows))  # the row each batch position decodes
    done = [False] * len(alive)
    for step in range(max_new_tokens):
        for j, t in enumerate(token.tolist()):
            if done[j]:
                continue
            if t in stop_set:
                done[j] = True
                continue
            outputs[alive[j]].append(t)
            done[j] = len(outputs[alive[j]]) >= max_new_tokens
        if all(done):
            break
        if compaction_pays(sum(done), len(alive), max_new_tokens - step - 1):
            keep = [j for j, finished in enumerate(done) if not finished]
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, token = mask[index], token[index]
            alive, done = [alive[j] for j in keep], [False] * len(keep)
            set_packed_rows(model, len(alive))
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        token, cache = _forward(model, token[:, None], mask, cache)
    return outputs


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256, batch_size: int = 16,
             desc: str = "generating", progress: bool = True, stats: GenerationStats | None = None,
             reuse_prefix: bool = True, prefill_chunk: int = 8, hit_cap: list | None = None) -> list[str]:
    """Greedy completions for chat prompts, in input order (see ``greedy_batch``). ``hit_cap``, when given, is
    filled with one bool per prompt: True when the answer was cut at ``max_new_tokens`` (truncated, not
    finished), so truncation can be counted apart from malformed output."""
    from tqdm.auto import tqdm

    if next(model.parameters()).device.type == "cpu":
        reuse_freed_heap_memory()  # KV buffers and packs are re-allocated as rows leave: reuse freed blocks
    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    outputs: list[str] = [""] * len(encoded)
    capped = [False] * len(encoded)
    stats = stats if stats is not None else GenerationStats()
    start = time.perf_counter()
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        rows = greedy_batch(model, [encoded[i] for i in idx], max_new_tokens=max_new_tokens, stops=stops,
                            pad_id=pad_id, reuse_prefix=reuse_prefix, prefill_chunk=prefill_chunk)
        for row, i in zip(rows, idx):
            stats.new_tokens += len(row)
            stats.prompt_tokens += len(encoded[i])
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            capped[i] = len(row) >= max_new_tokens
        bar.update(len(idx))
    bar.close()
    if hit_cap is not None:
        hit_cap[:] = capped
    stats.n_prompts += len(encoded)
    stats.seconds += time.perf_counter() - start
    return outputs


def max_new_tokens_for(answers: list[str], tokenizer, *, quantile: float = 0.99, margin: int = 16,
                       cap: int | None = None) -> int:
    """A generation cap from gold answers: their ``quantile`` length in this tokenizer's tokens (plus the end
    token) and ``margin``, at most ``cap``. Sized on training answers, so no test answer chooses it."""
    import numpy as np

    if not answers:
        raise IEError("max_new_tokens_for needs at least one gold answer to size the cap from")
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers]
    value = int(np.ceil(np.quantile(lengths, quantile))) + int(margin)
    return min(value, int(cap)) if cap else value


@torch.inference_mode()
def generate_with_hf(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256,
                     batch_size: int = 1, stats: GenerationStats | None = None) -> list[str]:
    """``model.generate`` (greedy, left-padded batches): the stock path, kept as the reference."""
    encoded = encode_prompts(tokenizer, prompts)
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(encoded)
    stats = stats if stats is not None else GenerationStats()
    start = time.perf_counter()
    for b in range(0, len(encoded), batch_size):
        idx = list(range(b, min(b + batch_size, len(encoded))))
        ids, mask = _left_pad([encoded[i] for i in idx], pad_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                             temperature=None, top_p=None, top_k=None)
        for row, i in zip(gen[:, ids.shape[1]:].cpu().tolist(), idx):
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            stats.new_tokens += cut
            stats.prompt_tokens += len(encoded[i])
            outputs[i] = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
    stats.n_prompts += len(encoded)
    stats.seconds += time.perf_counter() - start
    return outputs


def generate_unbatched(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256,
                       stats: GenerationStats | None = None) -> list[str]:
    """One prompt at a time through ``model.generate``, no padding: the reference batched outputs are compared with."""
    return generate_with_hf(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1, stats=stats)


def cached(payload: dict, compute):
    """Return ``compute()``'s JSON-serialisable result, stored under a hash of ``payload``.

    The payload must name everything the outputs depend on (weights, adapter run, prompts, decoding
    settings); rerunning a notebook then re-renders the report without generating again.
    """
    import hashlib
    import json

    from ie_helpers import __version__
    from ie_helpers.models import cache_dir
    from ie_helpers.report import atomic_write_json

    # the payload is nested, not merged, so none of its own keys can be overwritten by the stamps
    stamped = {"payload": payload, "ie_helpers": __version__, "decoding_revision": DECODING_REVISION}
    key = hashlib.sha256(json.dumps(stamped, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = cache_dir() / "generations" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    atomic_write_json(path, result)
    return result
