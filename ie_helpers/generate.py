"""Batched greedy generation for chat prompts.

Prompts are sorted by length so each batch pads little, left-padded so every row's last
prompt token sits at the same position, and each row stops at its end-of-turn marker.
Outputs come back in the caller's order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class GenerationStats:
    n_prompts: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def new_tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else float("nan")


def encode_prompts(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    """Chat messages → token ids ending with the assistant header (generation prompt)."""
    out = []
    for messages in prompts:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
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


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256, batch_size: int = 16,
             desc: str = "generating", progress: bool = True, stats: GenerationStats | None = None) -> list[str]:
    """Greedy completions for chat prompts, in input order."""
    from tqdm.auto import tqdm

    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    outputs: list[str] = [""] * len(encoded)
    stats = stats if stats is not None else GenerationStats()
    start = time.perf_counter()
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, leave=False)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        ids, mask = _left_pad([encoded[i] for i in idx], pad_id)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                             temperature=None, top_p=None, top_k=None)
        new = gen[:, ids.shape[1]:].cpu()
        for row, i in zip(new, idx):
            row = row.tolist()
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            stats.new_tokens += cut
            outputs[i] = tokenizer.decode(row[:cut], skip_special_tokens=True).strip()
        stats.prompt_tokens += int(mask.sum())
        bar.update(len(idx))
    bar.close()
    stats.n_prompts += len(encoded)
    stats.seconds += time.perf_counter() - start
    return outputs


def generate_unbatched(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int = 256,
                       stats: GenerationStats | None = None) -> list[str]:
    """One prompt at a time, no padding: the reference that batched outputs are compared with."""
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=1,
                    desc="generating (unbatched)", progress=False, stats=stats)


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

    key = hashlib.sha256(json.dumps({**payload, "ie_helpers": __version__}, sort_keys=True,
                                    default=str).encode()).hexdigest()[:20]
    path = cache_dir() / "generations" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    atomic_write_json(path, result)
    return result
